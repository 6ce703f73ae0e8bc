"""`data_pipelines run` holds out its last shard as the `validation` split by default (the recipe's mechanism), so
`qwencoder_apps.eval --tasks perplexity --data_source NAME=DIR` runs on its output; `--no_validation` keeps all."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _source_dir(tmp_path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    for path in sorted(Path(json.__file__).parent.glob("*.py")):  # real code files, a few KB each
        shutil.copy(path, source / path.name)
    return source


def _run(tmp_path, *extra):
    output = tmp_path / ("out" + "".join(extra).replace("-", ""))
    command = [sys.executable, "-m", "data_pipelines", "run", "--source", f"json={_source_dir_cached(tmp_path)}",
               "--output", str(output), "--shards", "2", "--workers", "1", "--quiet", *extra]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return output, json.loads((output / "manifest.json").read_text())


def _source_dir_cached(tmp_path):
    source = tmp_path / "src"
    return source if source.exists() else _source_dir(tmp_path)


def test_run_holds_out_the_last_shard_by_default(tmp_path):
    output, manifest = _run(tmp_path)
    splits = manifest["splits"]
    assert set(splits) == {"train", "validation"}
    assert [s["file"] for s in splits["validation"]["shards"]] == ["validation-00000-of-00001.tfrecord"]
    assert (output / "validation-00000-of-00001.tfrecord").exists()
    assert splits["train"]["records"] > 0 and splits["validation"]["records"] > 0
    # Nothing lost: every kept document is in exactly one split.
    assert splits["train"]["records"] + splits["validation"]["records"] == manifest["counts"]["kept"]
    _, everything = _run(tmp_path, "--no_validation")
    assert set(everything["splits"]) == {"train"}
    assert everything["splits"]["train"]["records"] == manifest["counts"]["kept"]


def test_one_shard_with_validation_is_a_named_error(tmp_path):
    command = [sys.executable, "-m", "data_pipelines", "run", "--source", f"json={_source_dir(tmp_path)}",
               "--output", str(tmp_path / "one"), "--shards", "1", "--workers", "1", "--quiet"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    assert "at least 2 shards" in completed.stderr and "--no_validation" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.slow
def test_eval_perplexity_reads_the_pipeline_output(tmp_path):
    from qwencoder_jax import checkpoints
    from qwencoder_jax.model.config import QWEN_VOCAB_SIZE, get_preset
    import flax.linen as nn
    import jax
    import numpy as np
    from qwencoder_jax.model.transformer import Transformer

    output, manifest = _run(tmp_path)
    config = get_preset("tiny", vocab_size=QWEN_VOCAB_SIZE)
    model = Transformer(config)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    checkpoint = str(checkpoints.save_model(tmp_path / "ckpt", config, params))
    command = [sys.executable, "-m", "qwencoder_apps.eval", "--checkpoint", checkpoint, "--output",
               str(tmp_path / "eval"), "--tasks", "perplexity", "--data_source", f"json={output}",
               "--perplexity_documents", "3"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    source = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]["perplexity"]["sources"]["json"]
    assert source["documents"] == min(3, manifest["splits"]["validation"]["records"])
    assert 1e3 < source["perplexity"] < 1e6  # an untrained model: about the vocabulary size
