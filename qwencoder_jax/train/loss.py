"""Next-token cross-entropy in float32, with a loss mask and optional z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits_btv: jnp.ndarray, targets_bt: jnp.ndarray, weights_bt: jnp.ndarray | None = None,
                  z_loss: float = 0.0) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Mean token loss over positions with weight > 0, and the sums it came from.

    logits_btv predict targets_bt at the same index (the caller shifts). Returns (loss, stats) where stats hold
    `loss_sum`, `z_loss_sum` and `weight_sum` so that accumulation and per-source losses can re-weight exactly.
    """
    logits_btv = logits_btv.astype(jnp.float32)
    if weights_bt is None:
        weights_bt = jnp.ones(targets_bt.shape, jnp.float32)
    weights_bt = weights_bt.astype(jnp.float32)
    log_normaliser_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logits_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    token_loss_bt = log_normaliser_bt - target_logits_bt
    loss_sum = jnp.sum(token_loss_bt * weights_bt)
    z_loss_sum = jnp.sum(jnp.square(log_normaliser_bt) * weights_bt)
    weight_sum = jnp.sum(weights_bt)
    denominator = jnp.maximum(weight_sum, 1.0)
    loss = (loss_sum + z_loss * z_loss_sum) / denominator
    return loss, {"loss_sum": loss_sum, "z_loss_sum": z_loss_sum, "weight_sum": weight_sum}

