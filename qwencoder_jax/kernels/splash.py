"""Causal, segment-aware grouped-query attention with the Pallas TPU splash-attention kernel.

    out_bthe = splash_attention(q_bthe, k_bske, v_bske, segment_ids_bt, block_size=512)

The kernel itself (`jax.experimental.pallas.ops.tpu.splash_attention`) works on one sequence with head-major
arrays ([heads, length, head dim]); this wrapper transposes, scales q, pads the sequence to whole blocks, vmaps
the kernel over the batch and undoes the rest. It is a per-device function: it sees whole sequences and whatever
heads and batch rows it is handed. On a mesh, call it inside `shard_map` with batch (and optionally heads)
sharded and the sequence axis unsharded; the kernel it builds then matches the per-device shapes.

Context parallelism (the sequence sharded over devices, for 32K repo-level rows) uses the second pair:

    kernel = context_parallel_kernel(num_heads, sequence_length, block_size, q_seq_shards=S)
    out_bLhe = local_query_attention(kernel, q_bLhe, k_bske, v_bske, q_segment_ids_bL, kv_segment_ids_bs)

The kernel is built for the whole [t, t] causal mask with its block metadata split into S query shards
(`make_splash_mha(..., q_seq_shards=S)`); passed into `shard_map` with `kernel.manual_sharding_spec(...)` as its
in_spec, each device receives only the metadata of its own query rows, so it runs its L = t / S queries against
the full (all-gathered) keys and values under the causal mask offset by its first query's position. With
`zigzag=True` the mask is `ZigZagCausalMask` instead and `to_zigzag` / `from_zigzag` move query halves between
shards so each holds one early and one late stretch of the sequence (equal causal work per device).

Grouped-query attention needs no repeated keys/values: the multi-head kernel maps query head h to key/value head
h // (heads / kv heads) in its index maps and reduces dk/dv over each group in its backward kernel.

The kernel is compiled through Mosaic whenever the computation targets TPU devices -- the ambient mesh's
devices (`jax.set_mesh`, as `qwencoder_jax.sharding.activate` sets it), which may be TPUs described by a
topology on a CPU host (ahead-of-time compilation, `qwencoder_jax.aot`) -- and runs in Pallas interpret mode
(correct, differentiable and slow: tests only) when they are CPUs. Without a mesh, the default backend decides.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask_lib

# The kernel's key/value blocks are computed in units of TPU vector lanes; its blocks must be multiples of this.
LANES = 128


def targets_tpu() -> bool:
    """Whether the computation being traced targets TPU devices: the platform of the ambient mesh's devices
    (kept by abstract meshes, also inside shard_map), else of the default backend. Not `jax.default_backend()`
    alone: an ahead-of-time compile for a TPU topology runs on a CPU host."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
    platform = device.platform if device is not None else jax.default_backend()
    return platform == "tpu"


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
    interpret: run the kernel in Pallas interpret mode; None means "unless the target devices are TPUs"
        (`targets_tpu`).
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
        interpret = not targets_tpu()

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


# --- context parallelism: local queries against the whole sequence's keys and values -----------------------


def context_parallel_block_size(local_length: int, block_size: int) -> int:
    """The largest multiple of 128 that is <= block_size and divides the per-device query length."""
    choose_block_size(local_length, block_size)  # validates block_size
    if local_length % LANES:
        raise ValueError(f"context-parallel splash attention needs a per-device sequence length that is a multiple "
                         f"of {LANES} (the kernel's lane width), got {local_length}; make the sequence length a "
                         f"multiple of {LANES} x the sequence mesh axis size")
    block = min(block_size, local_length)
    while local_length % block:
        block -= LANES
    return block


class ZigZagCausalMask(splash_mask_lib._ComputableMask):  # the base of jax's lazy masks (CausalMask's too)
    """The causal mask with its query rows in zig-zag order: the sequence is cut into 2S halves-of-shards and
    query shard d holds halves d and 2S-1-d, so every shard gets one early and one late stretch of the causal
    triangle (equal work). Keys stay in natural order. Row p's natural position is computed from p with
    comparisons, additions and multiplications only (no vector integer division, which TPU kernels may lack), so
    the same function serves numpy (mask preprocessing) and the kernel (traced, per block)."""

    def __init__(self, sequence_length: int, shards: int):
        if sequence_length % (2 * shards):
            raise ValueError(f"a zig-zag layout needs the sequence ({sequence_length}) to split into 2 x {shards} "
                             f"equal parts")
        self.shards = shards
        local, half = sequence_length // shards, sequence_length // (2 * shards)

        def zigzag_causal(q_ids, kv_ids):
            shard = sum((q_ids >= boundary).astype(q_ids.dtype) for boundary in range(local, shards * local, local))
            within = q_ids - shard * local
            late = (within >= half).astype(q_ids.dtype)  # the shard's second stretch: natural half 2S-1-shard
            half_index = shard + late * (2 * shards - 1 - 2 * shard)
            return half_index * half + within - late * half >= kv_ids

        super().__init__(shape=(sequence_length, sequence_length), mask_function=zigzag_causal)

    def __eq__(self, other: object):
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.shape == other.shape and self.shards == other.shards

    def __hash__(self):
        return hash((type(self), self.shape, self.shards))


