"""GGUF (llama.cpp) files of the Llama and Qwen2 families -> qwencoder_jax orbax checkpoints.

    gguf_to_orbax("SmolLM2-135M-Instruct.Q4_1.gguf", "ckpt/")

Hyper-parameters come from the file's metadata (`{arch}.block_count`, `{arch}.embedding_length`, ...), the
vocabulary size from token_embd's shape; quantised tensors are dequantised with the `gguf` package. Tensors are
renamed to Hugging Face names and layouts and then go through the same table as safetensors (convert/common.py).

llama.cpp's converter reorders the rows of every Q and K projection of `llama` models, inside each head, from
the rotate-halves layout of Hugging Face (pairs (j, j + e/2)) to interleaved pairs (2j, 2j + 1), which is
what its `llama` RoPE kernel rotates. We rotate halves, so those rows are put back; `qwen2` files are stored in
the rotate-halves layout (llama.cpp runs them with its NEOX RoPE) and are taken as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import gguf
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from qwencoder_jax import checkpoints
from qwencoder_jax.convert.common import ConversionError, check_output_dir, params_from_hf
from qwencoder_jax.cpu_decode.packed import GGUF_TYPES, PackedWeight
from qwencoder_jax.model.config import DTYPES, ModelConfig, YarnScaling
from qwencoder_jax.model.hf_names import expected_hf_names, matrix_names

# GGUF architecture -> (q/k/v carry a bias, Q/K rows were interleaved by llama.cpp's converter)
ARCHITECTURES = {"llama": (False, True), "qwen2": (True, False)}

_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


def gguf_tensor_name(hf_name: str) -> str:
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    layer, rest = _LAYER_NAME.fullmatch(hf_name).groups()
    return f"blk.{layer}.{_LAYER_NAMES[rest]}"


def uninterleave_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: within each head, rows (2j, 2j+1) go back to (j, j + e/2)."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class GGUFFile:
    """Metadata and dequantised tensors of one GGUF file; errors name the file, the key or the tensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConversionError(f"{self.path} does not exist")
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as error:  # the reader raises ValueError for a bad magic, struct errors for truncation
            raise ConversionError(f"{self.path} is not a readable GGUF file: {error}") from None
        self.tensors = {tensor.name: tensor for tensor in self.reader.tensors}
        self.architecture = str(self.value("general.architecture"))
        if (self.value("split.count", 1) or 1) > 1:
            raise ConversionError(f"{self.path} is one part of a split GGUF model; merge the parts first "
                                  "(llama-gguf-split --merge)")

    _MISSING = object()

    def value(self, key: str, default: Any = _MISSING) -> Any:
        field = self.reader.get_field(key)
        if field is None:
            if default is GGUFFile._MISSING:
                raise ConversionError(f"{self.path}: metadata key {key!r} is missing")
            return default
        return field.contents()

    def number(self, key: str, default: Any = _MISSING) -> float:
        """A float metadata value; float32 ones by their shortest decimal (1e-05, not 9.999999747378752e-06)."""
        value = self.value(key, default)
        field = self.reader.get_field(key)
        if field is not None and field.types[0] == gguf.GGUFValueType.FLOAT32:
            return float(str(np.float32(value)))
        return float(value)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in reversed(self.tensors[name].shape))  # GGUF lists dims fastest-first

    def check_shape(self, name: str, hf_name: str, expected_shape: tuple[int, ...]) -> None:
        if self.shape(name) != tuple(expected_shape):
            raise ConversionError(f"{self.path}: tensor {name!r} ({hf_name}) has shape {self.shape(name)}, expected "
                                  f"{tuple(expected_shape)} from the file's {self.architecture}.* metadata")

    def dequantised(self, name: str) -> np.ndarray:
        tensor = self.tensors[name]
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as error:
            raise ConversionError(f"{self.path}: tensor {name!r} is stored as {tensor.tensor_type.name}, which "
                                  f"the gguf package cannot dequantise: {error}") from None
        return np.asarray(values, dtype=np.float32).reshape(self.shape(name))


