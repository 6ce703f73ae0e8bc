"""Building blocks of the Qwen2 decoder: RMSNorm, rotary embeddings (plain and YaRN), the SwiGLU MLP.

Axis letters used in array names throughout the model:
  b batch, t query position, s key position, d hidden (model) size, h query heads, k key/value heads,
  g query heads per key/value head, e head dim, f MLP hidden size, v vocabulary.
Parameters name logical axes only; `qwencoder_jax.sharding` maps them onto a mesh.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwencoder_jax.model.config import ModelConfig, YarnScaling, yarn_attention_factor

# The standard deviation of the published Qwen2 initialiser (`initializer_range`).
INIT_STDDEV = 0.02


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def dense_init():
    return nn.initializers.normal(stddev=INIT_STDDEV)


class LogicalAxes(nn.LogicallyPartitioned):
    """Logical-axis metadata whose unboxing never pins a sharding.

    flax's DenseGeneral initialises a flat [in, out] kernel, boxes it, and only then reshapes it to its real
    shape; it also re-runs that initialiser under eval_shape on every apply to check shapes. A box that applied
    its constraint on unbox would pin the 3-axis spec onto the flat array whenever sharding rules are active.
    Parameters get their layout from explicit jit in/out shardings instead (qwencoder_jax.sharding.shard_params).
    """

    def unbox(self, apply_constraint=True):
        return self.value


def with_logical_axes(init_fn, names):
    """Like nn.with_logical_partitioning, with LogicalAxes boxes (see there why)."""

    def wrapped(*args, **kwargs):
        return LogicalAxes(init_fn(*args, **kwargs), tuple(names))

    return wrapped


class RMSNorm(nn.Module):
    """RMSNorm as Qwen2 computes it: normalise in float32, cast back, then scale."""

    epsilon: float
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        x_f32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x_f32), axis=-1, keepdims=True)
        normed = (x_f32 * jax.lax.rsqrt(variance + self.epsilon)).astype(x.dtype)
        return scale.astype(x.dtype) * normed


# --- rotary position embeddings -------------------------------------------------------------------------


def _yarn_inverse_frequencies(head_dim: int, theta: float, yarn: YarnScaling) -> jnp.ndarray:
    """YaRN "NTK-by-parts" frequencies: interpolate the low frequencies, keep the high ones, ramp between."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    position_frequencies = theta ** exponents
    extrapolation = 1.0 / position_frequencies
    interpolation = 1.0 / (yarn.factor * position_frequencies)

    def correction_dim(num_rotations):
        original = yarn.original_max_position_embeddings
        return head_dim * math.log(original / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(yarn.beta_fast), correction_dim(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = jnp.clip((jnp.arange(head_dim // 2, dtype=jnp.float32) - low) / (high - low), 0.0, 1.0)
    extrapolation_share = 1.0 - ramp
    return interpolation * (1.0 - extrapolation_share) + extrapolation * extrapolation_share


def rope_inverse_frequencies(config: ModelConfig) -> tuple[jnp.ndarray, float]:
    """Per-pair inverse frequencies [e/2] and the factor applied to cos/sin (YaRN's attention scaling)."""
    if config.yarn is None:
        exponents = jnp.arange(0, config.head_dim, 2, dtype=jnp.float32) / config.head_dim
        return 1.0 / (config.rope_theta ** exponents), 1.0
    return (_yarn_inverse_frequencies(config.head_dim, config.rope_theta, config.yarn),
            yarn_attention_factor(config.yarn))


def rope_cos_sin(config: ModelConfig, positions_bt: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos/sin tables [b, t, e] in float32 for the given (per-document) positions."""
    inverse_frequencies, scaling = rope_inverse_frequencies(config)
    angles_bt_half = positions_bt.astype(jnp.float32)[..., None] * inverse_frequencies
    angles_bte = jnp.concatenate([angles_bt_half, angles_bt_half], axis=-1)
    return jnp.cos(angles_bte) * scaling, jnp.sin(angles_bte) * scaling


def apply_rope(x_bthe: jnp.ndarray, cos_bte: jnp.ndarray, sin_bte: jnp.ndarray) -> jnp.ndarray:
    """Rotate halves (the layout of Hugging Face Qwen2 checkpoints, not interleaved pairs)."""
    half = x_bthe.shape[-1] // 2
    rotated = jnp.concatenate([-x_bthe[..., half:], x_bthe[..., :half]], axis=-1)
    cos = cos_bte[:, :, None, :].astype(x_bthe.dtype)
    sin = sin_bte[:, :, None, :].astype(x_bthe.dtype)
    return x_bthe * cos + rotated * sin


# --- MLP -------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_btd):
        cfg = self.config

        def projection(name, features, axes):
            return nn.DenseGeneral(features, use_bias=False, dtype=dtype_of(cfg.compute_dtype),
                                   param_dtype=dtype_of(cfg.param_dtype),
                                   kernel_init=with_logical_axes(dense_init(), axes), name=name)

        gate_btf = projection("gate_proj", cfg.intermediate_size, ("embed", "mlp"))(x_btd)
        up_btf = projection("up_proj", cfg.intermediate_size, ("embed", "mlp"))(x_btd)
        hidden_btf = nn.with_logical_constraint(nn.silu(gate_btf) * up_btf, ("act_batch", "act_length", "act_mlp"))
        return projection("down_proj", cfg.hidden_size, ("mlp", "embed"))(hidden_btf)
