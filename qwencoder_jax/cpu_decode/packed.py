"""Block-quantised weights kept packed for decoding: GGUF's Q4_0 / Q4_1 / Q8_0 / Q5_0 / Q4_K / Q6_K blocks, and
their matmul.

    weight = PackedWeight.from_gguf_blocks(tensor.data, "Q4_1", shape=(n, k))   # or PackedWeight.quantize(w_nk, 4)
    y_mn = packed.matmul(x_mk, weight)                                          # x @ dequantize(weight).T

A PackedWeight is a matrix w [n, k] (a Hugging Face weight's [out, in] layout, or an embedding table [v, d])
cut into blocks of B along k: w[c, B b + j] = scale[c, b] * code + offset[c, b], with

    codes   uint8 [n, k/2]  4-bit codes 0..15, byte j of a 32-block holding element j in its low nibble and
                            element j + 16 in its high one (GGUF's Q4_0 order), or int8 [n, k]: 8-bit codes
    scale   float32 [n, k/B], offset float32 [n, k/B]; B = 32, or 16 for 8-bit codes (Q6_K's sub-blocks)

Q4_1 is (scale, offset) = (d, m); Q4_0 is d * (q - 8), so offset = -8 d; Q8_0 is d * q, offset 0; Q5_0 is
d * (q - 16) with 5-bit q, kept as 8-bit codes q - 16; Q4_K is (d sc) q - (dmin m) per 32-block of a 256-block
(6-bit sc and m), its codes reordered to the Q4_0 nibble order; Q6_K is (d sc) (q - 32) per 16-block, 8-bit
codes q - 32. Every scale is a float16 value times an integer of at most 8 bits (exact in float32), and every
scale times code is exact in float32 too, so expanding a weight in float32 gives the very values `gguf`'s
dequantisation (and so transformers' GGUF loader) gives, bit for bit. A decode step reads every
weight once and is bound by memory reads, so reading 4.5-8.5 bits per weight instead of 32 is the speed-up; on
CPU the kernel (few_rows_matmul.cc) expands four rows at a time into L1 and multiplies in float32, elsewhere the
weight is dequantised and XLA multiplies.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from qwencoder_jax.cpu_decode import few_rows

BLOCK = 32
TARGET = "qwencoder_packed_matmul"
# the block types kept packed; others are dequantised to float on load
GGUF_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q4_K", "Q6_K")
SUPER_BLOCK = 256  # the K-quants' block


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedWeight:
    codes: jax.Array | np.ndarray
    scale: jax.Array | np.ndarray
    offset: jax.Array | np.ndarray

    @property
    def bits(self) -> int:
        return 4 if self.codes.dtype == np.uint8 else 8

    @property
    def block(self) -> int:
        """Elements per (scale, offset) pair: 32, or 16 (8-bit codes of Q6_K)."""
        return self.shape[1] // max(1, self.scale.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """(n, k) of the float matrix it stands for."""
        n, width = self.codes.shape
        return n, width * (2 if self.bits == 4 else 1)

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in (self.codes, self.scale, self.offset))

    def check(self, name: str = "packed weight") -> "PackedWeight":
        """Raises a ValueError naming `name` unless the arrays have the layout above."""
        if self.codes.ndim != 2 or self.codes.dtype not in (np.uint8, np.int8):
            raise ValueError(f"{name}: codes must be a 2-D uint8 (4-bit) or int8 (8-bit) array, got "
                             f"{self.codes.dtype} {tuple(self.codes.shape)}")
        n, k = self.shape
        block = BLOCK // 2 if self.bits == 8 and self.scale.ndim == 2 and self.scale.shape[1] * BLOCK == 2 * k \
            else BLOCK
        blocks = (n, k // block)
        for field in ("scale", "offset"):
            array = getattr(self, field)
            if k % BLOCK or tuple(array.shape) != blocks or array.dtype != np.float32:
                raise ValueError(f"{name}: {field} must be float32 {blocks} for a [{n}, {k}] weight in blocks of "
                                 f"{block}, got {array.dtype} {tuple(array.shape)}")
        return self

    @classmethod
    def from_gguf_blocks(cls, data: np.ndarray, type_name: str, shape: tuple[int, int]) -> "PackedWeight":
        """From a GGUF tensor's raw bytes (`GGUFReader` tensor.data) of a tensor [n, k] of one of GGUF_TYPES."""
        n, k = shape
        if type_name not in GGUF_TYPES:
            raise ValueError(f"GGUF type {type_name} is not kept packed (only {GGUF_TYPES})")
        block = SUPER_BLOCK if type_name.endswith("_K") else BLOCK
        if k % block:
            raise ValueError(f"a {type_name} tensor [{n}, {k}] must have rows in whole blocks of {block}")
        block_bytes = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34, "Q5_0": 22, "Q4_K": 144, "Q6_K": 210}[type_name]
        data = np.ascontiguousarray(data, dtype=np.uint8)
        if data.size != n * (k // block) * block_bytes:
            raise ValueError(f"{data.size} bytes are no {type_name} tensor [{n}, {k}] "
                             f"({n * (k // block)} blocks of {block_bytes} bytes)")
        blocks = data.reshape(n, k // block, block_bytes)
        codes, scale, offset = _UNPACK[type_name](blocks)
        return cls(np.ascontiguousarray(codes.reshape(n, -1)), np.ascontiguousarray(scale.reshape(n, -1)),
                   np.ascontiguousarray(offset.reshape(n, -1).astype(np.float32))).check(f"GGUF {type_name} tensor")

    @classmethod
    def quantize(cls, w_nk: np.ndarray, bits: int) -> "PackedWeight":
        """Quantises a float matrix (lossy): 4 bits as Q4_1 (per block min and step), 8 bits as Q8_0 (symmetric),
        scales rounded to float16 as GGUF stores them."""
        w = np.asarray(w_nk, np.float32)
        n, k = w.shape
        if k % BLOCK:
            raise ValueError(f"quantize: the rows of a [{n}, {k}] matrix must be whole blocks of {BLOCK}")
        blocks = w.reshape(n, k // BLOCK, BLOCK)
        if bits == 4:
            low, high = blocks.min(-1), blocks.max(-1)
            d = ((high - low) / 15).astype(np.float16).astype(np.float32)
            m = low.astype(np.float16).astype(np.float32)
            q = np.clip(np.rint((blocks - m[..., None]) / np.where(d == 0, 1, d)[..., None]), 0, 15).astype(np.uint8)
            codes = q[..., :16] | (q[..., 16:] << 4)
            return cls(codes.reshape(n, k // 2), d, m)
        if bits == 8:
            d = (np.abs(blocks).max(-1) / 127).astype(np.float16).astype(np.float32)
            q = np.clip(np.rint(blocks / np.where(d == 0, 1, d)[..., None]), -128, 127).astype(np.int8)
            return cls(q.reshape(n, k), d, np.zeros_like(d))
        raise ValueError(f"quantize: bits must be 4 or 8, got {bits}")


def _float16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[..., start:start + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _nibbles_to_q4_0_order(q: np.ndarray) -> np.ndarray:
    """4-bit values [..., 32] -> 16 bytes [..., 16], byte j = element j | element j + 16 << 4."""
    q = q.astype(np.uint8)
    return q[..., :16] | (q[..., 16:] << 4)


def _unpack_q4_0(blocks):
    d = _float16(blocks, 0)
    return blocks[..., 2:], d, -8.0 * d


def _unpack_q4_1(blocks):
    return blocks[..., 4:], _float16(blocks, 0), _float16(blocks, 2)


def _unpack_q8_0(blocks):
    d = _float16(blocks, 0)
    return blocks[..., 2:].view(np.int8), d, np.zeros_like(d)


def _unpack_q5_0(blocks):
    # d, then 32 high bits (bit j of a little-endian uint32 = element j), then 16 bytes of low nibbles
    d = _float16(blocks, 0)
    high = blocks[..., 2:6].copy().view(np.uint32)[..., 0]
    high_bits = ((high[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    low = blocks[..., 6:]
    q = np.concatenate([low & 15, low >> 4], axis=-1) | (high_bits << 4)
    return (q.astype(np.int16) - 16).astype(np.int8), d, np.zeros_like(d)


def _unpack_q4_k(blocks):
    # per 256: d, dmin, 12 bytes of 6-bit (scale, min) for 8 sub-blocks, 128 bytes: 4 x 32 bytes whose low
    # nibbles are sub-block 2g and high nibbles sub-block 2g + 1
    import gguf

    d, dmin = _float16(blocks, 0), _float16(blocks, 2)
    rows, supers = blocks.shape[:2]
    sc, m = gguf.quants.Q4_K.get_scale_min(blocks[..., 4:16].reshape(-1, 12))
    sc, m = sc.reshape(rows, supers, 8).astype(np.float32), m.reshape(rows, supers, 8).astype(np.float32)
    qs = blocks[..., 16:].reshape(rows, supers, 4, 1, 32)
    q = np.concatenate([qs & 15, qs >> 4], axis=-2).reshape(rows, supers, 8, 32)
    return _nibbles_to_q4_0_order(q), d[..., None] * sc, -(dmin[..., None] * m)


def _unpack_q6_k(blocks):
    # per 256: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 sub-block scales, d
    rows, supers = blocks.shape[:2]
    ql = blocks[..., :128].reshape(rows, supers, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(2, 1)
    ql = (ql & 15).reshape(rows, supers, 8, 32)
    qh = blocks[..., 128:192].reshape(rows, supers, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    qh = (qh & 3).reshape(rows, supers, 8, 32)
    q = (ql | (qh << 4)).astype(np.int16) - 32
    scales = blocks[..., 192:208].copy().view(np.int8).astype(np.float32)
    d = _float16(blocks, 208)
    scale = d[..., None] * scales
    return q.astype(np.int8), scale, np.zeros_like(scale)


_UNPACK = {"Q4_0": _unpack_q4_0, "Q4_1": _unpack_q4_1, "Q8_0": _unpack_q8_0, "Q5_0": _unpack_q5_0,
           "Q4_K": _unpack_q4_k, "Q6_K": _unpack_q6_k}


def dequantize(weight: PackedWeight) -> jax.Array:
    """The float32 matrix [n, k] (traceable; the same values as GGUF's dequantisation)."""
    n, k = weight.shape
    block = weight.block
    codes = jnp.asarray(weight.codes)
    if weight.bits == 4:
        pairs = codes.reshape(n, k // BLOCK, BLOCK // 2)
        codes = jnp.concatenate([pairs & 15, pairs >> 4], axis=-1)
    values = codes.reshape(n, k // block, block).astype(jnp.float32)
    return (values * weight.scale[..., None] + weight.offset[..., None]).reshape(n, k)


def _kernel(x_mk, weight: PackedWeight):
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x_mk.shape[0], weight.shape[0]), jnp.float32))
    return call(x_mk, weight.codes, weight.scale, weight.offset)


def matmul(x_mk: jax.Array, weight: PackedWeight) -> jax.Array:
    """float32 x [m, k] @ w.T -> [m, n]: the CPU kernel where it can be built, else dequantise + XLA's dot."""
    n, k = weight.shape
    if x_mk.ndim != 2 or x_mk.shape[1] != k:
        raise ValueError(f"packed matmul: x must be [m, {k}] for a [{n}, {k}] weight, got {tuple(x_mk.shape)}")
    x_mk = x_mk.astype(jnp.float32)

    def xla(x_mk, weight):
        return jnp.dot(x_mk, dequantize(weight).T, preferred_element_type=jnp.float32)

    if jax.default_backend() != "cpu" or not few_rows.available():
        return xla(x_mk, weight)
    return jax.lax.platform_dependent(x_mk, weight, cpu=_kernel, default=xla)
