"""`init_from` on a converted Hugging Face checkpoint: a random transformers Qwen2 model, saved as safetensors,
converted with `python -m qwencoder_apps.convert hf-to-orbax`, trains from its weights; the first step's loss equals
transformers' loss on the same batch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwencoder_jax import checkpoints, sharding
from qwencoder_jax.data import loader, shards
from qwencoder_jax.model.config import QWEN_VOCAB_SIZE
from qwencoder_jax.train import optimizer as optimizer_lib
from qwencoder_jax.train.trainer import DataSource, Trainer, TrainerConfig

LENGTH = 64
LOADER = loader.LoaderConfig(sequence_length=LENGTH, batch_size=2)


def test_first_step_loss_from_a_converted_hf_checkpoint_equals_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.Qwen2Config(
        vocab_size=QWEN_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=10_000.0,
        tie_word_embeddings=False, rms_norm_eps=1e-6, attn_implementation="eager")
    hf_model = transformers.Qwen2ForCausalLM(hf_config).float().eval()
    hf_model.save_pretrained(tmp_path / "hf")
    subprocess.run([sys.executable, "-m", "qwencoder_apps.convert", "hf-to-orbax", str(tmp_path / "hf"),
                    str(tmp_path / "ckpt")], check=True, cwd=Path(__file__).resolve().parents[2])

    # Documents of exactly LENGTH + 1 tokens: each row is one whole document, as transformers sees it.
    rng = np.random.default_rng(0)
    examples = [{"id": f"doc:{i}", "kind": "text", "token_ids": [int(t) for t in rng.integers(4, 50_000, LENGTH + 1)]}
                for i in range(16)]
    shards.write_dataset(tmp_path / "data", "docs", "text", examples)
    config = TrainerConfig(workdir=str(tmp_path / "run"), model=checkpoints.load_config(tmp_path / "ckpt"),
                           mixture="if_docs", total_steps=1, loader=LOADER,
                           data_sources=(DataSource("if_docs", str(tmp_path / "data"), "text"),),
                           optimizer=optimizer_lib.OptimizerConfig(total_steps=1), init_from=str(tmp_path / "ckpt"),
                           mesh=sharding.MeshConfig(fsdp=1), num_devices=1, peak_flops_per_second=1e11,
                           progress_bar=False)
    result = Trainer(config).run()
    assert result.stop_reason == "completed"
    assert any("initialised weights from" in message for message in result.messages)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])

    batch = next(loader.make_iterator("if_docs", LOADER))  # the same stream: the batch of step 1
    assert (batch["segment_ids"] == 1).all() and batch["loss_mask"].all()
    with torch.no_grad():
        logits = hf_model(input_ids=torch.from_numpy(batch["input_ids"]).long()).logits.float()
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     torch.from_numpy(batch["targets"]).long().reshape(-1))
    assert record["loss"] == pytest.approx(float(expected), rel=1e-5)
