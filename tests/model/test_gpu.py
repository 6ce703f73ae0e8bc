"""The GPU path (cuDNN fused attention, the train step) on a real GPU; skipped where JAX has no GPU.

The suite never depends on a GPU; these run where one is attached (`python -m pytest tests/model/test_gpu.py`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwencoder_jax.model.config import ModelConfig
from qwencoder_jax.model.transformer import Transformer, init_params

pytestmark = pytest.mark.skipif(not any(d.platform == "gpu" for d in jax.devices()), reason="no GPU attached")

# GQA 4:1, head dim 128 (cuDNN's common case), untied head; two packed documents per row plus padding.
CONFIG = ModelConfig(vocab_size=512, hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=32 * 4,
                     intermediate_size=512, tie_embeddings=False, rope_theta=10_000.0)


def _batch(length: int = 256):
    ids = jnp.asarray(np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, length)), jnp.int32)
    cut = [100, 180]
    segment_ids = jnp.asarray([[1] * c + [2] * (length - 16 - c) + [0] * 16 for c in cut], jnp.int32)
    positions = jnp.asarray([list(range(c)) + list(range(length - c)) for c in cut], jnp.int32)
    return ids, segment_ids, positions


def _loss_and_grads(config, params, ids, segment_ids, positions):
    model = Transformer(config)

    def loss(params):
        logits_btv = model.apply({"params": params}, ids, segment_ids, positions)
        log_probs = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * (segment_ids[:, 1:] > 0)) / jnp.sum(segment_ids[:, 1:] > 0), logits_btv

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, grads


def _max_error(tree, reference) -> float:
    return max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b))) for a, b in
               zip(jax.tree.leaves(tree), jax.tree.leaves(reference)))


def test_cudnn_attention_is_as_close_to_float32_as_xla_in_bfloat16():
    """cuDNN's fused kernel (bf16) is compared with the float32 XLA reference, and must be no further from it than
    XLA's own bf16 attention is (bf16 rounding is the only expected difference)."""
    params = init_params(CONFIG, jax.random.key(0))
    batch = _batch()
    reference = _loss_and_grads(CONFIG.replace(compute_dtype="float32"), params, *batch)
    xla = _loss_and_grads(CONFIG.replace(compute_dtype="bfloat16"), params, *batch)
    cudnn = _loss_and_grads(CONFIG.replace(compute_dtype="bfloat16", attention_backend="cudnn"), params, *batch)
    hlo = jax.jit(lambda p: Transformer(CONFIG.replace(compute_dtype="bfloat16", attention_backend="cudnn")).apply(
        {"params": p}, *batch)).lower(params).compile().as_text()
    assert "cudnn" in hlo.lower(), "no cuDNN custom call in the compiled step"
    for part in range(3):  # loss, logits, gradients
        xla_error, cudnn_error = _max_error(xla[part], reference[part]), _max_error(cudnn[part], reference[part])
        assert cudnn_error <= 2 * xla_error + 1e-3, (part, cudnn_error, xla_error)
