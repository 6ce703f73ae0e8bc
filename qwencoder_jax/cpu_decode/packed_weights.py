"""The CPU decode step's projections: the one seam between the model and the CPU kernels.

    decode = kv_cache.make_decoder(model, cache_length, eos_ids, step_scope=packed_weights.use)
    tokens_bn, steps = decode(params, ..., packed=packed_weights.load(checkpoint))   # packed: optional

`use(config, packed)` is entered at trace time around each decode step. A flax method interceptor replaces each
projection of the layers (q/k/v/o, gate/up/down, flax DenseGeneral), the tied head (`Embed.attend`) and the
untied head (`LMHead`): by `packed.matmul` where the projection's Hugging Face name has a packed (GGUF block)
weight, else by `few_rows.dot_general` on the float parameter. Everything else (embedding lookup, norms, RoPE,
attention, biases) runs as the model wrote it. Packed weights are keyed by Hugging Face names in Hugging Face's
[out, in] layout (GGUF's), for the unrolled layer layout (`scan_layers=False`, what decoding uses).
The model itself never imports this package; the Generator switches it on for unsharded decoding on CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Mapping

import flax.linen as nn

from qwencoder_jax import checkpoints
from qwencoder_jax.cpu_decode import few_rows
from qwencoder_jax.cpu_decode import packed as packed_kernel
from qwencoder_jax.cpu_decode.packed import PackedWeight
from qwencoder_jax.model.config import ModelConfig
from qwencoder_jax.model.hf_names import matrix_names
from qwencoder_jax.model.transformer import Embed, LMHead, head_logits


def check(config: ModelConfig, packed: Mapping[str, PackedWeight]) -> None:
    """Raises a ValueError naming the first packed weight that this model has no use for or the wrong shape."""
    matrices = matrix_names(config)
    for name, weight in packed.items():
        if name not in matrices:
            raise ValueError(f"packed weight {name!r} is not a projection or the head of this model "
                             f"(expected names like {next(iter(matrices))!r})")
        weight.check(name)
        if weight.shape != tuple(matrices[name][1]):
            raise ValueError(f"packed weight {name!r} stands for a {list(weight.shape)} matrix; this model's is "
                             f"{list(matrices[name][1])}")


def present(path: str | os.PathLike) -> bool:
    """Whether the checkpoint keeps packed weights (without reading them)."""
    return (checkpoints.resolve_checkpoint_dir(path) / checkpoints.PACKED_ITEM).is_dir()


def load(path: str | os.PathLike) -> dict[str, PackedWeight] | None:
    """The checkpoint's packed weights by Hugging Face name (on this process's first device), or None."""
    if not present(path):
        return None
    directory = checkpoints.resolve_checkpoint_dir(path)
    restored = checkpoints.restore_item(directory, checkpoints.PACKED_ITEM)
    packed = {}

    def collect(node: dict, parts: tuple[str, ...]) -> None:
        if "codes" in node:
            name = ".".join(parts)
            packed[name] = PackedWeight(node["codes"], node["scale"], node["offset"]).check(
                f"{directory}: packed weight {name}")
            return
        for key, child in node.items():
            collect(child, (*parts, key))

    collect(restored, ())
    return packed


def _trailing_axes(module: nn.DenseGeneral, x) -> tuple[int, ...]:
    axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    axes = tuple(sorted(a % x.ndim for a in axes))
    if axes != tuple(range(x.ndim - len(axes), x.ndim)) or module.batch_dims:
        raise ValueError(f"CPU decoding: {module.path} contracts axes {axes}, not the trailing ones")
    return axes


def _dense(module: nn.DenseGeneral, weight: PackedWeight | None, x):
    """DenseGeneral.__call__ with the product by the packed weight, or by the few-rows kernel on the float one."""
    axes = _trailing_axes(module, x)
    features = module.features if isinstance(module.features, tuple) else (module.features,)
    if weight is None:
        dtype = module.dtype or x.dtype
        kernel = module.get_variable("params", "kernel").astype(dtype)
        dims = ((axes, tuple(range(len(axes)))), ((), ()))
        y = few_rows.dot_general(x.astype(dtype), kernel, dims, precision=module.precision)
    else:
        k = math.prod(x.shape[x.ndim - len(axes):])
        y = packed_kernel.matmul(x.reshape(-1, k), weight).reshape(*x.shape[:x.ndim - len(axes)], *features)
    if module.use_bias:
        y = y + module.get_variable("params", "bias").astype(y.dtype)
    return y.astype(module.dtype or x.dtype)


def _head(module: nn.Module, weight: PackedWeight | None, x_btd):
    if weight is not None:
        d = x_btd.shape[-1]
        return packed_kernel.matmul(x_btd.reshape(-1, d), weight).reshape(*x_btd.shape[:-1], weight.shape[0])
    tied = isinstance(module, Embed)
    table = module.get_variable("params", "embedding" if tied else "kernel")
    return head_logits(x_btd, table.astype(x_btd.dtype), transposed=tied, dot_general=few_rows.dot_general)


@contextlib.contextmanager
def use(config: ModelConfig, packed: Mapping[str, Any] | None = None):
    """Within this block (at trace time), the projections and head of a `config` model run on the CPU kernels
    (see the module doc): packed weights where `packed` has one, the few-rows kernel elsewhere."""
    packed = packed or {}
    if packed and config.scan_layers:
        raise ValueError("packed weights apply to the unrolled layer layout; load the model with scan_layers=False")
    check(config, packed)
    names = {path: name for name, (path, _) in matrix_names(config).items()}

    def interceptor(next_fun, args, kwargs, context):
        module, method = context.module, context.method_name
        is_dense = isinstance(module, nn.DenseGeneral) and method == "__call__"
        is_head = (isinstance(module, Embed) and method == "attend") or (
            isinstance(module, LMHead) and method == "__call__")
        if not (is_dense or is_head):
            return next_fun(*args, **kwargs)
        weight = packed.get(names.get(tuple(module.path)))
        return _dense(module, weight, args[0]) if is_dense else _head(module, weight, args[0])

    with nn.intercept_methods(interceptor):
        yield

