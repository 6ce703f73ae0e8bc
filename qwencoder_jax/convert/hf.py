"""Hugging Face Qwen2 (and Llama) checkpoint directories <-> qwencoder_jax orbax checkpoints.

    hf_to_orbax("Qwen2.5-Coder-0.5B/", "ckpt/")       # config.json + model.safetensors (or an index + shards)
    orbax_to_hf("ckpt/", "exported/")                  # config.json in the published Qwen2 layout + safetensors

config.json is read in both layouts found in the wild: the published one (top-level `rope_theta`, `rope_scaling`
null or {"type": "yarn", ...}) and the one current transformers writes (`rope_parameters` holding `rope_theta`
and `rope_type`). Tensors keep their stored dtype in the orbax checkpoint, so HF -> orbax -> HF is bitwise exact;
`qwencoder_jax.load` casts to the config's param_dtype.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from qwencoder_jax import assets, checkpoints
from qwencoder_jax.convert.common import ConversionError, check_output_dir, hf_from_params, params_from_hf
from qwencoder_jax.model.config import QWEN_VOCAB_SIZE, ModelConfig, YarnScaling
from qwencoder_jax.model.hf_names import expected_hf_names

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = 5 * 1000**3  # what transformers wrote for years; published Qwen shards are ~4 GB

# architectures entry -> model_type; Llama is a Qwen2 block whose q/k/v carry no bias (attention_bias: false).
ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
# Tensors some writers add that carry nothing we need (older Llama files saved the RoPE table).
_IGNORED_TENSORS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


# --- config.json --------------------------------------------------------------------------------------------


def _family(values: Mapping[str, Any], source: str) -> str:
    architectures = values.get("architectures") or []
    model_type = values.get("model_type")
    supported = f"supported: {sorted(ARCHITECTURES)} (model_type {sorted(set(ARCHITECTURES.values()))})"
    if architectures:
        if len(architectures) != 1 or architectures[0] not in ARCHITECTURES:
            raise ConversionError(f"{source}: architectures {architectures} is not a model this converter reads; "
                                  f"{supported}")
        family = ARCHITECTURES[architectures[0]]
        if model_type is not None and model_type != family:
            raise ConversionError(f"{source}: architectures {architectures} disagrees with model_type "
                                  f"{model_type!r}; fix one of them")
        return family
    if model_type in ARCHITECTURES.values():
        return model_type
    raise ConversionError(f"{source}: neither architectures nor model_type names a supported model "
                          f"(model_type={model_type!r}); {supported}")


def _yarn_from_hf(rope: Mapping[str, Any], max_positions: int, source: str) -> YarnScaling:
    original = rope.get("original_max_position_embeddings") or max_positions
    factor = rope.get("factor")
    if factor is None:  # transformers' rule for files that give only the two lengths
        factor = max_positions / original
    attention_factor = rope.get("attention_factor")
    mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
    if attention_factor is None and mscale and mscale_all_dim and factor > 1:
        # DeepSeek-style ratio of two magnitude corrections; folded into one number here.
        attention_factor = (0.1 * mscale * math.log(factor) + 1) / (0.1 * mscale_all_dim * math.log(factor) + 1)
    try:
        return YarnScaling(factor=float(factor), original_max_position_embeddings=int(original),
                           beta_fast=float(rope.get("beta_fast") or 32.0),
                           beta_slow=float(rope.get("beta_slow") or 1.0),
                           attention_factor=None if attention_factor is None else float(attention_factor),
                           truncate=bool(rope.get("truncate", True)))
    except ValueError as error:
        raise ConversionError(f"{source}: bad YaRN rope scaling {dict(rope)}: {error}") from None


def _rope_from_hf(values: Mapping[str, Any], max_positions: int, source: str) -> tuple[float, YarnScaling | None]:
    parameters = values.get("rope_parameters") or {}
    if parameters and all(isinstance(v, Mapping) for v in parameters.values()):
        # Nested per layer type (transformers writes this for models mixing attention kinds): all must agree.
        distinct = {json.dumps(v, sort_keys=True) for v in parameters.values()}
        if len(distinct) != 1:
            raise ConversionError(f"{source}: rope_parameters differ between layer types {sorted(parameters)}; "
                                  "a Qwen2 model uses one RoPE for every layer")
        parameters = next(iter(parameters.values()))
    # The published layout has top-level rope_theta and rope_scaling (null when unscaled). When a file has both
    # forms, rope_scaling wins as in transformers: that is what a user adds to enable YaRN, as Qwen's README says.
    rope = values.get("rope_scaling") or parameters
    theta = next((t for t in (rope.get("rope_theta"), values.get("rope_theta"), parameters.get("rope_theta"))
                  if t is not None), 10_000.0)  # transformers' default for Qwen2 and Llama
    theta = float(theta)
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConversionError(f"{source}: partial_rotary_factor={rope['partial_rotary_factor']} is not supported; "
                              "RoPE must rotate the whole head dimension")
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type == "default":
        return theta, None
    if rope_type == "yarn":
        return theta, _yarn_from_hf(rope, max_positions, source)
    raise ConversionError(f"{source}: rope scaling type {rope_type!r} is not supported; only unscaled RoPE "
                          "('default') and 'yarn' are implemented")


def _required(values: Mapping[str, Any], key: str, source: str) -> Any:
    if values.get(key) is None:
        raise ConversionError(f"{source}: required field {key!r} is missing")
    return values[key]


def model_config_from_hf(values: Mapping[str, Any], source: str = CONFIG_FILE) -> ModelConfig:
    """A ModelConfig from the contents of a Qwen2/Llama config.json; `source` names the file in errors."""
    family = _family(values, source)
    hidden = int(_required(values, "hidden_size", source))
    heads = int(_required(values, "num_attention_heads", source))
    kv_heads = int(values.get("num_key_value_heads") or heads)
    head_dim = values.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConversionError(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads "
                                  f"{heads} and no head_dim is given")
        head_dim = hidden // heads
    if values.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{source}: hidden_act={values['hidden_act']!r} is not supported; Qwen2 uses 'silu'")
    if values.get("use_sliding_window"):
        raise ConversionError(f"{source}: use_sliding_window is true, but sliding-window attention is not "
                              "implemented here; set it to false if the model was trained with full attention")
    layer_types = values.get("layer_types") or []
    if any(kind != "full_attention" for kind in layer_types):
        raise ConversionError(f"{source}: layer_types {sorted(set(layer_types))} asks for attention other than "
                              "'full_attention', which is not implemented here")
    if family == "qwen2":
        attention_bias = True
    else:
        attention_bias = bool(values.get("attention_bias", False))
        if values.get("mlp_bias"):
            raise ConversionError(f"{source}: mlp_bias is true; MLP biases are not supported")
    max_positions = int(values.get("max_position_embeddings") or 32_768)
    theta, yarn = _rope_from_hf(values, max_positions, source)
    try:
        return ModelConfig(
            vocab_size=int(_required(values, "vocab_size", source)), hidden_size=hidden,
            num_layers=int(_required(values, "num_hidden_layers", source)), num_heads=heads,
            num_kv_heads=kv_heads, head_dim=int(head_dim),
            intermediate_size=int(_required(values, "intermediate_size", source)),
            tie_embeddings=bool(values.get("tie_word_embeddings", False)), rope_theta=theta, yarn=yarn,
            rms_norm_eps=float(values.get("rms_norm_eps") or 1e-6), attention_bias=attention_bias,
            max_position_embeddings=max_positions)
    except ValueError as error:
        raise ConversionError(f"{source}: {error}") from None


def hf_config_from_model(config: ModelConfig, dtype: str) -> dict[str, Any]:
    """config.json contents in the published Qwen2 layout (a Llama one for models without q/k/v bias)."""
    rope_scaling = None
    if config.yarn is not None:
        yarn = config.yarn
        rope_scaling = {"type": "yarn", "factor": yarn.factor,
                        "original_max_position_embeddings": yarn.original_max_position_embeddings}
        if (yarn.beta_fast, yarn.beta_slow) != (32.0, 1.0):
            rope_scaling.update(beta_fast=yarn.beta_fast, beta_slow=yarn.beta_slow)
        if yarn.attention_factor is not None:
            rope_scaling["attention_factor"] = yarn.attention_factor
        if not yarn.truncate:
            rope_scaling["truncate"] = False
    values: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if config.attention_bias else "LlamaForCausalLM"],
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "model_type": "qwen2" if config.attention_bias else "llama",
        "num_attention_heads": config.num_heads,
        "num_hidden_layers": config.num_layers,
        "num_key_value_heads": config.num_kv_heads,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_scaling": rope_scaling,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": dtype,
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }
    if config.attention_bias:
        values.update(max_window_layers=config.num_layers, sliding_window=config.max_position_embeddings,
                      use_sliding_window=False)
    else:
        values.update(attention_bias=False, mlp_bias=False)
    # Published files carry no head_dim (it is hidden / heads); write it only when it says something.
    if config.head_dim * config.num_heads != config.hidden_size:
        values["head_dim"] = config.head_dim
    return dict(sorted(values.items()))


def read_hf_config(hf_dir: str | os.PathLike) -> ModelConfig:
    path = Path(hf_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConversionError(f"{path} does not exist; point at a Hugging Face model directory "
                              "(config.json + safetensors)")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None
    return model_config_from_hf(values, str(path))


# --- safetensors ----------------------------------------------------------------------------------------------


class SafetensorsReader:
    """The tensors of a model directory, single-file or sharded, read one at a time by name."""

    def __init__(self, hf_dir: Path):
        self.hf_dir = hf_dir
        self._stack = contextlib.ExitStack()
        self._handles: dict[Path, Any] = {}
        index, single = hf_dir / INDEX_FILE, hf_dir / SINGLE_FILE
        if index.is_file():
            self.index_path = index
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ConversionError(f"{index} is not a safetensors index (expected a 'weight_map'): "
                                      f"{error!r}") from None
            self.location = {name: hf_dir / shard for name, shard in weight_map.items()}
            for shard in sorted(set(weight_map.values())):
                if not (hf_dir / shard).is_file():
                    held = sorted(name for name, s in weight_map.items() if s == shard)
                    raise ConversionError(f"{index} names shard {shard!r}, holding tensor {held[0]!r} and "
                                          f"{len(held) - 1} more, but {hf_dir / shard} does not exist; "
                                          "download the missing shard")
        elif single.is_file():
            self.index_path = single
            self.location = {name: single for name in self._open(single).keys()}
        else:
            found = sorted(p.name for p in hf_dir.glob("*") if p.suffix in (".safetensors", ".bin", ".pt"))
            raise ConversionError(f"{hf_dir} has neither {SINGLE_FILE} nor {INDEX_FILE} (found: {found or 'none'}); "
                                  "re-save the model with save_pretrained(..., safe_serialization=True)")

    def _open(self, path: Path):
        if path not in self._handles:
            try:
                self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="numpy"))
            except Exception as error:  # safetensors raises its own error types for corrupt headers
                raise ConversionError(f"{path} is not a readable safetensors file: {error}") from None
        return self._handles[path]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._stack.close()

    def read(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.location:
            raise ConversionError(f"{self.index_path}: tensor {name!r} is missing; the weights do not match "
                                  f"{self.hf_dir / CONFIG_FILE}")
        path = self.location[name]
        handle = self._open(path)
        if name not in handle.keys():
            raise ConversionError(f"{path}: tensor {name!r} is missing, although {self.index_path.name} places it "
                                  "in this file")
        shape = tuple(handle.get_slice(name).get_shape())
        if shape != tuple(expected_shape):
            raise ConversionError(f"{path}: tensor {name!r} has shape {shape}, expected {tuple(expected_shape)} "
                                  f"from {self.hf_dir / CONFIG_FILE}")
        value = handle.get_tensor(name)
        if not jnp.issubdtype(value.dtype, jnp.floating):  # jnp's check knows bfloat16
            raise ConversionError(f"{path}: tensor {name!r} has dtype {value.dtype}; expected floating point "
                                  "weights (quantised safetensors are not supported)")
        return value


def read_hf(hf_dir: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, scanned param tree of numpy arrays in their stored dtype) from a Hugging Face directory."""
    hf_dir = Path(hf_dir)
    config = read_hf_config(hf_dir)
    with SafetensorsReader(hf_dir) as reader:
        params = params_from_hf(config, reader.read)
        expected = set(expected_hf_names(config))
        unused = sorted(name for name in reader.location if name not in expected and not _IGNORED_TENSORS.match(name))
        if config.tie_embeddings and "lm_head.weight" in unused:
            unused.remove("lm_head.weight")
            # Some writers store the tied head anyway; it must be the embedding, or the file says two things.
            head = reader.read("lm_head.weight", (config.vocab_size, config.hidden_size))
            if not np.array_equal(head, params["embed"]["embedding"]):
                warnings.warn(f"{reader.location['lm_head.weight']}: tie_word_embeddings is true but tensor "
                              "'lm_head.weight' differs from 'model.embed_tokens.weight'; the model uses the "
                              "embedding (as transformers does) and lm_head.weight is dropped", stacklevel=2)
    if unused:
        raise ConversionError(f"{reader.location[unused[0]]}: tensor {unused[0]!r} (and {len(unused) - 1} more) "
                              f"is not part of the model described by {hf_dir / CONFIG_FILE}; the weights and "
                              "config disagree")
    return config, params


