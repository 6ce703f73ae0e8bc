"""Grouped-query self-attention with q/k/v bias, and the attention backends behind one option.

Backends compute softmax(q k^T / sqrt(e)) v under a causal, segment-aware mask and agree to float32
rounding; they differ only in how:
  xla    plain einsums and a float32 softmax; the reference the others are tested against.
  splash the Pallas TPU splash-attention kernel (`qwencoder_jax.kernels.splash`; Pallas interpret mode on CPU),
         under `shard_map` over the ambient mesh when one is active (`qwencoder_jax.sharding.activate`).
  cudnn  `jax.nn.dot_product_attention` with the cuDNN fused kernel on GPU (XLA's implementation elsewhere).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwencoder_jax.model.config import ModelConfig
from qwencoder_jax.model.layers import apply_rope, dense_init, dtype_of, with_logical_axes


def attention_mask(segment_ids_bt: jnp.ndarray, kv_segment_ids_bs: jnp.ndarray | None = None) -> jnp.ndarray:
    """[b, t, s] boolean: key s is visible to query t (causal by row index, same segment)."""
    kv_segment_ids_bs = segment_ids_bt if kv_segment_ids_bs is None else kv_segment_ids_bs
    t, s = segment_ids_bt.shape[1], kv_segment_ids_bs.shape[1]
    causal_ts = jnp.arange(t)[:, None] + (s - t) >= jnp.arange(s)[None, :]
    same_segment_bts = segment_ids_bt[:, :, None] == kv_segment_ids_bs[:, None, :]
    return causal_ts[None] & same_segment_bts


def xla_attention(q_bthe, k_bske, v_bske, segment_ids_bt):
    """Reference dot-product attention with grouped heads; scores and softmax in float32."""
    b, t, h, e = q_bthe.shape
    k_heads = k_bske.shape[2]
    q_btkge = q_bthe.reshape(b, t, k_heads, h // k_heads, e)
    scores_bkgts = jnp.einsum("btkge,bske->bkgts", q_btkge, k_bske, preferred_element_type=jnp.float32)
    scores_bkgts = scores_bkgts / jnp.sqrt(jnp.float32(e))
    mask_bts = attention_mask(segment_ids_bt)
    scores_bkgts = jnp.where(mask_bts[:, None, None], scores_bkgts, jnp.finfo(jnp.float32).min)
    probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1)
    out_btkge = jnp.einsum("bkgts,bske->btkge", probs_bkgts.astype(v_bske.dtype), v_bske)
    return out_btkge.reshape(b, t, h, e)


# q/k/v dtypes cuDNN's fused attention takes (jax/_src/cudnn/fused_attention_stablehlo.py: check_layout).
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_attention(q_bthe, k_bske, v_bske, segment_ids_bt):
    """`jax.nn.dot_product_attention`: cuDNN's fused kernel on GPU, XLA's implementation on other platforms.

    Causality goes in as `is_causal` (cuDNN's own causal mask type, which skips the blocks above the diagonal)
    and segments as a boolean [b, 1, t, s] same-segment mask, which jax turns into an additive bias for cuDNN.
    That is the route `jax.nn.dot_product_attention` offers for packed rows; the bias costs b * t * s values of
    memory traffic. cuDNN's packed-sequence layout (q/kv offsets, Hopper and cuDNN >= 9.6) would avoid it but is
    only reachable through jax's private cuDNN module. GQA shapes go in unrepeated on both paths.

    On GPU, cuDNN takes only bfloat16/float16 q/k/v and, when training with a bias, even sequence lengths.
    """
    on_gpu = jax.default_backend() == "gpu"
    if on_gpu and q_bthe.dtype not in CUDNN_DTYPES:
        raise ValueError(f"attention_backend='cudnn' needs bfloat16 or float16 activations (cuDNN's fused attention "
                         f"takes no {q_bthe.dtype}); set compute_dtype='bfloat16' or use attention_backend='xla'")
    same_segment_b1ts = (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q_bthe, k_bske, v_bske, mask=same_segment_b1ts, is_causal=True,
                                        implementation="cudnn" if on_gpu else None)


def sharded_splash_attention(config: ModelConfig, q_bthe, k_bske, v_bske, segment_ids_bt):
    """The per-device splash kernel, under `shard_map` over the ambient mesh when one is active.

    The layout comes from the same logical-axis rules as everything else (`qwencoder_jax.sharding`): batch rows
    over the batch axes, heads over the tensor axis. Each device then runs the kernel on whole sequences of its
    own rows and heads, which is all the kernel supports.
    """
    from qwencoder_jax.kernels import splash  # imported lazily: Pallas is only needed by this backend

    kernel = functools.partial(splash.splash_attention, block_size=config.splash_block_size)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size <= 1:
        return kernel(q_bthe, k_bske, v_bske, segment_ids_bt)
    q_spec = nn.logical_to_mesh_axes(("act_batch", "act_length", "act_heads", "act_head_dim"))
    kv_spec = nn.logical_to_mesh_axes(("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
    length_axes = q_spec[1]
    if length_axes is not None and _mesh_size(mesh, length_axes) > 1:
        raise NotImplementedError(
            f"attention_backend='splash' with the sequence sharded over mesh axes {length_axes} (context "
            "parallelism) is not implemented; use a mesh with sequence=1 or attention_backend='xla'")
    for spec, array, what in ((q_spec, q_bthe, "query heads"), (kv_spec, k_bske, "key/value heads")):
        for dim, name in ((0, "batch"), (2, what)):
            parts = _mesh_size(mesh, spec[dim])
            if array.shape[dim] % parts:
                raise ValueError(f"splash attention under shard_map: {name} ({array.shape[dim]}) is not divisible by "
                                 f"mesh axes {spec[dim]} (size {parts}); change the mesh or the batch/head counts")
    segment_spec = jax.sharding.PartitionSpec(q_spec[0], q_spec[1])
    # check_vma=False: the Pallas call inside has no varying-manual-axes rule; every operand is per-device anyway.
    return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, segment_spec), out_specs=q_spec,
                         check_vma=False)(q_bthe, k_bske, v_bske, segment_ids_bt)


def _mesh_size(mesh, axes) -> int:
    if axes is None:
        return 1
    return math.prod(mesh.shape[name] for name in ((axes,) if isinstance(axes, str) else axes))


def attend(config: ModelConfig, q_bthe, k_bske, v_bske, segment_ids_bt):
    if config.attention_backend == "xla":
        return xla_attention(q_bthe, k_bske, v_bske, segment_ids_bt)
    if config.attention_backend == "cudnn":
        return cudnn_attention(q_bthe, k_bske, v_bske, segment_ids_bt)
    if config.attention_backend == "splash":
        return sharded_splash_attention(config, q_bthe, k_bske, v_bske, segment_ids_bt)
    raise ValueError(f"unknown attention_backend {config.attention_backend!r}")


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_btd, segment_ids_bt, cos_bte, sin_bte):
        cfg = self.config
        compute, param = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)

        def projection(name, heads, heads_axis):
            return nn.DenseGeneral(
                (heads, cfg.head_dim), use_bias=cfg.attention_bias, dtype=compute, param_dtype=param,
                kernel_init=with_logical_axes(dense_init(), ("embed", heads_axis, "head_dim")),
                bias_init=with_logical_axes(nn.initializers.zeros, (heads_axis, "head_dim")),
                name=name)

        q_bthe = projection("q_proj", cfg.num_heads, "q_heads")(x_btd)
        k_bske = projection("k_proj", cfg.num_kv_heads, "kv_heads")(x_btd)
        v_bske = projection("v_proj", cfg.num_kv_heads, "kv_heads")(x_btd)
        q_bthe = apply_rope(q_bthe, cos_bte, sin_bte)
        k_bske = apply_rope(k_bske, cos_bte, sin_bte)
        q_bthe = nn.with_logical_constraint(q_bthe, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        k_bske = nn.with_logical_constraint(k_bske, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
        v_bske = nn.with_logical_constraint(v_bske, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))

        out_bthe = attend(cfg, q_bthe, k_bske, v_bske, segment_ids_bt)

        return nn.DenseGeneral(
            cfg.hidden_size, axis=(-2, -1), use_bias=False, dtype=compute, param_dtype=param,
            kernel_init=with_logical_axes(dense_init(), ("q_heads", "head_dim", "embed")),
            name="o_proj")(out_bthe)
