"""Held-out evaluation during training, the persistent compilation cache and the Weights & Biases logger.

The eval loss is checked against an independent computation: the saved params' plain logits (the run itself uses
the fused token-chunked head), a float64 log-softmax in numpy, over the validation batches read through the
loader. Model: the `tiny` preset with the Qwen vocabulary size, one CPU device, sequence 64, batch 2.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qwencoder_jax import checkpoints, sharding
from qwencoder_jax.data import loader, shards
from qwencoder_jax.model import get_preset
from qwencoder_jax.model.config import QWEN_VOCAB_SIZE
from qwencoder_jax.train import optimizer as optimizer_lib
from qwencoder_jax.train.loss import LossConfig
from qwencoder_jax.train.trainer import DataSource, Trainer, TrainerConfig

MODEL = get_preset("tiny", vocab_size=QWEN_VOCAB_SIZE)
LOADER = loader.LoaderConfig(sequence_length=64, batch_size=2)
OPTIMIZER = optimizer_lib.OptimizerConfig(peak_learning_rate=1e-2, warmup_steps=2, total_steps=20)
EVAL_BATCHES = 3


def counting_examples(seed: int, count: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    examples = []
    for number in range(count):
        start, stride, length = int(rng.integers(0, 500)), int(rng.integers(1, 4)), int(rng.integers(20, 120))
        examples.append({"id": f"counting:{seed}:{number}", "kind": "text",
                         "token_ids": [(start + stride * k) % 500 + 4 for k in range(length)]})
    return examples


def write_data(directory: Path, with_validation: bool) -> Path:
    """A text dataset with a train split and (optionally) a validation split of other documents."""
    if with_validation:
        validation = shards.write_dataset(directory, "counting", "text", counting_examples(1, 20), num_shards=1,
                                          split="validation")["splits"]
    manifest = shards.write_dataset(directory, "counting", "text", counting_examples(0, 80))
    if with_validation:
        manifest["splits"].update(validation)
        (directory / shards.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return directory


def config(workdir, data_dir, **overrides) -> TrainerConfig:
    values = dict(workdir=str(workdir), model=MODEL, mixture="counting", total_steps=6, loader=LOADER,
                  optimizer=OPTIMIZER, data_sources=(DataSource("counting", str(data_dir), "text"),),
                  checkpoint_every=2, keep_checkpoints=5, mesh=sharding.MeshConfig(fsdp=1), num_devices=1,
                  peak_flops_per_second=1e11, progress_bar=False, eval_every=2, eval_batches=EVAL_BATCHES,
                  loss=LossConfig(token_chunk_size=64, head_dtype="float32"))
    values.update(overrides)
    return TrainerConfig(**values)


def read_metrics(workdir) -> dict[int, dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len({r["step"] for r in records}) == len(records), "one record per step"
    return {r["step"]: r for r in records}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("counting"), with_validation=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("eval_reference")
    result = Trainer(config(workdir, data_dir)).run()
    assert result.stop_reason == "completed"
    return workdir, result


def independent_eval_loss(params_dir: Path) -> float:
    """Mean cross-entropy of the validation batches under the checkpoint's params: plain logits, numpy float64."""
    model, params = checkpoints.load(params_dir)
    iterator = iter(loader.make_dataset("counting", LOADER, split="validation"))
    loss_sum = weight_sum = 0.0
    for _ in range(EVAL_BATCHES):
        batch = next(iterator)
        logits_btv = np.asarray(model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                                            batch["positions"]), np.float64)
        log_normaliser_bt = np.log(np.exp(logits_btv - logits_btv.max(-1, keepdims=True)).sum(-1)) + \
            logits_btv.max(-1)
        target_logit_bt = np.take_along_axis(logits_btv, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
        weights_bt = batch["loss_mask"].astype(np.float64)
        loss_sum += float(((log_normaliser_bt - target_logit_bt) * weights_bt).sum())
        weight_sum += float(weights_bt.sum())
    return loss_sum / weight_sum


def test_eval_records_every_n_steps_match_an_independent_loss(reference):
    workdir, _ = reference
    metrics = read_metrics(workdir)
    assert sorted(metrics) == [1, 2, 3, 4, 5, 6]
    assert [step for step, r in metrics.items() if "eval/loss" in r] == [2, 4, 6]
    for step in (2, 4, 6):
        record = metrics[step]
        assert record["eval/tokens"] > 0 and record["eval/loss/counting"] == pytest.approx(record["eval/loss"])
        expected = independent_eval_loss(workdir / "checkpoints" / str(step))
        assert record["eval/loss"] == pytest.approx(expected, rel=2e-5), step
    assert metrics[6]["eval/loss"] < metrics[2]["eval/loss"]  # the model learns the held-out pattern too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4, 6]


def test_resume_with_eval_equals_an_uninterrupted_run(tmp_path, reference, data_dir):
    reference_dir, reference_result = reference
    first = Trainer(config(tmp_path, data_dir, total_steps=3)).run()
    assert first.final_step == 3
    resumed = Trainer(config(tmp_path, data_dir)).run()
    assert resumed.resumed_from == 3
    assert resumed.losses == {step: reference_result.losses[step] for step in (4, 5, 6)}
    ours, theirs = read_metrics(tmp_path), read_metrics(reference_dir)
    for step in (2, 4, 6):
        assert ours[step]["eval/loss"] == theirs[step]["eval/loss"]


def test_a_task_without_validation_split_is_named_and_skipped(tmp_path):
    data = write_data(tmp_path / "data", with_validation=False)
    result = Trainer(config(tmp_path / "run", data, total_steps=2, data_sources=(
        DataSource("counting_train_only", str(data), "text"),), mixture="counting_train_only")).run()
    assert result.stop_reason == "completed"
    assert any("counting_train_only has no 'validation' split" in m for m in result.messages), result.messages
    assert any(m.startswith("evaluation off") for m in result.messages)
    assert not any("eval/loss" in r for r in read_metrics(tmp_path / "run").values())


RUN_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax
    from jax import monitoring
    counts = {}
    monitoring.register_event_listener(lambda name, **kw: counts.__setitem__(name, counts.get(name, 0) + 1))
    sys.path.insert(0, TESTS_DIR)
    from test_train_eval import config
    from qwencoder_jax.train.trainer import Trainer
    overrides = json.loads(sys.argv[3])
    result = Trainer(config(sys.argv[1], sys.argv[2], **overrides)).run()
    print(json.dumps({"stop": result.stop_reason, "messages": result.messages,
                      "hits": counts.get("/jax/compilation_cache/cache_hits", 0),
                      "misses": counts.get("/jax/compilation_cache/cache_misses", 0)}))
""")


def run_script(tmp_path, workdir, data_dir, overrides: dict, env_extra: dict | None = None) -> dict:
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT.replace("TESTS_DIR", repr(str(Path(__file__).parent))))
    env = {**os.environ, **(env_extra or {})}
    done = subprocess.run([sys.executable, str(script), str(workdir), str(data_dir), json.dumps(overrides)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def cache_entries(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


@pytest.mark.slow  # fresh processes: jax start-up and compiles, ~40 s each on 2 cores
def test_second_identical_run_reads_the_compilation_cache(tmp_path, data_dir):
    cache = tmp_path / "xla_cache"
    overrides = {"compilation_cache_dir": str(cache), "total_steps": 2, "eval_every": 0}
    # Every compile is cached here (jax's default keeps only compiles of 1 s or more), so the count is exact.
    env = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    first = run_script(tmp_path, tmp_path / "first", data_dir, overrides, env)
    entries = cache_entries(cache)
    assert first["stop"] == "completed" and first["hits"] == 0 and first["misses"] > 0 and entries
    assert any(m.startswith("compilation cache:") for m in first["messages"])
    second = run_script(tmp_path, tmp_path / "second", data_dir, overrides, env)
    assert second["stop"] == "completed"
    assert second["misses"] == 0 and second["hits"] == first["misses"]
    assert cache_entries(cache) == entries  # nothing new compiled


@pytest.mark.slow  # fresh processes: jax start-up and compiles, ~40 s each on 2 cores
def test_wandb_offline_run_holds_the_metrics(tmp_path, data_dir):
    workdir = tmp_path / "run"
    result = run_script(tmp_path, workdir, data_dir, {"wandb_project": "qwencoder-test", "total_steps": 2},
                        {"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert result["stop"] == "completed"
    runs = list((workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((workdir / "wandb").iterdir())
    # The run file holds wandb's history records, each value as JSON text (wandb 0.31 ships no offline reader; a
    # later `wandb sync` uploads this file): every logged value of metrics.jsonl must be in it, keys included.
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    metrics = read_metrics(workdir)
    assert "eval/loss" in metrics[2]
    for record in metrics.values():
        for key in ("loss", "grad_norm", "learning_rate", "eval/loss"):
            if key in record:
                assert key.encode() in data and json.dumps(record[key]).encode() in data, (record["step"], key)
    assert (workdir / "wandb_run_id").read_text().strip() in runs[0].name
