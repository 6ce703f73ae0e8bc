"""Packed (block-quantised) weights: GGUF's blocks read bit-exactly, the CPU kernel equal to float64 numpy on
awkward shapes, the decoder's steps multiplying by them with the same tokens as the float weights they stand for,
checkpoints keeping them, and errors that name the weight."""

from __future__ import annotations

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GGML

from qwencoder_jax import assets, checkpoints
from qwencoder_jax.model.hf_names import matrix_names
from qwencoder_jax.convert.gguf import GGUFFile, read_packed, uninterleave_rows
from qwencoder_jax.cpu_decode import few_rows, packed
from qwencoder_jax.cpu_decode.packed import PackedWeight
from qwencoder_jax.cpu_decode import packed_weights
from qwencoder_jax.model import ModelConfig, Transformer, init_params, kv_cache


def float64_product(x, weight):
    return x.astype(np.float64) @ np.asarray(packed.dequantize(weight), np.float64).T


@pytest.mark.parametrize("type_", [GGML.Q4_0, GGML.Q4_1, GGML.Q8_0])
def test_gguf_blocks_expand_to_exactly_what_gguf_dequantises(type_):
    w = np.random.default_rng(0).standard_normal((6, 96)).astype(np.float32) * 0.05
    blocks = gguf.quants.quantize(w, type_)
    weight = PackedWeight.from_gguf_blocks(blocks, type_.name, (6, 96))
    expected = gguf.quants.dequantize(blocks, type_).reshape(6, 96).astype(np.float32)
    assert weight.bits == (8 if type_ == GGML.Q8_0 else 4) and weight.shape == (6, 96)
    np.testing.assert_array_equal(np.asarray(packed.dequantize(weight)), expected)  # bit for bit
    # and the kernel multiplies by those very values: float64 products of them, up to float32 summation
    x = np.random.default_rng(1).standard_normal((3, 96)).astype(np.float32)
    y = np.asarray(jax.jit(packed.matmul)(x, weight))
    np.testing.assert_allclose(y, x.astype(np.float64) @ expected.T.astype(np.float64), rtol=1e-5, atol=1e-5)


# (m, k, n): one row, the 4-row tile and beyond, more than MAX_ROWS; n not a multiple of the 4-row group, n
# smaller than the number of threads; k one block and several.
SHAPES = [(1, 576, 1536), (3, 96, 7), (4, 32, 5), (8, 576, 193), (17, 128, 9), (5, 1536, 576), (2, 64, 1)]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_kernel_equals_float64_numpy(m, k, n, bits):
    rng = np.random.default_rng(m * 1000 + k + n + bits)
    weight = PackedWeight.quantize(rng.standard_normal((n, k)).astype(np.float32), bits)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = np.asarray(jax.jit(packed.matmul)(x, weight))
    assert y.shape == (m, n)
    np.testing.assert_allclose(y, float64_product(x, weight), rtol=2e-5, atol=2e-5 * np.sqrt(k))


def test_quantize_stays_within_half_a_step():
    w = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    for bits, levels in ((4, 15), (8, 254)):
        weight = PackedWeight.quantize(w, bits)
        blocks = w.reshape(8, 2, 32)
        step = (blocks.max(-1) - blocks.min(-1)) / levels if bits == 4 else np.abs(blocks).max(-1) / 127
        error = np.abs(np.asarray(packed.dequantize(weight)).reshape(8, 2, 32) - blocks)
        assert (error <= step[..., None] * 0.5 + 1e-2 * step[..., None] + 1e-6).all()


def test_without_the_kernel_the_product_is_the_same(monkeypatch, tmp_path):
    weight = PackedWeight.quantize(np.random.default_rng(3).standard_normal((40, 64)).astype(np.float32), 4)
    x = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    few_rows.available.cache_clear()
    try:
        with pytest.warns(UserWarning, match="kernel unavailable"):
            lowered = jax.jit(packed.matmul).lower(x, weight).as_text()
        assert packed.TARGET not in lowered
        np.testing.assert_allclose(np.asarray(jax.jit(packed.matmul)(x, weight)), float64_product(x, weight),
                                   rtol=1e-5, atol=1e-5)
    finally:
        few_rows.available.cache_clear()


