"""The fused head + cross-entropy over token chunks, with the gradient formed in the forward pass.

    loss, stats = token_chunked_head_cross_entropy(x_btd, w_dv, targets_bt, weights_bt, z_loss, chunk_size=512)

Same numbers as `cross_entropy(x_btd @ w_dv, ...)` (loss.py) up to float32 rounding, and the same stats.

How it differs from the vocabulary-chunked form in loss.py. That one scans vocabulary chunks twice: once for the
log-normaliser, and again in the backward pass to recompute each chunk's logits, so it does four head matmuls
(logits, recomputed logits, dx, dW). Here the scan runs over rows (tokens) instead, each chunk seeing its full
vocabulary row, so its log-normaliser is final inside the chunk and d loss / d logits = w (1 + 2 z lse) softmax
- w one-hot can be formed at once: three matmuls (logits, dx, dW), no recomputation, no transposed copy of the
projection, no scatter. That is possible because the differentiated output is the scalar objective
(sum of weighted token losses + z-loss): its cotangent is one number, so the backward pass only scales the dx and
dW computed in the forward pass. The per-token log-normalisers and target logits come out too, for the stats, but
without gradient (stop_gradient).

Memory: [chunk, vocab] float32 logits live at a time, plus dx (the size of x) and dW (the size of the projection)
held as residuals from forward to backward. Choose it where a row of vocabulary fits comfortably (CPU runs,
moderate vocabularies); the vocabulary-chunked form bounds memory by [tokens, chunk] instead. Evaluation without
gradients does the logits matmul only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from qwencoder_jax.train.loss import checked_head_dtype, reduce_token_losses


def _chunks(x_nd, targets_n, weights_n, chunk_size):
    """[k, r, ...] views of the rows, the last chunk padded with weight-0 rows."""
    n = x_nd.shape[0]
    count = -(-n // chunk_size)
    padding = count * chunk_size - n
    if padding:
        x_nd = jnp.pad(x_nd, ((0, padding), (0, 0)))
        targets_n = jnp.pad(targets_n, (0, padding))
        weights_n = jnp.pad(weights_n, (0, padding))
    return (x_nd.reshape(count, chunk_size, -1), targets_n.reshape(count, chunk_size),
            weights_n.reshape(count, chunk_size))


def _logits(x_rd, w_dv, dot_dtype):
    return jnp.einsum("rd,dv->rv", x_rd.astype(dot_dtype), w_dv.astype(dot_dtype), preferred_element_type=jnp.float32)


def _log_normaliser(logits_rv):
    max_r = jnp.max(logits_rv, axis=-1)
    exp_rv = jnp.exp(logits_rv - max_r[:, None])
    sum_r = jnp.sum(exp_rv, axis=-1)
    return max_r + jnp.log(sum_r), exp_rv, sum_r


def _target_logits(logits_rv, targets_r):
    return jnp.take_along_axis(logits_rv, targets_r[:, None], axis=-1)[:, 0]


def _objective(lse_n, target_n, weights_n, z_loss):
    return jnp.sum(weights_n * (lse_n - target_n)) + z_loss * jnp.sum(weights_n * jnp.square(lse_n))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _head_objective(x_nd, w_dv, targets_n, weights_n, z_loss, chunk_size, dot_dtype, mean):
    """(objective, lse_n, target_n); only the objective may carry a cotangent. mean: the objective divided by the
    weight sum (the loss itself), so that its cotangent is the literal 1 of jax.grad and the backward pass
    is free; else the plain sum (microbatch accumulation)."""
    n = x_nd.shape[0]
    x_krd, targets_kr, _ = _chunks(x_nd, targets_n, weights_n, chunk_size)

    def body(_, inputs):
        x_rd, targets_r = inputs
        logits_rv = _logits(x_rd, w_dv, dot_dtype)
        return None, (_log_normaliser(logits_rv)[0], _target_logits(logits_rv, targets_r))

    _, (lse_kr, target_kr) = jax.lax.scan(body, None, (x_krd, targets_kr))
    lse_n, target_n = lse_kr.reshape(-1)[:n], target_kr.reshape(-1)[:n]
    return _objective(lse_n, target_n, weights_n, z_loss) / _denominator(weights_n, mean), lse_n, target_n


def _denominator(weights_n, mean):
    return jnp.maximum(jnp.sum(weights_n.astype(jnp.float32)), 1.0) if mean else jnp.float32(1.0)


def _head_objective_forward(x_nd, w_dv, targets_n, weights_n, z_loss, chunk_size, dot_dtype, mean):
    n = x_nd.shape[0]
    denominator = _denominator(weights_n, mean)
    # The gradient of objective / denominator: each token's weight divided by it up front.
    x_krd, targets_kr, weights_kr = _chunks(x_nd, targets_n, weights_n.astype(jnp.float32) / denominator,
                                               chunk_size)
    w_dot_dv = w_dv.astype(dot_dtype)

    def chunk(x_rd, targets_r, weights_r):
        x_dot_rd = x_rd.astype(dot_dtype)
        logits_rv = _logits(x_dot_rd, w_dot_dv, dot_dtype)
        lse_r, exp_rv, sum_r = _log_normaliser(logits_rv)
        target_r = _target_logits(logits_rv, targets_r)
        # d objective / d logits: w (1 + 2 z lse) softmax - w one-hot, one pass over the chunk's logits.
        scale_r = weights_r * (1.0 + 2.0 * z_loss * lse_r) / sum_r
        one_hot_rv = jax.lax.broadcasted_iota(jnp.int32, logits_rv.shape, 1) == targets_r[:, None]
        dlogits_rv = (scale_r[:, None] * exp_rv - jnp.where(one_hot_rv, weights_r[:, None], 0.0)).astype(dot_dtype)
        dx_rd = jnp.einsum("rv,dv->rd", dlogits_rv, w_dot_dv, preferred_element_type=jnp.float32)
        dw_dv = jnp.einsum("rd,rv->dv", x_dot_rd, dlogits_rv, preferred_element_type=jnp.float32)
        return dw_dv, (lse_r, target_r, dx_rd)

    def body(dw_dv, inputs):
        chunk_dw_dv, outputs = chunk(*inputs)
        return dw_dv + chunk_dw_dv, outputs

    # The first chunk starts dW (no zero-filled accumulator); a scan adds the others.
    dw_dv, per_chunk = chunk(x_krd[0], targets_kr[0], weights_kr[0])
    per_chunk = jax.tree.map(lambda a: a[None], per_chunk)
    if x_krd.shape[0] > 1:
        dw_dv, rest = jax.lax.scan(body, dw_dv, (x_krd[1:], targets_kr[1:], weights_kr[1:]))
        per_chunk = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), per_chunk, rest)
    lse_kr, target_kr, dx_krd = per_chunk
    lse_n, target_n = lse_kr.reshape(-1)[:n], target_kr.reshape(-1)[:n]
    dx_nd = dx_krd.reshape(-1, x_nd.shape[1])[:n]
    outputs = (_objective(lse_n, target_n, weights_n, z_loss) / denominator, lse_n, target_n)
    return outputs, (dx_nd.astype(x_nd.dtype), dw_dv.astype(w_dv.dtype), weights_n)


def _head_objective_backward(z_loss, chunk_size, dot_dtype, mean, residuals, cotangents):
    dx_nd, dw_dv, weights_n = residuals
    grad_objective = cotangents[0]  # cotangents of lse_n / target_n: zero (the public function stops them)
    return ((grad_objective * dx_nd).astype(dx_nd.dtype), (grad_objective * dw_dv).astype(dw_dv.dtype), None,
            jnp.zeros_like(weights_n))


_head_objective.defvjp(_head_objective_forward, _head_objective_backward)


def token_chunked_head_cross_entropy(x_btd: jnp.ndarray, w_dv: jnp.ndarray, targets_bt: jnp.ndarray,
                                     weights_bt: jnp.ndarray | None = None, z_loss: float = 0.0,
                                     source_ids_bt: jnp.ndarray | None = None, num_sources: int = 0,
                                     chunk_size: int = 512, head_dtype=None,
                                     differentiate: str = "loss") -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """cross_entropy(x_btd @ w_dv in float32, ...) a chunk of `chunk_size` tokens at a time (see the module doc).

    x_btd: final hidden states (`return_hidden=True`); w_dv: the output projection as [hidden, vocab]
    (`output_projection(config, params)`). Weights are not differentiated (they are data).
    differentiate: which output carries the gradient, "loss" (the mean; its cotangent is jax.grad's literal 1, so
    the backward pass does no work) or "objective_sum" (stats["objective_sum"], for microbatch accumulation).
    """
    if differentiate not in ("loss", "objective_sum"):
        raise ValueError(f"differentiate must be 'loss' or 'objective_sum', got {differentiate!r}")
    dot_dtype = checked_head_dtype(x_btd, w_dv.shape, 0, "[hidden, vocab]; pass output_projection(config, params)",
                                   chunk_size, head_dtype)
    b, t, d = x_btd.shape
    weights_bt = jnp.ones((b, t), jnp.float32) if weights_bt is None else weights_bt.astype(jnp.float32)
    mean = differentiate == "loss"
    objective, lse_n, target_n = _head_objective(x_btd.reshape(b * t, d), w_dv, targets_bt.reshape(b * t),
                                                 jax.lax.stop_gradient(weights_bt.reshape(b * t)), float(z_loss),
                                                 min(chunk_size, b * t), dot_dtype, mean)
    lse_bt, target_bt = jax.lax.stop_gradient(lse_n).reshape(b, t), jax.lax.stop_gradient(target_n).reshape(b, t)
    loss, stats = reduce_token_losses(lse_bt, target_bt, weights_bt, z_loss, source_ids_bt, num_sources)
    if mean:
        return objective, stats
    stats["objective_sum"] = objective
    return loss, stats
