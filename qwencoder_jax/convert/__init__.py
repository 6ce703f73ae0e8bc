"""Checkpoint converters: Hugging Face safetensors <-> orbax, GGUF -> orbax.

    python -m qwencoder_apps.convert hf-to-orbax HF_DIR CKPT_DIR
    python -m qwencoder_apps.convert orbax-to-hf CKPT_DIR HF_DIR
    python -m qwencoder_apps.convert gguf-to-orbax FILE.gguf CKPT_DIR
"""

from qwencoder_jax.convert.common import ConversionError
from qwencoder_jax.convert.gguf import gguf_to_orbax, read_gguf
from qwencoder_jax.convert.hf import hf_to_orbax, orbax_to_hf, read_hf

__all__ = ["ConversionError", "gguf_to_orbax", "hf_to_orbax", "orbax_to_hf", "read_gguf", "read_hf"]
