"""The on-disk form of a model: an orbax composite checkpoint whose items are `params` and `model_config`.

    CKPT_DIR/params/          orbax PyTree checkpoint of the parameter tree (scanned-layer layout)
    CKPT_DIR/model_config/    the ModelConfig as JSON (orbax JsonSave)
    CKPT_DIR/packed_weights/  optional: block-quantised projections kept as the source stored them (a GGUF's
                              Q4_0/Q4_1/Q8_0 tensors), which CPU decoding multiplies by (qwencoder_jax.cpu_decode)

Converted checkpoints are written in this form, and every training checkpoint step directory holds the same two
items beside the optimizer and data-iterator state, so `load` takes either. Parameters keep the dtype they were
saved in (a bfloat16 checkpoint stays bfloat16 on disk); `load` casts to the config's `param_dtype`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from qwencoder_jax.model.config import ModelConfig
from qwencoder_jax.model.transformer import Transformer

PARAMS_ITEM = "params"
CONFIG_ITEM = "model_config"
PACKED_ITEM = "packed_weights"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, in one or two lines: the checkpoint, the item, the array, the cause."""


def _handler() -> ocp.CompositeCheckpointHandler:
    # Every item of a model or training checkpoint registered, so that reading some of them does not warn
    # ("Item ... was found in the checkpoint, but could not be restored") about the others. The training items
    # (optimizer state, trainer JSON, grain iterator state) are only ever restored by the trainer.
    import grain

    return ocp.CompositeCheckpointHandler(**{PARAMS_ITEM: ocp.StandardCheckpointHandler(),
                                             PACKED_ITEM: ocp.StandardCheckpointHandler(),
                                             CONFIG_ITEM: ocp.JsonCheckpointHandler(),
                                             "opt_state": ocp.StandardCheckpointHandler(),
                                             "trainer": ocp.JsonCheckpointHandler(),
                                             "data": grain.checkpoint.CheckpointHandler()})


def describe_restore_error(error: BaseException) -> str:
    """The readable part of an orbax/TensorStore restore error: which array, and the innermost cause (orbax's own
    message carries a ~2,000-character TensorStore spec and leaves the cause to the exception's context)."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    text = " | ".join(str(e) for e in chain)
    array = re.search(r'Error reading "([^"/]+)', text)
    innermost = str(chain[-1]).splitlines()[0] if chain and str(chain[-1]).strip() else type(chain[-1]).__name__
    innermost = re.sub(r"\s*\[tensorstore_spec=.*", "", innermost)
    innermost = re.sub(r"See full TensorStore details:.*", "", innermost).strip()
    code = re.match(r"([A-Z_]+): ", innermost)
    if '": ' in innermost:  # TensorStore nests "Error opening/reading "X": ..." prefixes; the cause comes last
        innermost = (code.group(0) if code else "") + innermost.rsplit('": ', 1)[-1]
    if len(innermost) > 300:
        innermost = innermost[:300] + "..."
    return (f"array {array.group(1)}: " if array else "") + f"{type(chain[-1]).__name__}: {innermost}"


def _restore(directory: Path, items: dict) -> dict:
    try:
        return _checkpointer().restore(directory, ocp.args.Composite(**items))
    except Exception as error:
        names = ", ".join(sorted(items))
        raise CheckpointError(f"checkpoint {directory}, item {names}: {describe_restore_error(error)}") from None


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(_handler())


def save_model(directory: str | os.PathLike, config: ModelConfig, params: Any, *, overwrite: bool = False,
               packed: dict[str, Any] | None = None) -> Path:
    """Write params + config (+ packed weights by Hugging Face name: cpu_decode.packed.PackedWeight) as an
    orbax checkpoint at `directory`."""
    directory = Path(directory).absolute()
    if directory.exists():
        if not overwrite:
            raise FileExistsError(f"checkpoint directory {directory} already exists; pass overwrite=True "
                                  "or choose a new directory")
    items = {PARAMS_ITEM: ocp.args.StandardSave(params), CONFIG_ITEM: ocp.args.JsonSave(config.to_dict())}
    if packed:
        tree: dict[str, Any] = {}  # nested by the name's dotted parts (orbax joins key paths with dots itself)
        for name, weight in packed.items():
            node = tree
            for part in name.split("."):
                node = node.setdefault(part, {})
            node.update(codes=weight.codes, scale=weight.scale, offset=weight.offset)
        items[PACKED_ITEM] = ocp.args.StandardSave(tree)
    _checkpointer().save(directory, ocp.args.Composite(**items), force=overwrite)
    return directory


def restore_item(directory: Path, item: str) -> Any:
    """One item of a model checkpoint directory as saved (on this process's first device)."""
    return _restore(directory, {item: ocp.args.StandardRestore(_local_target(directory, item))})[item]


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A model checkpoint directory from either itself or a directory of numbered steps (the latest step)."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    if (path / PARAMS_ITEM).is_dir():
        return path
    for candidate in (path, path / "checkpoints"):
        steps = sorted((int(p.name), p) for p in candidate.glob("*") if p.is_dir() and re.fullmatch(r"\d+", p.name)
                       and (p / PARAMS_ITEM).is_dir())
        if steps:
            return steps[-1][1]
    raise FileNotFoundError(f"{path} holds no model checkpoint: expected a '{PARAMS_ITEM}' item, or numbered step "
                            f"directories containing one")


def load_config(path: str | os.PathLike) -> ModelConfig:
    directory = resolve_checkpoint_dir(path)
    config_dir = directory / CONFIG_ITEM
    if not config_dir.is_dir():
        raise FileNotFoundError(f"checkpoint {directory} has no '{CONFIG_ITEM}' item; it was not written by "
                                "qwencoder_jax (convert it with `python -m qwencoder_apps.convert`)")
    restored = _restore(directory, {CONFIG_ITEM: ocp.args.JsonRestore()})
    return ModelConfig.from_dict(restored[CONFIG_ITEM])


def _local_target(directory: Path, item: str = PARAMS_ITEM) -> Any:
    """Shapes and dtypes of the stored parameters, each placed whole on this process's first device.

    Restoring without a target asks orbax to rebuild the saved shardings, which fails ("topology mismatch") for a
    checkpoint written by several processes or on a mesh this host does not have; an explicit single-device target
    makes any checkpoint readable on one host (evaluation, notebooks, conversion)."""
    try:
        metadata = _checkpointer().metadata(directory).item_metadata[item]
    except Exception as error:
        raise CheckpointError(f"checkpoint {directory}, item {item}: {describe_restore_error(error)}") from None
    device = jax.local_devices()[0]
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=jax.sharding.SingleDeviceSharding(
        device)), metadata)


