"""The Qwen2 decoder: config presets, layers, attention backends, the transformer."""

from qwencoder_jax.model.config import PRESETS, ModelConfig, YarnScaling, get_preset
from qwencoder_jax.model.transformer import Transformer, abstract_params, init_params

__all__ = ["PRESETS", "ModelConfig", "YarnScaling", "Transformer", "abstract_params", "get_preset", "init_params"]
