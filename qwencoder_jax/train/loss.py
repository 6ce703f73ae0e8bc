"""Head + next-token cross-entropy in float32 (loss mask, optional z-loss, per-source sums): one module, three paths.

  cross_entropy(logits_btv, ...)                   plain: from materialised logits (the default)
  fused_head_cross_entropy(x_btd, w_vd, ...)       vocabulary chunks, online logsumexp, logits recomputed in the
                                                   backward pass (4 head matmuls; memory [tokens, chunk])
  token_chunked_head_cross_entropy(x_btd, w_dv)    windows of positions (all rows) against the whole vocabulary,
                                                   gradient formed in the forward pass (3 head matmuls; memory
                                                   [chunk, vocab] + dx, dW)

All three give the same numbers up to float32 summation order (tests/train/test_train_loss.py). Both fused paths
are kept: neither dominates on memory (docs/TRAINING.md has the trade-off and the CPU figures).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LossConfig:
    vocab_chunk_size: int = 0  # > 0: fused head + loss over vocabulary chunks of about this size; 0: plain logits
    token_chunk_size: int = 0  # > 0: fused head + loss over chunks of this many tokens (train/loss.py)
    head_dtype: str | None = None  # dtype of the head matmul's inputs; None: the model's compute dtype

    def __post_init__(self):
        if self.vocab_chunk_size < 0 or self.token_chunk_size < 0:
            raise ValueError(f"vocab_chunk_size and token_chunk_size must be >= 0 (0 = off), got "
                             f"{self.vocab_chunk_size} and {self.token_chunk_size}")
        if self.vocab_chunk_size and self.token_chunk_size:
            raise ValueError("choose one fused head: vocab_chunk_size or token_chunk_size, not both")
        if self.head_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"head_dtype must be None, 'float32' or 'bfloat16', got {self.head_dtype!r}")


def reduce_token_losses(log_normaliser_bt: jnp.ndarray, target_logits_bt: jnp.ndarray, weights_bt: jnp.ndarray | None,
                        z_loss: float = 0.0, source_ids_bt: jnp.ndarray | None = None,
                        num_sources: int = 0) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """(loss, stats) from per-token log-normalisers and target logits; shared by both paths.

    stats: `loss_sum`, `z_loss_sum`, `weight_sum`, `objective_sum` (= loss_sum + z_loss * z_loss_sum, the sum
    that is differentiated; scalars) and, when num_sources > 0, `loss_sum_by_source` and
    `weight_sum_by_source` ([num_sources + 1]; index 0 collects tokens of no known source, e.g. padding).
    """
    if weights_bt is None:
        weights_bt = jnp.ones(target_logits_bt.shape, jnp.float32)
    weights_bt = weights_bt.astype(jnp.float32)
    token_loss_bt = log_normaliser_bt - target_logits_bt
    loss_sum = jnp.sum(token_loss_bt * weights_bt)
    z_loss_sum = jnp.sum(jnp.square(log_normaliser_bt) * weights_bt)
    weight_sum = jnp.sum(weights_bt)
    loss = (loss_sum + z_loss * z_loss_sum) / jnp.maximum(weight_sum, 1.0)
    stats = {"loss_sum": loss_sum, "z_loss_sum": z_loss_sum, "weight_sum": weight_sum,
             "objective_sum": loss_sum + z_loss * z_loss_sum}
    if num_sources > 0:
        if source_ids_bt is None:
            raise ValueError("num_sources > 0 needs source_ids (int [batch, length]; the loader's `source_ids`)")
        one_hot_bts = jax.nn.one_hot(source_ids_bt, num_sources + 1, dtype=jnp.float32)
        # Gradients never flow through the per-source sums (they are metrics only).
        stats["loss_sum_by_source"] = jax.lax.stop_gradient(
            jnp.einsum("bts,bt->s", one_hot_bts, token_loss_bt * weights_bt))
        stats["weight_sum_by_source"] = jnp.einsum("bts,bt->s", one_hot_bts, weights_bt)
    return loss, stats


def cross_entropy(logits_btv: jnp.ndarray, targets_bt: jnp.ndarray, weights_bt: jnp.ndarray | None = None,
                  z_loss: float = 0.0, source_ids_bt: jnp.ndarray | None = None,
                  num_sources: int = 0) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Mean token loss over positions with weight > 0, and the sums it came from.

    logits_btv predict targets_bt at the same index (the caller shifts). Returns (loss, stats) where stats hold
    `loss_sum`, `z_loss_sum` and `weight_sum` so that accumulation and per-source losses can re-weight exactly.
    """
    logits_btv = logits_btv.astype(jnp.float32)
    log_normaliser_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logits_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    return reduce_token_losses(log_normaliser_bt, target_logits_bt, weights_bt, z_loss, source_ids_bt, num_sources)