def load_params(path: str | os.PathLike, dtype: Any | None = None) -> Any:
    """The parameter tree as stored, on this process's first device, optionally cast to `dtype`."""
    directory = resolve_checkpoint_dir(path)
    params = load_params_sharded(directory, _local_target(directory))
    if dtype is not None:
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype), params)
    return params


def load_params_sharded(path: str | os.PathLike, target: Any) -> Any:
    """The parameter tree restored straight into a layout: `target` is a matching tree of jax.ShapeDtypeStruct
    with `.sharding` set (e.g. from qwencoder_jax.train.step.state_shardings). Each process reads only the shards
    its devices hold, which is what multi-host runs need (no host materialises the whole model)."""
    directory = resolve_checkpoint_dir(path)
    restored = _restore(directory, {PARAMS_ITEM: ocp.args.StandardRestore(target)})
    return restored[PARAMS_ITEM]


def load(path: str | os.PathLike, **config_overrides: Any) -> tuple[Transformer, Any]:
    """(model, params) from a checkpoint, ready for `model.apply({'params': params}, input_ids)`.

    `path` is a converted checkpoint, a training step directory, or a run's workdir (its latest step).
    Config overrides change execution only (e.g. attention_backend="splash", compute_dtype="bfloat16",
    scan_layers=False); params are cast to the resulting `param_dtype` and re-laid for unscanned layers.
    """
    config = load_config(path).replace(**config_overrides)
    params = load_params(path, dtype=jnp.dtype(config.param_dtype))
    if not config.scan_layers:
        params = unstack_layers(params, config.num_layers)
    return Transformer(config), params


def unstack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Scanned layout (`layers/...` with a leading layer axis) -> unrolled (`layers_0/...`, `layers_1/...`)."""
    params = dict(params)
    stacked = params.pop("layers")
    for i in range(num_layers):
        params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return params


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Unrolled layout -> scanned layout; the inverse of `unstack_layers`."""
    params = dict(params)
    layers = [params.pop(f"layers_{i}") for i in range(num_layers)]
    params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return params
