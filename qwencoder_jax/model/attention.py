"""Grouped-query self-attention with q/k/v bias, and the attention backends behind one option.

Backends compute softmax(q k^T / sqrt(e)) v under a causal, segment-aware mask and agree to float32
rounding; they differ only in how:
  xla    plain einsums and a float32 softmax; the reference the others are tested against.
  splash the Pallas TPU splash-attention kernel (`qwencoder_jax.kernels.splash`; Mosaic when the mesh's devices are
         TPUs, Pallas interpret mode on CPU),
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
    own rows and heads. When the sequence is sharded too (context parallelism), see `_context_parallel_splash`.
    """
    from qwencoder_jax.kernels import splash  # imported lazily: Pallas is only needed by this backend

    kernel = functools.partial(splash.splash_attention, block_size=config.splash_block_size)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size <= 1:
        return kernel(q_bthe, k_bske, v_bske, segment_ids_bt)
    q_spec = nn.logical_to_mesh_axes(("act_batch", "act_length", "act_heads", "act_head_dim"))
    kv_spec = nn.logical_to_mesh_axes(("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
    length_axes = q_spec[1]
    for spec, array, what in ((q_spec, q_bthe, "query heads"), (kv_spec, k_bske, "key/value heads")):
        for dim, name in ((0, "batch"), (2, what)):
            parts = _mesh_size(mesh, spec[dim])
            if array.shape[dim] % parts:
                raise ValueError(f"splash attention under shard_map: {name} ({array.shape[dim]}) is not divisible by "
                                 f"mesh axes {spec[dim]} (size {parts}); change the mesh or the batch/head counts")
    if length_axes is not None and _mesh_size(mesh, length_axes) > 1:
        return _context_parallel_splash(config, mesh, q_spec, kv_spec, q_bthe, k_bske, v_bske, segment_ids_bt)
    segment_spec = jax.sharding.PartitionSpec(q_spec[0], q_spec[1])
    # check_vma=False: the Pallas call inside has no varying-manual-axes rule; every operand is per-device anyway.
    return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, segment_spec), out_specs=q_spec,
                         check_vma=False)(q_bthe, k_bske, v_bske, segment_ids_bt)


def _mesh_size(mesh, axes) -> int:
    if axes is None:
        return 1
    return math.prod(mesh.shape[name] for name in ((axes,) if isinstance(axes, str) else axes))


def _context_parallel_splash(config: ModelConfig, mesh, q_spec, kv_spec, q_bthe, k_bske, v_bske, segment_ids_bt):
    """Splash attention with the sequence sharded: each device keeps its L = t / S queries, all-gathers keys,
    values and their segment ids over the sequence axes (S x the K/V bytes per layer, as MaxText's all-gather
    context parallelism), and runs the kernel whose mask metadata is split by query shard (causal, offset by the
    shard's first position). The backward pass is the same kernel's, and the all-gather's transpose (a reduce-
    scatter) returns each device the dk/dv of its own keys.

    Load balance: with contiguous shards, under the causal mask device i (of S) computes (2i + 1) / S times the
    mean share of score blocks (the last about twice the mean, the first 1 / S of it), and the step waits for the
    last. So by default (`ModelConfig.context_parallel_layout = "zigzag"`) each device first trades query halves
    with others (two ppermutes) so that it attends halves i and 2S-1-i of the sequence, one early and one late:
    equal work.
    The kernel's mask is the causal mask in that row order (`splash.ZigZagCausalMask`); keys stay in natural
    order, and the outputs travel back the same way. The activations elsewhere keep their natural layout.
    """
    # imported lazily: Pallas is only needed by this backend
    from qwencoder_jax.kernels import splash

    b, t, h, _ = q_bthe.shape
    length_axes = q_spec[1]
    shards = _mesh_size(mesh, length_axes)
    if t % shards:
        raise ValueError(f"splash attention with context parallelism: sequence length {t} is not divisible by "
                         f"mesh axes {length_axes} (size {shards}); change the sequence length or the mesh")
    local_heads = h // _mesh_size(mesh, q_spec[2])
    block = splash.context_parallel_block_size(t // shards, config.splash_block_size)
    axis_names = (length_axes,) if isinstance(length_axes, str) else tuple(length_axes)
    # the half exchange addresses devices along one mesh axis; a sequence over several axes stays contiguous
    zigzag = config.context_parallel_layout == "zigzag" and len(axis_names) == 1
    kernel = splash.context_parallel_kernel(local_heads, t, block, shards, not splash.targets_tpu(),
                                            zigzag=zigzag)
    # the mask metadata's axes are [heads (identical masks: one entry), query blocks]; split the second
    kernel_spec = kernel.manual_sharding_spec(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, length_axes)))
    if segment_ids_bt is None:
        segment_ids_bt = jnp.zeros((b, t), jnp.int32)
    segment_spec = jax.sharding.PartitionSpec(q_spec[0], length_axes)

    def per_device(kernel, q_bLhe, k_bLke, v_bLke, segment_ids_bL):
        k_bske, v_bske, kv_segment_ids_bs = (
            jax.lax.all_gather(x, length_axes, axis=1, tiled=True) for x in (k_bLke, v_bLke, segment_ids_bL))
        if not zigzag:
            return splash.local_query_attention(kernel, q_bLhe, k_bske, v_bske, segment_ids_bL, kv_segment_ids_bs)
        q_bLhe, segment_ids_bL = (splash.to_zigzag(x, axis_names[0], shards) for x in (q_bLhe, segment_ids_bL))
        out_bLhe = splash.local_query_attention(kernel, q_bLhe, k_bske, v_bske, segment_ids_bL, kv_segment_ids_bs)
        return splash.from_zigzag(out_bLhe, axis_names[0], shards)

    # check_vma=False: the Pallas call inside has no varying-manual-axes rule.
    return jax.shard_map(per_device, mesh=mesh, in_specs=(kernel_spec, q_spec, kv_spec, kv_spec, segment_spec),
                         out_specs=q_spec, check_vma=False)(kernel, q_bthe, k_bske, v_bske, segment_ids_bt)


