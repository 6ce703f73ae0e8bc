"""The batched, fused-head perplexity scorer: every window's nats equal a float64 log-softmax of the model's own
logits for that window alone (whatever batch it shared and however it was padded), and `limit` bounds the
documents read."""

import types

import numpy as np
import pytest

from qwencoder_jax.eval import perplexity
from qwencoder_jax.eval.options import EvalOptions
from qwencoder_jax.data import shards


def tiny_model(vocab_size=512):
    import flax.linen as nn
    import jax

    from qwencoder_jax.model.config import get_preset
    from qwencoder_jax.model.transformer import Transformer

    model = Transformer(get_preset("tiny", vocab_size=vocab_size))
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    return model, params


def reference_nats(model, params, window) -> float:
    import jax

    logits_tv = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, np.asarray([window[:-1]]))[0],
                           np.float64)
    shifted_tv = logits_tv - logits_tv.max(-1, keepdims=True)
    log_probs_tv = shifted_tv - np.log(np.exp(shifted_tv).sum(-1, keepdims=True))
    return -sum(log_probs_tv[t, window[t + 1]] for t in range(len(window) - 1))


def test_batched_windows_equal_each_window_alone():
    model, params = tiny_model()
    rng = np.random.default_rng(1)
    documents = [list(rng.integers(0, 512, size=n)) for n in (30, 150, 5)]
    scorer = perplexity.Scorer(model, params, max_tokens=100, batch_size=2, vocab_chunk_size=128)
    windows = [w for d in documents for w in scorer.windows(d)]
    assert sum(len(w) - 1 for w in windows) == sum(len(d) - 1 for d in documents)  # each token predicted once
    nats = scorer.score(windows)
    for window, value in zip(windows, nats):
        assert value == pytest.approx(reference_nats(model, params, window), rel=1e-4)


def test_limit_bounds_the_documents_scored(tmp_path):
    model, params = tiny_model(vocab_size=512)
    examples = [{"id": str(i), "kind": "text", "text": f"document number {i} " * (i + 1)} for i in range(6)]
    shards.write_dataset(tmp_path, "docs", "text", examples, num_shards=1, split="validation")
    byte_tokenizer = types.SimpleNamespace(encode=lambda text: list(text.encode("utf-8")))  # ids 0-255 < 512
    generator = types.SimpleNamespace(model=model, params=params, eos_ids=[300], tokenizer=byte_tokenizer)
    options = EvalOptions(data_sources=(("docs", str(tmp_path)),), limit=2)
    records = perplexity.run(generator, options)
    scored = [r for r in records if r["index"] >= 0]
    assert [r["index"] for r in scored] == [0, 1]
    assert scored[1]["tokens"] == len(examples[1]["text"].encode()) and scored[1]["nats"] > 0