def _rope_from_gguf(file: GGUFFile, arch: str, context_length: int) -> YarnScaling | None:
    kind = file.value(f"{arch}.rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind != "yarn":
        raise ConversionError(f"{file.path}: rope scaling type {kind!r} ({arch}.rope.scaling.type) is not "
                              "supported; only none and yarn are implemented")
    attention = file.value(f"{arch}.rope.scaling.attn_factor", None)
    if attention not in (None, 1.0):
        raise ConversionError(f"{file.path}: {arch}.rope.scaling.attn_factor={attention} is not supported")
    return YarnScaling(factor=file.number(f"{arch}.rope.scaling.factor"),
                       original_max_position_embeddings=int(file.value(f"{arch}.rope.scaling.original_context_length",
                                                                       context_length)),
                       beta_fast=file.number(f"{arch}.rope.scaling.yarn_beta_fast", 32.0),
                       beta_slow=file.number(f"{arch}.rope.scaling.yarn_beta_slow", 1.0))


def model_config_from_gguf(file: GGUFFile) -> ModelConfig:
    arch = file.architecture
    if arch not in ARCHITECTURES:
        raise ConversionError(f"{file.path}: GGUF architecture {arch!r} (general.architecture) is not supported; "
                              f"supported: {sorted(ARCHITECTURES)}")
    attention_bias, _ = ARCHITECTURES[arch]
    if "token_embd.weight" not in file.tensors:
        raise ConversionError(f"{file.path}: tensor 'token_embd.weight' is missing")
    vocab_size, hidden = file.shape("token_embd.weight")
    if int(file.value(f"{arch}.embedding_length")) != hidden:
        raise ConversionError(f"{file.path}: tensor 'token_embd.weight' has shape {file.shape('token_embd.weight')}, "
                              f"expected hidden size {file.value(f'{arch}.embedding_length')} "
                              f"({arch}.embedding_length)")
    heads = int(file.value(f"{arch}.attention.head_count"))
    kv_heads = int(file.value(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(file.value(f"{arch}.attention.key_length", hidden // heads))
    rotary_dim = int(file.value(f"{arch}.rope.dimension_count", head_dim))
    if rotary_dim != head_dim:
        raise ConversionError(f"{file.path}: {arch}.rope.dimension_count={rotary_dim} differs from the head dimension "
                              f"{head_dim}; partial rotary embeddings are not supported")
    if "rope_freqs.weight" in file.tensors:
        raise ConversionError(f"{file.path}: tensor 'rope_freqs.weight' holds Llama-3-style RoPE frequency factors, "
                              "which are not supported")
    context_length = int(file.value(f"{arch}.context_length", 32_768))
    try:
        return ModelConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_layers=int(file.value(f"{arch}.block_count")),
            num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            intermediate_size=int(file.value(f"{arch}.feed_forward_length")),
            tie_embeddings="output.weight" not in file.tensors,  # llama.cpp omits the head of tied models
            rope_theta=file.number(f"{arch}.rope.freq_base", 10_000.0),
            yarn=_rope_from_gguf(file, arch, context_length),
            rms_norm_eps=file.number(f"{arch}.attention.layer_norm_rms_epsilon"),
            attention_bias=attention_bias, max_position_embeddings=context_length)
    except ValueError as error:
        if isinstance(error, ConversionError):
            raise
        raise ConversionError(f"{file.path}: the metadata describe no valid model: {error}") from None


def interleaved_heads(file: GGUFFile, config: ModelConfig, name: str) -> int | None:
    """The head count of tensor `name` if llama.cpp interleaved its rows (Q/K of `llama` files), else None."""
    if not ARCHITECTURES[file.architecture][1] or not name.endswith(("attn_q.weight", "attn_k.weight")):
        return None
    return config.num_heads if "attn_q" in name else config.num_kv_heads


def read_gguf(path: str | os.PathLike, dtype: str = "float32") -> tuple[ModelConfig, dict[str, Any]]:
    """(config, scanned param tree of numpy arrays in `dtype`) from a Llama- or Qwen2-family GGUF file."""
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not one of {DTYPES}")
    target = np.dtype(jnp.dtype(dtype))  # jnp knows bfloat16
    file = GGUFFile(path)
    config = model_config_from_gguf(file)

    # Dequantising is the slow part (tens of seconds for a 0.5B file): a bar on a terminal, nothing in a log file.
    progress = tqdm(total=len(expected_hf_names(config)), desc=f"dequantise {Path(path).name}", unit="tensor",
                    disable=None)

    def read(hf_name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        progress.update()
        name = gguf_tensor_name(hf_name)
        if name not in file.tensors:
            raise ConversionError(f"{file.path}: tensor {name!r} ({hf_name}) is missing")
        file.check_shape(name, hf_name, expected_shape)
        values = file.dequantised(name)
        heads = interleaved_heads(file, config, name)
        if heads:
            values = uninterleave_rows(values, heads)
        return values.astype(target)

    expected = {gguf_tensor_name(name) for name in expected_hf_names(config)}
    unused = sorted(set(file.tensors) - expected)
    if unused:
        raise ConversionError(f"{file.path}: tensor {unused[0]!r} (and {len(unused) - 1} more) is not part of a "
                              f"{file.architecture} model as this converter reads it")
    with progress:
        return config, params_from_hf(config, read)


def read_packed(path: str | os.PathLike) -> dict[str, PackedWeight]:
    """The file's projection and head weights stored in one of the block types of packed.GGUF_TYPES, kept packed, by
    Hugging Face name in HF's [out, in] layout (Q/K rows of `llama` files put back in rotate-halves order, as
    `read_gguf` does for the float values). Weights of other types are left out: decoding multiplies by their
    float values. See qwencoder_jax.cpu_decode.packed for the format and qwencoder_jax.cpu_decode.packed_weights for use.
    """
    file = GGUFFile(path)
    config = model_config_from_gguf(file)
    packed = {}
    for hf_name, (_, shape) in matrix_names(config).items():
        name = gguf_tensor_name(hf_name)
        tensor = file.tensors.get(name)
        if tensor is None or tensor.tensor_type.name not in GGUF_TYPES:
            continue
        file.check_shape(name, hf_name, shape)
        weight = PackedWeight.from_gguf_blocks(tensor.data, tensor.tensor_type.name, file.shape(name))
        heads = interleaved_heads(file, config, name)
        if heads:  # whole rows move: a row's blocks, scales and offsets together
            weight = PackedWeight(*(uninterleave_rows(a, heads) for a in (weight.codes, weight.scale, weight.offset)))
        packed[hf_name] = weight
    return packed


TOKENIZER_FILE = "tokenizer.json"  # beside the checkpoint's items; qwencoder_jax.eval.generate looks for it
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # the file's `tokenizer.chat_template` (qwencoder_jax.eval.chat)


def write_tokenizer(path: str | os.PathLike, output_file: str | os.PathLike) -> bool:
    """The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata, as a `tokenizers` tokenizer.json.

    False (nothing written) for files without a tokenizer. transformers' GGUF tokenizer builder does the
    reconstruction (BPE merges, pre-tokeniser regex, special tokens), the same one `AutoTokenizer.from_pretrained(
    dir, gguf_file=...)` uses, without loading the model around it.
    """
    if GGUFFile(path).reader.get_field("tokenizer.ggml.tokens") is None:
        return False
    # transformers (and torch) only to read a GGUF's tokenizer
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, tokenizer_dict, _ = get_gguf_tokenizer(str(path))
    tokenizer, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    tokenizer.save(str(output_file))
    return True


def gguf_to_orbax(path: str | os.PathLike, ckpt_dir: str | os.PathLike, *, dtype: str = "float32",
                  overwrite: bool = False) -> Path:
    """Convert, keep its block-quantised projections packed beside the float params (`read_packed`; decoding
    multiplies by them), and store the file's tokenizer and chat template (if it has them) as
    CKPT_DIR/tokenizer.json and CKPT_DIR/chat_template.jinja."""
    check_output_dir(ckpt_dir, overwrite)
    config, params = read_gguf(path, dtype=dtype)
    directory = checkpoints.save_model(ckpt_dir, config, params, overwrite=overwrite, packed=read_packed(path))
    write_tokenizer(path, directory / TOKENIZER_FILE)
    template = GGUFFile(path).value("tokenizer.chat_template", None)
    if template:
        (directory / CHAT_TEMPLATE_FILE).write_text(str(template), encoding="utf-8")
    return directory