def chunk_layout(vocab_size: int, chunk_size: int) -> tuple[int, int]:
    """(number of chunks, chunk length): an exact divisor of the vocabulary in [chunk_size / 2, chunk_size] when
    there is one (no padding copy of the projection), else equal chunks with the last one padded."""
    if chunk_size >= vocab_size:
        return 1, vocab_size
    for length in range(chunk_size, chunk_size // 2 - 1, -1):
        if vocab_size % length == 0:
            return vocab_size // length, length
    count = -(-vocab_size // chunk_size)
    return count, -(-vocab_size // count)


def _chunked_projection(w_vd: jnp.ndarray, count: int, length: int) -> jnp.ndarray:
    padding = count * length - w_vd.shape[0]
    if padding:
        w_vd = jnp.pad(w_vd, ((0, padding), (0, 0)))
    return w_vd.reshape(count, length, w_vd.shape[1])  # row-major [v, d]: a free reshape


def _chunk_logits(x_nd, w_cd, offset, vocab_size, dot_dtype, padded):
    logits_nc = jnp.einsum("nd,cd->nc", x_nd.astype(dot_dtype), w_cd.astype(dot_dtype),
                           preferred_element_type=jnp.float32)
    if not padded:  # static: only a padded last chunk needs its spare columns masked out
        return logits_nc
    columns_c = offset + jnp.arange(w_cd.shape[0])
    return jnp.where(columns_c[None, :] < vocab_size, logits_nc, -jnp.inf)


def _target_logits(x_nd, w_vd, targets_n, dot_dtype):
    """The target's logit per row: one gathered projection row per token, outside the chunk loop (no [n, chunk]
    compare-and-select per chunk)."""
    w_nd = jnp.take(w_vd, targets_n, axis=0).astype(dot_dtype)
    return jnp.einsum("nd,nd->n", x_nd.astype(dot_dtype), w_nd, preferred_element_type=jnp.float32)


def checked_head_dtype(x_btd, projection_shape, hidden_axis: int, layout: str, chunk_size: int, head_dtype):
    """The fused heads' argument checks; returns the dtype of their matmul inputs (None: x_btd's dtype)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if x_btd.shape[-1] != projection_shape[hidden_axis]:
        raise ValueError(f"hidden states of width {x_btd.shape[-1]} do not match the projection {projection_shape} "
                         f"({layout})")
    return jnp.dtype(head_dtype) if head_dtype is not None else x_btd.dtype


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _head_log_normaliser(x_nd, w_vd, targets_n, chunk_size, dot_dtype):
    return _head_forward(x_nd, w_vd, targets_n, chunk_size, dot_dtype)[0]


def _head_forward(x_nd, w_vd, targets_n, chunk_size, dot_dtype):
    vocab_size = w_vd.shape[0]
    count, length = chunk_layout(vocab_size, chunk_size)
    padded = count * length != vocab_size
    w_kcd = _chunked_projection(w_vd, count, length)
    n = x_nd.shape[0]

    def body(carry, inputs):
        max_n, sum_n = carry
        w_cd, offset = inputs
        logits_nc = _chunk_logits(x_nd, w_cd, offset, vocab_size, dot_dtype, padded)
        new_max_n = jnp.maximum(max_n, jnp.max(logits_nc, axis=-1))
        sum_n = sum_n * jnp.exp(max_n - new_max_n) + jnp.sum(jnp.exp(logits_nc - new_max_n[:, None]), axis=-1)
        return (new_max_n, sum_n), None

    init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32))
    (max_n, sum_n), _ = jax.lax.scan(body, init, (w_kcd, jnp.arange(count) * length))
    log_normaliser_n = max_n + jnp.log(sum_n)
    outputs = (log_normaliser_n, _target_logits(x_nd, w_vd, targets_n, dot_dtype))
    return outputs, (x_nd, w_vd, targets_n, log_normaliser_n)


def _head_backward(chunk_size, dot_dtype, residuals, cotangents):
    x_nd, w_vd, targets_n, log_normaliser_n = residuals
    grad_normaliser_n, grad_target_n = cotangents
    vocab_size, hidden = w_vd.shape
    count, length = chunk_layout(vocab_size, chunk_size)
    padded = count * length != vocab_size
    w_kcd = _chunked_projection(w_vd, count, length)
    x_dot_nd = x_nd.astype(dot_dtype)

    def body(dx_nd, inputs):
        w_cd, offset = inputs
        logits_nc = _chunk_logits(x_nd, w_cd, offset, vocab_size, dot_dtype, padded)
        # d loss / d logits = g_normaliser * softmax (+ g_target * one-hot, added outside the loop)
        dlogits_nc = (grad_normaliser_n[:, None] * jnp.exp(logits_nc - log_normaliser_n[:, None])).astype(dot_dtype)
        dx_nd = dx_nd + jnp.einsum("nc,cd->nd", dlogits_nc, w_cd.astype(dot_dtype), preferred_element_type=jnp.float32)
        dw_cd = jnp.einsum("nc,nd->cd", dlogits_nc, x_dot_nd, preferred_element_type=jnp.float32)
        return dx_nd, dw_cd

    dx_nd, dw_kcd = jax.lax.scan(body, jnp.zeros((x_nd.shape[0], hidden), jnp.float32),
                                 (w_kcd, jnp.arange(count) * length))
    dw_vd = dw_kcd.reshape(count * length, hidden)[:vocab_size]
    # The one-hot part: each token adds g_target * w[target] to dx and g_target * x to its target's row of dW.
    dx_nd = dx_nd + grad_target_n[:, None] * jnp.take(w_vd, targets_n, axis=0).astype(dot_dtype).astype(jnp.float32)
    dw_vd = dw_vd.at[targets_n].add(grad_target_n[:, None] * x_dot_nd.astype(jnp.float32))
    return dx_nd.astype(x_nd.dtype), dw_vd.astype(w_vd.dtype), None


_head_log_normaliser.defvjp(_head_forward, _head_backward)


def fused_head_cross_entropy(x_btd: jnp.ndarray, w_vd: jnp.ndarray, targets_bt: jnp.ndarray,
                             weights_bt: jnp.ndarray | None = None, z_loss: float = 0.0,
                             source_ids_bt: jnp.ndarray | None = None, num_sources: int = 0,
                             chunk_size: int = 4096,
                             head_dtype=None) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """cross_entropy(x_btd @ w_vd.T in float32, ...) without materialising the logits.

    x_btd: final hidden states (the model's `return_hidden=True` output); w_vd: the output projection as
    [vocab, hidden] (`output_projection(config, params).T`: for tied models that is the embedding table itself).
    head_dtype: dtype of the matmul inputs (None: x_btd's dtype, as the model's own head does); accumulation and
    everything after it are float32.
    """
    dot_dtype = checked_head_dtype(x_btd, w_vd.shape, 1, "[vocab, hidden]; pass output_projection(config, params).T",
                                   chunk_size, head_dtype)
    b, t, d = x_btd.shape
    log_normaliser_n, target_n = _head_log_normaliser(x_btd.reshape(b * t, d), w_vd, targets_bt.reshape(b * t),
                                                      chunk_size, dot_dtype)
    return reduce_token_losses(log_normaliser_n.reshape(b, t), target_n.reshape(b, t), weights_bt, z_loss,
                               source_ids_bt, num_sources)


# -- token chunks -----------------------------------------------------------------------------------------------
# A chunk is a window of positions across every row ([rows, window] tokens), never a run of consecutive tokens of
# the flattened batch: rows stay where the batch sharding put them, so the loss needs no collective to gather its
# inputs (a chunk crossing row shards made XLA:CPU deadlock across processes; docs/reliability.md).


def window_length(rows: int, length: int, chunk_size: int) -> int:
    """Positions per window: about chunk_size tokens over all rows, at least one position, at most the row."""
    return max(1, min(length, chunk_size // max(rows, 1)))


def _position_windows(window, *arrays_bt):
    """[k, b, window, ...] views of [b, t, ...] arrays, the last window padded with zeros (weight-0 positions)."""
    b, t = arrays_bt[0].shape[:2]
    count = -(-t // window)
    padding = count * window - t
    out = []
    for a in arrays_bt:
        if padding:
            a = jnp.pad(a, [(0, 0), (0, padding)] + [(0, 0)] * (a.ndim - 2))
        a = a.reshape((b, count, window) + a.shape[2:])
        out.append(jnp.moveaxis(a, 1, 0))
    return out


def _from_windows(a_kbw, length):
    """[b, t, ...] from [k, b, window, ...]."""
    a_bkw = jnp.moveaxis(a_kbw, 0, 1)
    b, k, w = a_bkw.shape[:3]
    return a_bkw.reshape((b, k * w) + a_bkw.shape[3:])[:, :length]


def _rows_logits(x_bwd, w_dv, dot_dtype):
    return jnp.einsum("bwd,dv->bwv", x_bwd.astype(dot_dtype), w_dv.astype(dot_dtype),
                      preferred_element_type=jnp.float32)


def _rows_log_normaliser(logits_bwv):
    max_bw = jnp.max(logits_bwv, axis=-1)
    exp_bwv = jnp.exp(logits_bwv - max_bw[..., None])
    sum_bw = jnp.sum(exp_bwv, axis=-1)
    return max_bw + jnp.log(sum_bw), exp_bwv, sum_bw


def _rows_target_logits(logits_bwv, targets_bw):
    return jnp.take_along_axis(logits_bwv, targets_bw[..., None], axis=-1)[..., 0]


def _rows_objective(lse_bt, target_bt, weights_bt, z_loss):
    return jnp.sum(weights_bt * (lse_bt - target_bt)) + z_loss * jnp.sum(weights_bt * jnp.square(lse_bt))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _token_head_objective(x_btd, w_dv, targets_bt, weights_bt, z_loss, window, dot_dtype, mean):
    """(objective, lse_bt, target_bt); only the objective may carry a cotangent. mean: the objective divided by the
    weight sum (the loss itself), so that its cotangent is the literal 1 of jax.grad and the backward pass
    is free; else the plain sum (microbatch accumulation)."""
    t = x_btd.shape[1]
    x_kbwd, targets_kbw = _position_windows(window, x_btd, targets_bt)

    def body(_, inputs):
        x_bwd, targets_bw = inputs
        logits_bwv = _rows_logits(x_bwd, w_dv, dot_dtype)
        return None, (_rows_log_normaliser(logits_bwv)[0], _rows_target_logits(logits_bwv, targets_bw))

    _, (lse_kbw, target_kbw) = jax.lax.scan(body, None, (x_kbwd, targets_kbw))
    lse_bt, target_bt = _from_windows(lse_kbw, t), _from_windows(target_kbw, t)
    objective = _rows_objective(lse_bt, target_bt, weights_bt, z_loss) / _objective_denominator(weights_bt, mean)
    return objective, lse_bt, target_bt


def _objective_denominator(weights_bt, mean):
    return jnp.maximum(jnp.sum(weights_bt.astype(jnp.float32)), 1.0) if mean else jnp.float32(1.0)


def _token_head_objective_forward(x_btd, w_dv, targets_bt, weights_bt, z_loss, window, dot_dtype, mean):
    t = x_btd.shape[1]
    denominator = _objective_denominator(weights_bt, mean)
    # The gradient of objective / denominator: each token's weight divided by it up front.
    x_kbwd, targets_kbw, weights_kbw = _position_windows(window, x_btd, targets_bt,
                                                         weights_bt.astype(jnp.float32) / denominator)
    w_dot_dv = w_dv.astype(dot_dtype)

    def chunk(x_bwd, targets_bw, weights_bw):
        x_dot_bwd = x_bwd.astype(dot_dtype)
        logits_bwv = _rows_logits(x_dot_bwd, w_dot_dv, dot_dtype)
        lse_bw, exp_bwv, sum_bw = _rows_log_normaliser(logits_bwv)
        target_bw = _rows_target_logits(logits_bwv, targets_bw)
        # d objective / d logits: w (1 + 2 z lse) softmax - w one-hot, one pass over the chunk's logits.
        scale_bw = weights_bw * (1.0 + 2.0 * z_loss * lse_bw) / sum_bw
        one_hot_bwv = jax.lax.broadcasted_iota(jnp.int32, logits_bwv.shape, 2) == targets_bw[..., None]
        dlogits_bwv = (scale_bw[..., None] * exp_bwv
                       - jnp.where(one_hot_bwv, weights_bw[..., None], 0.0)).astype(dot_dtype)
        dx_bwd = jnp.einsum("bwv,dv->bwd", dlogits_bwv, w_dot_dv, preferred_element_type=jnp.float32)
        dw_dv = jnp.einsum("bwd,bwv->dv", x_dot_bwd, dlogits_bwv, preferred_element_type=jnp.float32)
        return dw_dv, (lse_bw, target_bw, dx_bwd)

    def body(dw_dv, inputs):
        chunk_dw_dv, outputs = chunk(*inputs)
        return dw_dv + chunk_dw_dv, outputs

    # The first window starts dW (no zero-filled accumulator); a scan adds the others.
    dw_dv, per_chunk = chunk(x_kbwd[0], targets_kbw[0], weights_kbw[0])
    per_chunk = jax.tree.map(lambda a: a[None], per_chunk)
    if x_kbwd.shape[0] > 1:
        dw_dv, rest = jax.lax.scan(body, dw_dv, (x_kbwd[1:], targets_kbw[1:], weights_kbw[1:]))
        per_chunk = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), per_chunk, rest)
    lse_bt, target_bt, dx_btd = (_from_windows(a, t) for a in per_chunk)
    outputs = (_rows_objective(lse_bt, target_bt, weights_bt, z_loss) / denominator, lse_bt, target_bt)
    return outputs, (dx_btd.astype(x_btd.dtype), dw_dv.astype(w_dv.dtype), weights_bt)


def _token_head_objective_backward(z_loss, window, dot_dtype, mean, residuals, cotangents):
    dx_btd, dw_dv, weights_bt = residuals
    grad_objective = cotangents[0]  # cotangents of lse / target: zero (the public function stops them)
    return ((grad_objective * dx_btd).astype(dx_btd.dtype), (grad_objective * dw_dv).astype(dw_dv.dtype), None,
            jnp.zeros_like(weights_bt))


_token_head_objective.defvjp(_token_head_objective_forward, _token_head_objective_backward)


def token_chunked_head_cross_entropy(x_btd: jnp.ndarray, w_dv: jnp.ndarray, targets_bt: jnp.ndarray,
                                     weights_bt: jnp.ndarray | None = None, z_loss: float = 0.0,
                                     source_ids_bt: jnp.ndarray | None = None, num_sources: int = 0,
                                     chunk_size: int = 512, head_dtype=None,
                                     differentiate: str = "loss") -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """cross_entropy(x_btd @ w_dv in float32, ...) about `chunk_size` tokens at a time: windows of
    chunk_size // rows positions across all rows (three head matmuls: see the module doc).

    x_btd: final hidden states (`return_hidden=True`); w_dv: the output projection as [hidden, vocab]
    (`output_projection(config, params)`). Weights are not differentiated (they are data).
    differentiate: which output carries the gradient, "loss" (the mean; its cotangent is jax.grad's literal 1, so
    the backward pass does no work) or "objective_sum" (stats["objective_sum"], for microbatch accumulation).
    """
    if differentiate not in ("loss", "objective_sum"):
        raise ValueError(f"differentiate must be 'loss' or 'objective_sum', got {differentiate!r}")
    dot_dtype = checked_head_dtype(x_btd, w_dv.shape, 0, "[hidden, vocab]; pass output_projection(config, params)",
                                   chunk_size, head_dtype)
    b, t, _ = x_btd.shape
    weights_bt = jnp.ones((b, t), jnp.float32) if weights_bt is None else weights_bt.astype(jnp.float32)
    mean = differentiate == "loss"
    objective, lse_bt, target_bt = _token_head_objective(x_btd, w_dv, targets_bt, jax.lax.stop_gradient(weights_bt),
                                                         float(z_loss), window_length(b, t, chunk_size), dot_dtype,
                                                         mean)
    lse_bt, target_bt = jax.lax.stop_gradient(lse_bt), jax.lax.stop_gradient(target_bt)
    loss, stats = reduce_token_losses(lse_bt, target_bt, weights_bt, z_loss, source_ids_bt, num_sources)
    if mean:
        return objective, stats
    stats["objective_sum"] = objective
    return loss, stats
