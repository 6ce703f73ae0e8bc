"""The block types of the published Qwen2.5-Coder GGUF (Q5_0, Q4_K, Q6_K besides Q8_0) kept packed: random
blocks expand to exactly what `gguf`'s own dequantisation gives, and the CPU kernel multiplies by those values."""

from __future__ import annotations

import gguf
import jax
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GGML

from qwencoder_jax.cpu_decode import packed
from qwencoder_jax.cpu_decode.packed import PackedWeight

# bytes per block and where its float16 fields sit (random bytes there could be inf/nan)
LAYOUT = {GGML.Q5_0: (32, 22, (0,)), GGML.Q4_K: (256, 144, (0, 2)), GGML.Q6_K: (256, 210, (208,)),
          GGML.Q8_0: (32, 34, (0,)), GGML.Q4_0: (32, 18, (0,)), GGML.Q4_1: (32, 20, (0, 2))}


def random_blocks(type_, n, k, seed):
    """Random bytes in the type's block layout, with finite float16 scales of a realistic size."""
    per, size, halves = LAYOUT[type_]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, k // per, size), dtype=np.uint8)
    for start in halves:
        values = (rng.standard_normal((n, k // per)) * 0.01).astype(np.float16)
        blocks[..., start:start + 2] = values.view(np.uint8).reshape(n, k // per, 2)
    return blocks.reshape(n, -1)


@pytest.mark.parametrize("type_", list(LAYOUT))
@pytest.mark.parametrize("n,k", [(5, 256), (9, 768)])
def test_random_blocks_expand_bit_exactly_and_multiply(type_, n, k):
    data = random_blocks(type_, n, k, seed=n + k + type_.value)
    weight = PackedWeight.from_gguf_blocks(data, type_.name, (n, k))
    expected = np.asarray(gguf.quants.dequantize(data, type_), np.float32).reshape(n, k)
    np.testing.assert_array_equal(np.asarray(packed.dequantize(weight)), expected)  # bit for bit
    x = np.random.default_rng(1).standard_normal((3, k)).astype(np.float32)
    y = np.asarray(jax.jit(packed.matmul)(x, weight))
    reference = x.astype(np.float64) @ expected.T.astype(np.float64)
    np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def test_q6_k_keeps_a_scale_per_16_weights():
    weight = PackedWeight.from_gguf_blocks(random_blocks(GGML.Q6_K, 2, 256, 0), "Q6_K", (2, 256))
    assert weight.bits == 8 and weight.block == 16 and weight.scale.shape == (2, 16)
    q5 = PackedWeight.from_gguf_blocks(random_blocks(GGML.Q5_0, 2, 64, 0), "Q5_0", (2, 64))
    assert q5.bits == 8 and q5.block == 32 and int(np.abs(q5.codes.astype(int) + 16).max()) <= 31


def test_k_quants_need_whole_super_blocks():
    with pytest.raises(ValueError, match="whole blocks of 256"):
        PackedWeight.from_gguf_blocks(np.zeros((2, 144), np.uint8), "Q4_K", (2, 128))
    with pytest.raises(ValueError, match=r"210 bytes are no Q6_K tensor \[1, 512\] \(2 blocks of 210 bytes\)"):
        PackedWeight.from_gguf_blocks(np.zeros((1, 210), np.uint8), "Q6_K", (1, 512))
