"""Causal, segment-aware grouped-query attention with the Pallas TPU splash-attention kernel.

    out_bthe = splash_attention(q_bthe, k_bske, v_bske, segment_ids_bt, block_size=512)

The kernel itself (`jax.experimental.pallas.ops.tpu.splash_attention`) works on one sequence with head-major
arrays ([heads, length, head dim]); this wrapper transposes, scales q, pads the sequence to whole blocks, vmaps
the kernel over the batch and undoes the rest. It is a per-device function: it sees whole sequences and whatever
heads and batch rows it is handed. On a mesh, call it inside `shard_map` with batch (and optionally heads)
sharded and the sequence axis unsharded; the kernel it builds then matches the per-device shapes. Sharding the
query sequence would need `head_shards` / `q_seq_shards` when building the mask info, which this module does not
do.

Grouped-query attention needs no repeated keys/values: the multi-head kernel maps query head h to key/value head
h // (heads / kv heads) in its index maps and reduces dk/dv over each group in its backward kernel.

Off TPU the kernel runs in Pallas interpret mode: correct, differentiable and slow (tests only).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib

# The kernel's key/value blocks are computed in units of TPU vector lanes; its blocks must be multiples of this.
LANES = 128


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def choose_block_size(sequence_length: int, block_size: int) -> int:
    """The block used for a sequence: `block_size`, clipped to the sequence rounded up to whole lanes."""
    if block_size <= 0 or block_size % LANES:
        raise ValueError(f"splash block_size must be a positive multiple of {LANES} (the kernel's lane width), "
                         f"got {block_size}")
    return min(block_size, _round_up(sequence_length, LANES))


@functools.lru_cache(maxsize=64)  # saves building one CausalMask per head on every trace
def _mask_and_block_sizes(num_heads: int, sequence_length: int, block: int):
    mask = splash_lib.MultiHeadMask([splash_lib.CausalMask((sequence_length, sequence_length))
                                     for _ in range(num_heads)])
    block_sizes = splash_lib.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block)
    return mask, block_sizes


def _kernel(num_heads: int, sequence_length: int, block: int, interpret: bool):
    """A splash kernel for [num_heads, sequence_length, e] queries under a causal mask.

    The costly part, turning the mask into per-block metadata (seconds for 32K tokens), is a numpy computation
    that jax caches itself (`splash_attention_mask_info._process_mask` is an lru_cache keyed on the mask and
    block shape; 12 entries, three per shape), so rebuilding the kernel object costs milliseconds. The kernel
    object itself is deliberately not cached: it holds that metadata as jax arrays created in whatever trace
    builds it, and under grad of a scanned model (partial evaluation) even `jax.ensure_compile_time_eval` leaves
    them tracers, so a cached kernel would leak tracers into later traces.
    """
    mask, block_sizes = _mask_and_block_sizes(num_heads, sequence_length, block)
    return splash_lib.make_splash_mha(mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=1,
                                      interpret=interpret)


def splash_attention(q_bthe, k_bske, v_bske, segment_ids_bt=None, *, block_size: int = 512,
                     interpret: bool | None = None):
    """softmax(q k^T / sqrt(e)) v, causal and within segments; [b, t, h, e] out in q's dtype.

    q_bthe [b, t, h, e]; k_bske, v_bske [b, t, k, e] with h a multiple of k (self-attention: s == t).
    segment_ids_bt: int [b, t]; a query sees only keys with its own id. None: one document per row.
    block_size: query and key/value block of the kernel, a multiple of 128; clipped to the sequence.
    interpret: run the kernel in Pallas interpret mode; None means "unless on TPU".
    """
    b, t, h, e = q_bthe.shape
    if k_bske.ndim != 4 or k_bske.shape[0] != b or k_bske.shape[3] != e or v_bske.shape != k_bske.shape:
        raise ValueError(f"splash_attention needs k and v of shape [batch, length, kv_heads, head_dim] matching q "
                         f"{q_bthe.shape}; got k {k_bske.shape}, v {v_bske.shape}")
    s, k_heads = k_bske.shape[1], k_bske.shape[2]
    if s != t:
        raise ValueError(f"splash_attention is causal self-attention: key length {s} must equal query length {t}")
    if h % k_heads:
        raise ValueError(f"number of query heads ({h}) must be a multiple of key/value heads ({k_heads})")
    if segment_ids_bt is not None and segment_ids_bt.shape != (b, t):
        raise ValueError(f"segment_ids must be [batch, length] = {(b, t)}, got {segment_ids_bt.shape}")
    if interpret is None:
        interpret = jax.default_backend() != "tpu"

    block = choose_block_size(t, block_size)
    padded = _round_up(t, block)
    kernel = _kernel(h, padded, block, bool(interpret))

    # The kernel does not scale the scores; scaling q in float32 and rounding once keeps bf16 error to one rounding.
    q_bthe = (q_bthe.astype(jnp.float32) * (1.0 / math.sqrt(e))).astype(q_bthe.dtype)
    k_bske = k_bske.astype(q_bthe.dtype)
    v_bske = v_bske.astype(q_bthe.dtype)

    if padded != t:
        # Padding goes at the end, where causality hides it from every real query. Each padded query still sees
        # its own key, so no softmax row is empty (that would put NaNs into the backward pass); with segment ids
        # it gets one below every real id, keeping it out of real documents too. Padded outputs are sliced off,
        # so their zero cotangents add nothing to dk/dv.
        extra = ((0, 0), (0, padded - t), (0, 0), (0, 0))
        q_bthe, k_bske, v_bske = (jnp.pad(x, extra) for x in (q_bthe, k_bske, v_bske))
        if segment_ids_bt is not None:
            segment_ids_bt = segment_ids_bt.astype(jnp.int32)
            padding_bt = jnp.full((b, padded - t), jnp.min(segment_ids_bt) - 1, jnp.int32)
            segment_ids_bt = jnp.concatenate([segment_ids_bt, padding_bt], axis=1)

    q_bhte = q_bthe.transpose(0, 2, 1, 3)
    k_bkse = k_bske.transpose(0, 2, 1, 3)
    v_bkse = v_bske.transpose(0, 2, 1, 3)

    if segment_ids_bt is None:
        out_bhte = jax.vmap(kernel)(q_bhte, k_bkse, v_bkse)
    else:
        def one_row(q_hte, k_kse, v_kse, segment_ids_t):
            return kernel(q_hte, k_kse, v_kse, segment_ids=splash_lib.SegmentIds(q=segment_ids_t, kv=segment_ids_t))

        out_bhte = jax.vmap(one_row)(q_bhte, k_bkse, v_bkse, segment_ids_bt.astype(jnp.int32))

    return out_bhte.transpose(0, 2, 1, 3)[:, :t].astype(q_bthe.dtype)