def test_bad_packed_weights_are_named():
    good = PackedWeight.quantize(np.zeros((4, 64), np.float32), 4)
    with pytest.raises(ValueError, match="w1: codes must be a 2-D uint8"):
        PackedWeight(good.codes.astype(np.int16), good.scale, good.offset).check("w1")
    with pytest.raises(ValueError, match=r"w2: scale must be float32 \(4, 2\)"):
        PackedWeight(good.codes, good.scale[:, :1], good.offset).check("w2")
    with pytest.raises(ValueError, match="whole blocks of 32"):
        PackedWeight.quantize(np.zeros((4, 40), np.float32), 4)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        PackedWeight.quantize(np.zeros((4, 64), np.float32), 2)
    with pytest.raises(ValueError, match=r"x must be \[m, 64\]"):
        packed.matmul(jnp.ones((2, 32)), good)
    with pytest.raises(ValueError, match=r"120 bytes are no Q4_1 tensor \[4, 64\] \(8 blocks of 20 bytes\)"):
        PackedWeight.from_gguf_blocks(np.zeros((4, 30), np.uint8), "Q4_1", (4, 64))
    with pytest.raises(ValueError, match="not kept packed"):
        PackedWeight.from_gguf_blocks(np.zeros((4, 40), np.uint8), "Q5_K", (4, 64))


# --- in the model ------------------------------------------------------------------------------------------

CONFIG = ModelConfig(vocab_size=320, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                     intermediate_size=128, tie_embeddings=True, scan_layers=False, max_position_embeddings=128)


def packed_model(config: ModelConfig, seed: int = 3):
    """Random params, every projection and the head quantised (4-bit, the head 8-bit as GGUF files do), and the
    float params replaced by exactly the values the packed weights stand for."""
    params = jax.tree.map(lambda p: np.asarray(p * 4.0 if p.ndim >= 2 else p),
                          init_params(config, jax.random.key(seed)))
    weights = {}
    for name, (path, (n, k)) in matrix_names(config).items():
        module = params
        for part in path:
            module = module[part]
        key = "embedding" if path == ("embed",) else "kernel"
        float_value = module[key]
        # our kernels are [in..., out...] (the embedding is [v, d] already): to HF's [out, in] and back
        as_hf = float_value if key == "embedding" else float_value.reshape(-1, n).T
        weight = PackedWeight.quantize(as_hf, 8 if len(path) == 1 else 4)
        weights[name] = weight
        exact = np.asarray(packed.dequantize(weight))
        module[key] = exact if key == "embedding" else exact.T.reshape(float_value.shape)
    return Transformer(config), params, weights


@pytest.mark.parametrize("tie_embeddings,attention_bias", [(True, False), (False, True)])
def test_decoder_steps_multiply_by_packed_weights_and_decode_the_same_tokens(tie_embeddings, attention_bias):
    config = CONFIG.replace(tie_embeddings=tie_embeddings, attention_bias=attention_bias)
    model, params, weights = packed_model(config)
    if attention_bias:  # biases are added after the packed product
        params = jax.tree_util.tree_map_with_path(
            lambda path, p: p + 0.5 if path[-1].key == "bias" else p, params)
    batch, prompt = 3, 16
    ids = np.asarray(jax.random.randint(jax.random.key(4), (batch, prompt), 0, config.vocab_size), np.int32)
    args = (params, ids, np.full((batch,), prompt, np.int32), np.ones((batch,), bool),
            np.arange(batch, dtype=np.int32), np.int32(24), np.uint32(0), np.float32(0.0), np.int32(0),
            np.float32(1.0))
    decode = kv_cache.make_decoder(model, 48, (config.vocab_size,), step_scope=packed_weights.use)
    lowered = decode.lower(*args, packed=weights).as_text()
    # every projection of every layer and the head, once per decode step; no float kernel left in the steps
    assert lowered.count(packed.TARGET) == 7 * config.num_layers + 1
    assert lowered.count(few_rows.TARGET) == 0
    tokens = np.asarray(decode(*args, packed=weights)[0])
    np.testing.assert_array_equal(tokens, np.asarray(decode(*args)[0]))
    assert (tokens[:, :24] >= 0).all()


