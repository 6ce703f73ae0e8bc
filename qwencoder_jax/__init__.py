"""qwencoder-jax: the Qwen2.5-Coder recipe in JAX.

    import qwencoder_jax
    model, params = qwencoder_jax.load("/path/to/checkpoint")
    logits = model.apply({"params": params}, input_ids)      # int32 [batch, length] -> float32 [batch, length, vocab]
"""

from qwencoder_jax.checkpoints import load, load_config, load_params, save_model

__all__ = ["load", "load_config", "load_params", "save_model"]