def attend(config: ModelConfig, q_bthe, k_bske, v_bske, segment_ids_bt):
    if config.attention_backend == "xla":
        return xla_attention(q_bthe, k_bske, v_bske, segment_ids_bt)
    if config.attention_backend == "cudnn":
        return cudnn_attention(q_bthe, k_bske, v_bske, segment_ids_bt)
    if config.attention_backend == "splash":
        return sharded_splash_attention(config, q_bthe, k_bske, v_bske, segment_ids_bt)
    raise ValueError(f"unknown attention_backend {config.attention_backend!r}")


def cached_attention(q_bthe, k_bkse, v_bkse, query_slots_bt, segment_ids_bt, kv_segment_ids_bs):
    """Attention of new queries over a KV cache: key slot s is visible to query t when s <= its slot and the
    segments match (empty and padded slots carry segment 0, which no real query has).

    Plain einsums whatever the backend: a decode step reads every cached key once per token, so it is bound by
    memory traffic and a fused kernel has nothing to save. The cache is laid out [b, k, s, e] so that both
    products are batched matmuls over (b, k) reading it in place (a [b, s, k, e] cache was transposed, i.e.
    copied whole, by every layer at every step). Scores and softmax in float32.
    """
    b, t, h, e = q_bthe.shape
    k_heads = k_bkse.shape[1]
    q_btkge = q_bthe.reshape(b, t, k_heads, h // k_heads, e)
    scores_bkgts = jnp.einsum("btkge,bkse->bkgts", q_btkge, k_bkse, preferred_element_type=jnp.float32)
    scores_bkgts = scores_bkgts / jnp.sqrt(jnp.float32(e))
    slots_s = jnp.arange(k_bkse.shape[2])
    visible_bts = ((slots_s[None, None, :] <= query_slots_bt[:, :, None])
                   & (kv_segment_ids_bs[:, None, :] == segment_ids_bt[:, :, None]))
    scores_bkgts = jnp.where(visible_bts[:, None, None], scores_bkgts, jnp.finfo(jnp.float32).min)
    probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1)
    # Output in the dot's natural [b, k, g, t, e] order, transposed after: asking the einsum for [b, t, k, g, e]
    # makes XLA's CPU backend fall back to a generic loop (docs/BENCHMARKS.md, design figures).
    out_bkgte = jnp.einsum("bkgts,bkse->bkgte", probs_bkgts.astype(v_bkse.dtype), v_bkse)
    return jnp.transpose(out_bkgte, (0, 3, 1, 2, 4)).reshape(b, t, h, e)