def test_packed_weights_must_fit_the_model():
    model, params, weights = packed_model(CONFIG)
    with pytest.raises(ValueError, match=r"'model.layers.7.mlp.up_proj.weight' is not a projection"):
        packed_weights.check(CONFIG, {"model.layers.7.mlp.up_proj.weight": weights["model.layers.0.mlp.up_proj.weight"]})
    wrong = {"model.layers.0.mlp.up_proj.weight": weights["model.layers.0.mlp.down_proj.weight"]}
    with pytest.raises(ValueError, match=r"up_proj.weight' stands for a \[64, 128\] matrix; this model's is "
                                         r"\[128, 64\]"):
        packed_weights.check(CONFIG, wrong)
    with pytest.raises(ValueError, match="unrolled layer layout"):
        with packed_weights.use(CONFIG.replace(scan_layers=True), weights):
            pass


def test_checkpoints_keep_packed_weights(tmp_path):
    model, params, weights = packed_model(CONFIG)
    from qwencoder_jax.checkpoints import stack_layers

    directory = checkpoints.save_model(tmp_path / "ckpt", CONFIG.replace(scan_layers=True),
                                       stack_layers(params, CONFIG.num_layers), packed=weights)
    restored = packed_weights.load(directory)
    assert set(restored) == set(weights)
    for name, weight in weights.items():
        for field in ("codes", "scale", "offset"):
            np.testing.assert_array_equal(np.asarray(getattr(restored[name], field)), getattr(weight, field))
    plain = checkpoints.save_model(tmp_path / "plain", CONFIG.replace(scan_layers=True),
                                   stack_layers(params, CONFIG.num_layers))
    assert packed_weights.load(plain) is None


def test_smollm2_gguf_packed_weights_are_its_float_weights():
    """The real file: Q4_1 projections and a Q8_0 tied head, Q/K rows of a `llama` file put back in order."""
    path = assets.smollm2_gguf()
    weights = read_packed(path)
    assert len(weights) == 30 * 7 + 1
    assert weights["model.embed_tokens.weight"].bits == 8 and weights["model.layers.0.mlp.up_proj.weight"].bits == 4
    file = GGUFFile(path)
    for name, gguf_name, heads in (("model.layers.5.self_attn.q_proj.weight", "blk.5.attn_q.weight", 9),
                                   ("model.layers.5.self_attn.k_proj.weight", "blk.5.attn_k.weight", 3),
                                   ("model.layers.5.mlp.down_proj.weight", "blk.5.ffn_down.weight", None),
                                   ("model.embed_tokens.weight", "token_embd.weight", None)):
        expected = file.dequantised(gguf_name)
        if heads:
            expected = uninterleave_rows(expected, heads)
        np.testing.assert_array_equal(np.asarray(packed.dequantize(weights[name])), expected)
    total = sum(w.nbytes for w in weights.values())
    assert total < 4 * 135e6 / 4  # under a quarter of the float32 bytes


@pytest.mark.parametrize("vectorised", [True, False])
def test_generator_defaults_to_packed_weights_only_where_the_kernel_is_vectorised(tmp_path, monkeypatch, capsys,
                                                                                 vectorised):
    from qwencoder_jax.checkpoints import stack_layers
    from qwencoder_jax.eval import generate

    model, params, weights = packed_model(CONFIG)
    directory = checkpoints.save_model(tmp_path / "ckpt", CONFIG.replace(scan_layers=True),
                                       stack_layers(params, CONFIG.num_layers), packed=weights)
    monkeypatch.setattr(few_rows, "packed_kernel_is_fast", lambda: vectorised)
    chosen = generate._load_packed(directory, None)
    assert (chosen is not None) == vectorised
    said = capsys.readouterr().err
    assert ("not vectorised on this CPU" in said) == (not vectorised)
    assert set(generate._load_packed(directory, True)) == set(weights)  # True forces them
    assert generate._load_packed(directory, False) is None
    plain = checkpoints.save_model(tmp_path / "plain", CONFIG.replace(scan_layers=True),
                                   stack_layers(params, CONFIG.num_layers))
    assert generate._load_packed(plain, None) is None and generate._load_packed(plain, True) is None
    assert "packed" not in capsys.readouterr().err  # nothing to say of a checkpoint without packed weights


@pytest.mark.parametrize("flags,fast", [("fpu sse2 avx avx2 fma", False), ("fpu avx2 avx512f avx512bw", True),
                                        ("fpu avx2 avx512fp16", False), ("fp asimd", False)])
def test_the_packed_kernel_counts_as_fast_with_avx512f_only(monkeypatch, flags, fast):
    monkeypatch.setattr(few_rows, "_cpu_flags", lambda: flags)
    assert few_rows.packed_kernel_is_fast() is fast