def hf_to_orbax(hf_dir: str | os.PathLike, ckpt_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    check_output_dir(ckpt_dir, overwrite)
    config, params = read_hf(hf_dir)
    return checkpoints.save_model(ckpt_dir, config, params, overwrite=overwrite)


# --- writing ----------------------------------------------------------------------------------------------------


def parse_size(size: int | str) -> int:
    """Bytes from 5000000000, "5GB", "500MB", "2GiB"..."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", size, re.IGNORECASE)
    if not match:
        raise ConversionError(f"cannot read size {size!r}; write e.g. 5GB, 500MB or a number of bytes")
    unit = (match.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0]) if unit[0] in "KMGT" else 0
    return int(float(match.group(1)) * base**power)


def write_safetensors(hf_dir: Path, tensors: Mapping[str, np.ndarray], max_shard_size: int) -> list[Path]:
    """One model.safetensors, or model-0000k-of-0000n.safetensors + index when the total exceeds max_shard_size."""
    shards: list[dict[str, np.ndarray]] = [{}]
    shard_bytes = 0
    for name, value in tensors.items():
        if shards[-1] and shard_bytes + value.nbytes > max_shard_size:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = value
        shard_bytes += value.nbytes
    metadata = {"format": "pt"}  # transformers expects it; the bytes are framework-neutral
    if len(shards) == 1:
        save_file(shards[0], str(hf_dir / SINGLE_FILE), metadata=metadata)
        return [hf_dir / SINGLE_FILE]
    paths, weight_map = [], {}
    for k, shard in enumerate(shards, start=1):
        path = hf_dir / f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata=metadata)
        paths.append(path)
        weight_map.update({name: path.name for name in shard})
    index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}
    (hf_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return paths


def _scanned(params: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
    if "layers" not in params and "layers_0" in params:  # an unrolled (scan_layers=False) tree
        return checkpoints.stack_layers(params, config.num_layers)
    return params


def orbax_to_hf(ckpt_dir: str | os.PathLike, hf_dir: str | os.PathLike, *,
                max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False) -> Path:
    """Write config.json (published Qwen2 layout) + safetensors for a qwencoder_jax checkpoint."""
    config = checkpoints.load_config(ckpt_dir)
    params = _scanned(checkpoints.load_params(ckpt_dir), config)
    tensors = hf_from_params(config, params)
    hf_dir = Path(hf_dir)
    if hf_dir.exists() and any(hf_dir.iterdir()):
        if not overwrite:
            raise ConversionError(f"{hf_dir} already exists and is not empty; choose a new directory or pass "
                                  "overwrite=True (--overwrite)")
        # Stale shards of an earlier export would otherwise sit beside a new index and confuse loaders.
        for stale in [*hf_dir.glob("model*.safetensors"), hf_dir / INDEX_FILE, hf_dir / CONFIG_FILE,
                      *(hf_dir / name for name in TOKENIZER_FILES)]:
            if stale.is_file():
                stale.unlink()
    hf_dir.mkdir(parents=True, exist_ok=True)
    dtype = str(tensors["model.embed_tokens.weight"].dtype)
    (hf_dir / CONFIG_FILE).write_text(json.dumps(hf_config_from_model(config, dtype), indent=2) + "\n")
    write_safetensors(hf_dir, tensors, parse_size(max_shard_size))
    if config.vocab_size == QWEN_VOCAB_SIZE:
        write_qwen_tokenizer(hf_dir)
    return hf_dir


# The Hugging Face tokenizer files of the Qwen2.5 vocabulary (tokenizer_config.json holds the ChatML chat template).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def write_qwen_tokenizer(hf_dir: str | os.PathLike) -> None:
    """Copies the Qwen2.5 tokenizer files our vocabulary reads (qwencoder_jax.assets) beside the weights, so that
    transformers' AutoTokenizer loads the exported directory. Only for the Qwen vocabulary: a checkpoint with another
    vocabulary (e.g. converted from a SmolLM2 GGUF) gets no tokenizer rather than a wrong one."""
    source = assets.qwen_tokenizer_json().parent
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, Path(hf_dir) / name)


__all__ = ["ConversionError", "hf_to_orbax", "orbax_to_hf", "read_hf", "read_hf_config", "model_config_from_hf",
           "hf_config_from_model", "write_safetensors", "parse_size", "write_qwen_tokenizer"]