# Layout of the cached keys/values: rows over the batch axes, key/value heads over the tensor axis, slots whole
# (each step writes one slot; a length-sharded cache would make every write a cross-device update).
CACHE_AXES = ("act_batch", "act_kv_heads", None, "act_head_dim")


class Attention(nn.Module):
    """Self-attention; with `decode` set it also keeps a KV cache in the flax "cache" collection.

    decode=None      training and scoring: no cache.
    decode="prefill" the tokens are the first ones of the cache (its index must be 0): they attend among
                     themselves through the configured backend, and their keys/values/segment ids are stored.
    decode="step"    the tokens are appended at the cache index and attend over everything cached so far.
    The cache (per layer): key/value [b, k, s, e] (num_kv_heads, not num_heads), segment_ids [b, s], index [].
    Its length is that of the input the cache was created with (`qwencoder_jax.model.kv_cache.init_cache`).
    """

    config: ModelConfig
    decode: str | None = None

    @nn.compact
    def __call__(self, x_btd, segment_ids_bt, cos_bte, sin_bte):
        cfg = self.config
        compute, param = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)

        def projection(name, heads, heads_axis):
            return nn.DenseGeneral(
                (heads, cfg.head_dim), use_bias=cfg.attention_bias, dtype=compute, param_dtype=param,
                kernel_init=with_logical_axes(dense_init(), ("embed", heads_axis, "head_dim")),
                bias_init=with_logical_axes(nn.initializers.zeros, (heads_axis, "head_dim")), name=name)

        q_bthe = projection("q_proj", cfg.num_heads, "q_heads")(x_btd)
        k_bske = projection("k_proj", cfg.num_kv_heads, "kv_heads")(x_btd)
        v_bske = projection("v_proj", cfg.num_kv_heads, "kv_heads")(x_btd)
        q_bthe = apply_rope(q_bthe, cos_bte, sin_bte)
        k_bske = apply_rope(k_bske, cos_bte, sin_bte)
        q_bthe = nn.with_logical_constraint(q_bthe, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        k_bske = nn.with_logical_constraint(k_bske, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
        v_bske = nn.with_logical_constraint(v_bske, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))

        if self.decode is None:
            out_bthe = attend(cfg, q_bthe, k_bske, v_bske, segment_ids_bt)
        else:
            out_bthe = self._with_cache(q_bthe, k_bske, v_bske, segment_ids_bt)

        return nn.DenseGeneral(
            cfg.hidden_size, axis=(-2, -1), use_bias=False, dtype=compute, param_dtype=param,
            kernel_init=with_logical_axes(dense_init(), ("q_heads", "head_dim", "embed")), name="o_proj")(out_bthe)

    def _with_cache(self, q_bthe, k_bske, v_bske, segment_ids_bt):
        if self.decode not in ("prefill", "step"):
            raise ValueError(f"Attention.decode must be None, 'prefill' or 'step', got {self.decode!r}")
        creating = not self.has_variable("cache", "key")
        b, t, k, e = k_bske.shape
        cached_key = self.variable("cache", "key", jnp.zeros, (b, k, t, e), k_bske.dtype)
        cached_value = self.variable("cache", "value", jnp.zeros, (b, k, t, e), v_bske.dtype)
        cached_segments = self.variable("cache", "segment_ids", jnp.zeros, (b, t), jnp.int32)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if creating:  # init: the variables take the input's shape; nothing is cached yet
            return attend(self.config, q_bthe, k_bske, v_bske, segment_ids_bt)
        start = index.value

        def write(cache_bkse, new_bske):
            new_bkse = jnp.swapaxes(new_bske, 1, 2).astype(cache_bkse.dtype)
            return nn.with_logical_constraint(jax.lax.dynamic_update_slice(cache_bkse, new_bkse, (0, 0, start, 0)),
                                              CACHE_AXES)

        cached_key.value = write(cached_key.value, k_bske)
        cached_value.value = write(cached_value.value, v_bske)
        cached_segments.value = jax.lax.dynamic_update_slice(
            cached_segments.value, segment_ids_bt.astype(jnp.int32), (0, start))
        index.value = start + t
        if self.decode == "prefill":
            return attend(self.config, q_bthe, k_bske, v_bske, segment_ids_bt)
        query_slots_bt = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
        return cached_attention(q_bthe, cached_key.value, cached_value.value, query_slots_bt, segment_ids_bt,
                                cached_segments.value)
