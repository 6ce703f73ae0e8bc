"""Decode steps from block-quantised weights: the model's projections and head read PackedWeights, not floats.

    packed = gguf.read_packed("SmolLM2-135M-Instruct.Q4_1.gguf")        # {HF weight name: PackedWeight}
    with packed_weights.use(model.config, packed):                      # at trace time, in the jitted step
        logits = model.apply({"params": params, "cache": cache}, ...)

Inside `use`, a flax method interceptor replaces each DenseGeneral projection of the layers (q/k/v/o, gate/up/
down), the tied head (`Embed.attend`) and the untied head (`LMHead`) whose Hugging Face weight name has a packed
weight by `qwencoder_jax.cpu_decode.packed.matmul`; everything else (embedding lookup, norms, RoPE, attention,
biases) runs as before from the float parameters. Packed weights are keyed by Hugging Face names and stored in
Hugging Face's [out, in] layout (GGUF's), which is also the layout a block-wise matmul wants: each output is a
row of blocks along the contracted axis. Only the unrolled layer layout (`scan_layers=False`, what decoding
uses) is intercepted.
"""

from __future__ import annotations

import contextlib
import math
from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp

from qwencoder_jax.convert.common import matrix_names
from qwencoder_jax.cpu_decode import packed as packed_kernel
from qwencoder_jax.cpu_decode.packed import PackedWeight
from qwencoder_jax.model.config import ModelConfig
from qwencoder_jax.model.transformer import Embed, LMHead

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


def _dense(module: nn.DenseGeneral, weight: PackedWeight, x):
    axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    count = len(axes)
    if sorted(a % x.ndim for a in axes) != list(range(x.ndim - count, x.ndim)):
        raise ValueError(f"packed weights: {module.path} contracts axes {axes}, not the trailing ones")
    features = module.features if isinstance(module.features, tuple) else (module.features,)
    k = math.prod(x.shape[x.ndim - count:])
    y = packed_kernel.matmul(x.reshape(-1, k), weight).reshape(*x.shape[:x.ndim - count], *features)
    if module.use_bias:
        y = y + module.get_variable("params", "bias").astype(jnp.float32)
    return y.astype(module.dtype or x.dtype)


def _head(weight: PackedWeight, x_btd):
    d = x_btd.shape[-1]
    return packed_kernel.matmul(x_btd.reshape(-1, d), weight).reshape(*x_btd.shape[:-1], weight.shape[0])


@contextlib.contextmanager
def use(config: ModelConfig, packed: Mapping[str, PackedWeight] | None):
    """Within this block (at trace time), modules of a `config` model with a packed weight multiply by it (see
    the module doc); with None or an empty mapping, nothing changes."""
    if not packed:
        yield
        return
    if config.scan_layers:
        raise ValueError("packed weights apply to the unrolled layer layout; load the model with scan_layers=False")
    check(config, packed)
    names = {path: name for name, (path, _) in matrix_names(config).items()}

    def interceptor(next_fun, args, kwargs, context):
        module, method = context.module, context.method_name
        is_dense = isinstance(module, nn.DenseGeneral) and method == "__call__"
        is_head = (isinstance(module, Embed) and method == "attend") or (
            isinstance(module, LMHead) and method == "__call__")
        name = names.get(tuple(module.path)) if is_dense or is_head else None
        if name is None or name not in packed:
            return next_fun(*args, **kwargs)
        return _dense(module, packed[name], args[0]) if is_dense else _head(packed[name], args[0])

    with nn.intercept_methods(interceptor):
        yield
