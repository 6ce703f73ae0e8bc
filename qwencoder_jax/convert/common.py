"""What every converter shares: the error type, and moving tensors between Hugging Face names and our tree.

The table itself (names, shapes, paths) lives in qwencoder_jax/model/hf_names.py, where CPU decoding reads it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from qwencoder_jax.model.config import ModelConfig
from qwencoder_jax.model.hf_names import global_rules, layer_rules


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the file (and tensor) and what to do."""


def check_output_dir(directory, overwrite: bool) -> None:
    """Fail before reading gigabytes rather than after."""
    if Path(directory).exists() and not overwrite:
        raise ConversionError(f"{directory} already exists; choose a new directory or pass overwrite=True "
                              "(--overwrite)")


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def params_from_hf(config: ModelConfig, read: Callable[[str, tuple[int, ...]], np.ndarray]) -> dict[str, Any]:
    """Our scanned parameter tree from `read(hf_name, expected_hf_shape)`, which raises ConversionError itself
    (it knows the file) when a tensor is missing or has another shape."""
    params: dict[str, Any] = {}
    for rule in global_rules(config):
        _set(params, rule.path, np.ascontiguousarray(rule.to_ours(read(rule.hf_name, rule.hf_shape))))
    layers: dict[str, Any] = {}
    for rule in layer_rules(config):
        per_layer = [rule.to_ours(read(rule.hf_name.format(i=i), rule.hf_shape)) for i in range(config.num_layers)]
        _set(layers, rule.path, np.stack(per_layer))
    params["layers"] = layers
    return params


def hf_from_params(config: ModelConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF-named tensors (contiguous numpy, stored dtype kept) from our scanned parameter tree."""
    tensors: dict[str, np.ndarray] = {}

    def fetch(path, expected_shape, where):
        try:
            value = np.asarray(_get(params, path))
        except (KeyError, TypeError):
            raise ConversionError(f"{where}: parameter '{'/'.join(path)}' is missing from the checkpoint; it does "
                                  "not match its model_config") from None
        if value.shape != expected_shape:
            raise ConversionError(f"{where}: parameter '{'/'.join(path)}' has shape {value.shape}, expected "
                                  f"{expected_shape} from the checkpoint's model_config")
        return value

    def ours_shape(rule):
        return rule.to_ours(np.empty(rule.hf_shape, np.int8)).shape

    globals_ = {rule.hf_name: rule.to_hf(fetch(rule.path, ours_shape(rule), "params"))
                for rule in global_rules(config)}
    stacked = [(rule, fetch(("layers",) + rule.path, (config.num_layers,) + ours_shape(rule), "params"))
               for rule in layer_rules(config)]
    # Embedding first, then layer by layer, so that shards split at layer boundaries as published ones do.
    tensors["model.embed_tokens.weight"] = globals_.pop("model.embed_tokens.weight")
    for i in range(config.num_layers):
        for rule, values in stacked:
            tensors[rule.hf_name.format(i=i)] = rule.to_hf(values[i])
    tensors.update(globals_)
    return {name: np.ascontiguousarray(value) for name, value in tensors.items()}