def zigzag_source(shards: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """ppermute pairs taking each shard's first and second half to the shard that attends it in zig-zag order.

    Natural half j (of 2S) belongs to shard j if j < S, else to shard 2S-1-j. Shard i holds halves 2i and 2i+1;
    the two halves a shard receives have opposite parity (they sum to 2S-1), so one ppermute moves all first
    halves and one all second halves."""
    owner = lambda j: j if j < shards else 2 * shards - 1 - j  # noqa: E731
    return [(i, owner(2 * i)) for i in range(shards)], [(i, owner(2 * i + 1)) for i in range(shards)]


def to_zigzag(x_bL, axis_name: str, shards: int):
    """Inside shard_map over `axis_name`: this shard's natural rows [b, L, ...] -> its zig-zag rows."""
    first_pairs, second_pairs = zigzag_source(shards)
    half = x_bL.shape[1] // 2
    from_even = jax.lax.ppermute(x_bL[:, :half], axis_name, first_pairs)  # a natural half with an even index
    from_odd = jax.lax.ppermute(x_bL[:, half:], axis_name, second_pairs)
    shard_is_even = jax.lax.axis_index(axis_name) % 2 == 0  # shard d's early half d is even iff d is
    return jnp.concatenate([jnp.where(shard_is_even, from_even, from_odd),
                            jnp.where(shard_is_even, from_odd, from_even)], axis=1)


def from_zigzag(y_bL, axis_name: str, shards: int):
    """The inverse of `to_zigzag`: zig-zag rows back to this shard's natural rows."""
    first_pairs, second_pairs = zigzag_source(shards)
    half = y_bL.shape[1] // 2
    shard_is_even = jax.lax.axis_index(axis_name) % 2 == 0
    early, late = y_bL[:, :half], y_bL[:, half:]
    even, odd = jnp.where(shard_is_even, early, late), jnp.where(shard_is_even, late, early)
    inverse = lambda pairs: [(b, a) for a, b in pairs]  # noqa: E731
    return jnp.concatenate([jax.lax.ppermute(even, axis_name, inverse(first_pairs)),
                            jax.lax.ppermute(odd, axis_name, inverse(second_pairs))], axis=1)


def context_parallel_kernel(num_heads: int, sequence_length: int, block: int, q_seq_shards: int,
                            interpret: bool, zigzag: bool = False):
    """A splash kernel for [num_heads, t / q_seq_shards] local queries against [t] keys, causal over the whole t
    (zigzag: the queries are in `ZigZagCausalMask` order, the keys in natural order).

    Its mask metadata has a query-block axis that `kernel.manual_sharding_spec` splits over the sequence mesh
    axes; the per-shard masks are then the causal mask's row blocks, i.e. causal with the shard's query offset.
    Not cached, for the reason `_kernel` gives.
    """
    if sequence_length % (block * q_seq_shards):
        raise ValueError(f"sequence length {sequence_length} must split into {q_seq_shards} shards of whole "
                         f"{block}-token blocks")
    mask, block_sizes = _mask_and_block_sizes(num_heads, sequence_length, block)
    if zigzag:
        mask = splash_lib.MultiHeadMask([ZigZagCausalMask(sequence_length, q_seq_shards)] * num_heads)
    return splash_lib.make_splash_mha(mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=q_seq_shards,
                                      interpret=interpret)


def local_query_attention(kernel, q_bthe, k_bske, v_bske, q_segment_ids_bt, kv_segment_ids_bs):
    """One device's share of context-parallel attention: its queries [b, L, h, e] against all keys [b, s, k, e].

    `kernel` is a `context_parallel_kernel` as seen inside shard_map (holding this shard's mask metadata).
    Segment ids are required on both sides (a document may begin on one device and continue on the next).
    """
    e = q_bthe.shape[-1]
    q_bthe = (q_bthe.astype(jnp.float32) * (1.0 / math.sqrt(e))).astype(q_bthe.dtype)
    k_bkse = k_bske.astype(q_bthe.dtype).transpose(0, 2, 1, 3)
    v_bkse = v_bske.astype(q_bthe.dtype).transpose(0, 2, 1, 3)

    def one_row(q_hte, k_kse, v_kse, q_segment_ids_t, kv_segment_ids_s):
        return kernel(q_hte, k_kse, v_kse, segment_ids=splash_lib.SegmentIds(q=q_segment_ids_t, kv=kv_segment_ids_s))

    out_bhte = jax.vmap(one_row)(q_bthe.transpose(0, 2, 1, 3), k_bkse, v_bkse, q_segment_ids_bt.astype(jnp.int32),
                                 kv_segment_ids_bs.astype(jnp.int32))
    return out_bhte.transpose(0, 2, 1, 3).astype(q_bthe.dtype)
