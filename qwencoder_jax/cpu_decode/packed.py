"""Block-quantised weights kept packed for decoding: GGUF's Q4_0 / Q4_1 / Q8_0 blocks, and their matmul.

    weight = PackedWeight.from_gguf_blocks(tensor.data, "Q4_1", shape=(n, k))   # or PackedWeight.quantize(w_nk, 4)
    y_mn = packed.matmul(x_mk, weight)                                          # x @ dequantize(weight).T

A PackedWeight is a matrix w [n, k] (a Hugging Face weight's [out, in] layout, or an embedding table [v, d])
cut into blocks of 32 along k: w[c, 32 b + j] = scale[c, b] * code + offset[c, b], with

    codes   uint8 [n, k/2]  4-bit codes 0..15, byte j of a block holding element j in its low nibble and element
                            j + 16 in its high one (GGUF's order), or int8 [n, k]: 8-bit codes -128..127
    scale   float32 [n, k/32], offset float32 [n, k/32]: float16 values (as GGUF stores them) widened exactly.

Q4_1 is (scale, offset) = (d, m); Q4_0 is d * (q - 8), so offset = -8 d; Q8_0 is d * q, offset 0. Because a
float16 scale times a code of at most 8 bits is exact in float32, expanding a weight in float32 gives the very
values `gguf`'s dequantisation (and so transformers' GGUF loader) gives, bit for bit. A decode step reads every
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
GGUF_TYPES = ("Q4_0", "Q4_1", "Q8_0")  # the block types kept packed; others are dequantised to float on load


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
        blocks = (n, k // BLOCK)
        for field in ("scale", "offset"):
            array = getattr(self, field)
            if k % BLOCK or tuple(array.shape) != blocks or array.dtype != np.float32:
                raise ValueError(f"{name}: {field} must be float32 {blocks} for a [{n}, {k}] weight in blocks of "
                                 f"{BLOCK}, got {array.dtype} {tuple(array.shape)}")
        return self

    @classmethod
    def from_gguf_blocks(cls, data: np.ndarray, type_name: str, shape: tuple[int, int]) -> "PackedWeight":
        """From a GGUF tensor's raw bytes (`GGUFReader` tensor.data) of a Q4_0 / Q4_1 / Q8_0 tensor [n, k]."""
        n, k = shape
        if type_name not in GGUF_TYPES:
            raise ValueError(f"GGUF type {type_name} is not kept packed (only {GGUF_TYPES})")
        if k % BLOCK:
            raise ValueError(f"a {type_name} tensor [{n}, {k}] must have rows in whole blocks of {BLOCK}")
        head = 4 if type_name == "Q4_1" else 2
        body = BLOCK // 2 if type_name.startswith("Q4") else BLOCK
        data = np.ascontiguousarray(data, dtype=np.uint8)
        if data.size != n * (k // BLOCK) * (head + body):
            raise ValueError(f"{data.size} bytes are no {type_name} tensor [{n}, {k}] "
                             f"({n * (k // BLOCK)} blocks of {head + body} bytes)")
        blocks = data.reshape(n, k // BLOCK, head + body)
        d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        if type_name == "Q4_1":
            offset = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        elif type_name == "Q4_0":
            offset = -8.0 * d
        else:
            offset = np.zeros_like(d)
        codes = blocks[..., head:].reshape(n, -1)
        if type_name == "Q8_0":
            codes = codes.view(np.int8)
        return cls(np.ascontiguousarray(codes), d, offset.astype(np.float32)).check(f"GGUF {type_name} tensor")

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


def dequantize(weight: PackedWeight) -> jax.Array:
    """The float32 matrix [n, k] (traceable; the same values as GGUF's dequantisation)."""
    n, k = weight.shape
    codes = jnp.asarray(weight.codes)
    if weight.bits == 4:
        pairs = codes.reshape(n, k // BLOCK, BLOCK // 2)
        codes = jnp.concatenate([pairs & 15, pairs >> 4], axis=-1)
    values = codes.reshape(n, k // BLOCK, BLOCK).astype(jnp.float32)
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
