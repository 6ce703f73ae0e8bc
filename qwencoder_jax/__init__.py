"""qwencoder-jax: the Qwen2.5-Coder recipe in JAX.

    import qwencoder_jax
    model, params = qwencoder_jax.load("/path/to/checkpoint")
    logits = model.apply({"params": params}, input_ids)      # int32 [batch, length] -> float32 [batch, length, vocab]
"""

import importlib

__all__ = ["load", "load_config", "load_params", "save_model"]


def __getattr__(name):
    # Lazy (PEP 562): importing qwencoder_jax.data (and every grain worker that unpickles it) must not load the
    # model, its checkpoint code and their imports; `qwencoder_jax.load` still works as before.
    if name in __all__:
        return getattr(importlib.import_module("qwencoder_jax.checkpoints"), name)
    raise AttributeError(f"module 'qwencoder_jax' has no attribute {name!r}")
