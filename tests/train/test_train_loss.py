"""The fused heads + cross-entropy (vocabulary chunks; token chunks with the gradient formed in the forward pass)
equal the plain loss on materialised logits, and so do their gradients; per-source sums re-weight to the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwencoder_jax.model import Transformer, get_preset
from qwencoder_jax.train import step as step_lib
from qwencoder_jax.train.loss import (LossConfig, chunk_layout, cross_entropy, fused_head_cross_entropy,
                                      token_chunked_head_cross_entropy)


def _inputs(vocab, batch=2, length=24, hidden=32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    x_btd = jax.random.normal(keys[0], (batch, length, hidden), jnp.float32)
    w_vd = jax.random.normal(keys[1], (vocab, hidden), jnp.float32) * 0.3
    targets_bt = jax.random.randint(keys[2], (batch, length), 0, vocab)
    weights_bt = (jax.random.uniform(keys[3], (batch, length)) > 0.2).astype(jnp.float32)
    source_ids_bt = jax.random.randint(keys[4], (batch, length), 0, 3)
    return x_btd, w_vd, targets_bt, weights_bt, source_ids_bt


def _plain(x_btd, w_vd, targets_bt, weights_bt, source_ids_bt, z_loss):
    logits_btv = jnp.einsum("btd,vd->btv", x_btd, w_vd, preferred_element_type=jnp.float32)
    return cross_entropy(logits_btv, targets_bt, weights_bt, z_loss, source_ids_bt, num_sources=2)


def _assert_equal_results(fused, plain):
    """(value, stats, grads) of a fused head equal the plain ones to float32 rounding."""
    (fused_value, fused_stats, fused_grads), (plain_value, plain_stats, plain_grads) = fused, plain
    np.testing.assert_allclose(fused_value, plain_value, rtol=2e-6)
    for key in plain_stats:
        np.testing.assert_allclose(fused_stats[key], plain_stats[key], rtol=2e-6, atol=1e-6, err_msg=key)
    for plain_grad, fused_grad in zip(plain_grads, fused_grads):
        scale = float(jnp.max(jnp.abs(plain_grad)))
        np.testing.assert_allclose(fused_grad, plain_grad, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("vocab,chunk", [(509, 100), (512, 64), (300, 1000), (509, 7)])
def test_fused_loss_and_gradients_equal_plain(vocab, chunk):
    x_btd, w_vd, targets_bt, weights_bt, source_ids_bt = _inputs(vocab)
    z_loss = 1e-3

    def fused(x, w):
        return fused_head_cross_entropy(x, w, targets_bt, weights_bt, z_loss, source_ids_bt, 2, chunk_size=chunk)

    (plain_loss, plain_stats), plain_grads = jax.value_and_grad(
        lambda x, w: _plain(x, w, targets_bt, weights_bt, source_ids_bt, z_loss), argnums=(0, 1), has_aux=True)(
            x_btd, w_vd)
    (fused_loss, fused_stats), fused_grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1), has_aux=True))(
        x_btd, w_vd)
    _assert_equal_results((fused_loss, fused_stats, fused_grads), (plain_loss, plain_stats, plain_grads))


@pytest.mark.parametrize("chunk", [1, 7, 24, 48, 1000])  # 48 rows in all: padded, exact and oversized chunks
@pytest.mark.parametrize("differentiate", ["loss", "objective_sum"])
def test_token_chunked_loss_and_gradients_equal_plain(chunk, differentiate):
    x_btd, w_vd, targets_bt, weights_bt, source_ids_bt = _inputs(509)
    z_loss = 1e-3

    def plain(x, w):
        loss, stats = _plain(x, w, targets_bt, weights_bt, source_ids_bt, z_loss)
        return (loss if differentiate == "loss" else stats["objective_sum"]), stats

    def fused(x, w):
        loss, stats = token_chunked_head_cross_entropy(x, w.T, targets_bt, weights_bt, z_loss, source_ids_bt, 2,
                                                       chunk_size=chunk, differentiate=differentiate)
        return (loss if differentiate == "loss" else stats["objective_sum"]), stats

    (plain_value, plain_stats), plain_grads = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(x_btd, w_vd)
    (fused_value, fused_stats), fused_grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1), has_aux=True))(
        x_btd, w_vd)
    _assert_equal_results((fused_value, fused_stats, fused_grads), (plain_value, plain_stats, plain_grads))
    # Without a gradient (evaluation) only the loss is computed, and it is the same.
    np.testing.assert_allclose(jax.jit(fused)(x_btd, w_vd)[0], plain_value, rtol=2e-6)


def test_token_chunked_head_scales_its_gradient_by_the_cotangent():
    # The gradient is formed in the forward pass for a cotangent of 1 and scaled by the real one in the backward.
    x_btd, w_vd, targets_bt, weights_bt, _ = _inputs(300)
    plain_grads = jax.grad(lambda x, w: 3.5 * cross_entropy(jnp.einsum("btd,vd->btv", x, w), targets_bt,
                                                            weights_bt)[0], argnums=(0, 1))(x_btd, w_vd)
    fused_grads = jax.grad(lambda x, w: 3.5 * token_chunked_head_cross_entropy(x, w.T, targets_bt, weights_bt,
                                                                              chunk_size=16)[0], argnums=(0, 1))(
        x_btd, w_vd)
    for plain_grad, fused_grad in zip(plain_grads, fused_grads):
        np.testing.assert_allclose(fused_grad, plain_grad, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(plain_grad))))


def test_fused_loss_is_exact_where_the_logits_are_extreme():
    # Large logits: the online logsumexp must rescale its running sum, never overflow.
    x_btd, w_vd, targets_bt, weights_bt, source_ids_bt = _inputs(257)
    x_btd = x_btd * 40.0
    plain_loss, _ = _plain(x_btd, w_vd, targets_bt, weights_bt, source_ids_bt, 0.0)
    fused_loss, _ = fused_head_cross_entropy(x_btd, w_vd, targets_bt, weights_bt, chunk_size=32)
    assert np.isfinite(float(fused_loss))
    np.testing.assert_allclose(fused_loss, plain_loss, rtol=2e-6)
    token_loss, _ = token_chunked_head_cross_entropy(x_btd, w_vd.T, targets_bt, weights_bt, chunk_size=16)
    np.testing.assert_allclose(token_loss, plain_loss, rtol=2e-6)


def test_per_source_sums_reweight_to_the_loss():
    x_btd, w_vd, targets_bt, weights_bt, source_ids_bt = _inputs(509)
    loss, stats = fused_head_cross_entropy(x_btd, w_vd, targets_bt, weights_bt, 0.0, source_ids_bt, 2, chunk_size=64)
    by_source = stats["loss_sum_by_source"]
    tokens = stats["weight_sum_by_source"]
    assert float(jnp.sum(tokens)) == float(jnp.sum(weights_bt))
    for source in range(3):
        expected = float(jnp.sum(weights_bt * (source_ids_bt == source)))
        assert float(tokens[source]) == expected
    np.testing.assert_allclose(jnp.sum(by_source) / jnp.sum(tokens), loss, rtol=1e-6)


@pytest.mark.parametrize("fused", [LossConfig(vocab_chunk_size=100), LossConfig(token_chunk_size=20)],
                         ids=["vocab-chunks", "token-chunks"])
@pytest.mark.parametrize("preset_overrides", [{}, {"tie_embeddings": False}])
def test_train_step_loss_and_grads_equal_with_the_fused_head(preset_overrides, fused):
    config = get_preset("tiny", **preset_overrides)
    model = Transformer(config)
    tokens = jax.random.randint(jax.random.key(3), (2, 33), 0, config.vocab_size)
    batch = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:],
             "loss_weights": jnp.ones((2, 32), jnp.float32).at[0, :5].set(0.0)}
    params = jax.tree.map(lambda x: x, model.init(jax.random.key(0), batch["input_ids"])["params"])
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))

    def run(loss_config):
        return jax.jit(jax.value_and_grad(
            lambda p: step_lib.loss_fn(model, p, batch, 1e-4, loss_config), has_aux=True))(params)

    (plain_loss, _), plain_grads = run(LossConfig())
    (fused_loss, _), fused_grads = run(fused)
    np.testing.assert_allclose(fused_loss, plain_loss, rtol=2e-6)
    for path, plain_grad in jax.tree_util.tree_leaves_with_path(plain_grads):
        fused_grad = dict(jax.tree_util.tree_leaves_with_path(fused_grads))[path]
        scale = float(jnp.max(jnp.abs(plain_grad))) + 1e-12
        np.testing.assert_allclose(fused_grad, plain_grad, rtol=0, atol=5e-6 * scale, err_msg=str(path))


def test_chunk_layout_prefers_exact_divisors():
    assert chunk_layout(32_000, 1024) == (32, 1000)
    assert chunk_layout(151_936, 4096) == (64, 2374)
    count, length = chunk_layout(509, 100)
    assert count * length >= 509 and length <= 100


def test_loss_config_rejects_bad_values():
    with pytest.raises(ValueError, match="vocab_chunk_size"):
        LossConfig(vocab_chunk_size=-1)
    with pytest.raises(ValueError, match="head_dtype"):
        LossConfig(vocab_chunk_size=8, head_dtype="float16")
    with pytest.raises(ValueError, match="not both"):
        LossConfig(vocab_chunk_size=8, token_chunk_size=8)
    with pytest.raises(ValueError, match="token_chunk_size"):
        LossConfig(token_chunk_size=-2)
