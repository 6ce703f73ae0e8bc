"""Compile a gin stage's exact training step (or the generator's prefill / decode step) for a TPU topology.

    report = compile_stage(gin_files, bindings, topology.parse("v5p-256"), mode="train")
    report.fits, report.per_device_bytes, report.mosaic_kernels, report.collectives

Everything is abstract (ShapeDtypeStructs with NamedShardings over a mesh of compile-only TPU devices): nothing
is allocated, no data directory is read. The step is the one `Trainer` builds (model, optimizer, loss path,
accumulation, mesh, all from gin); splash attention lowers through Mosaic because the mesh's devices are TPUs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import gin
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from qwencoder_jax import sharding
from qwencoder_jax.aot import hlo
from qwencoder_jax.aot.libtpu_flags import combined
from qwencoder_jax.aot.topology import Topology, compile_devices
from qwencoder_jax.model import kv_cache
from qwencoder_jax.model.attention import CACHE_AXES
from qwencoder_jax.model.kv_cache import cache_shapes
from qwencoder_jax.model.transformer import Transformer
from qwencoder_jax.train import gin_config
from qwencoder_jax.train import step as step_lib
from qwencoder_jax.train.optimizer import make_optimizer

MODES = ("train", "prefill", "decode")
# Data locations and the run length do not change what is compiled; where the gin files leave them required,
# they get these placeholders (nothing is read).
PLACEHOLDERS = {**{name: '"unused"' for name in ("CODE_DIR", "TEXT_DIR", "MATH_DIR", "REPO_DIR", "SFT_DIR")},
                **{name: "None" for name in ("STAGE1_WORKDIR", "STAGE2_WORKDIR", "SFT_COARSE_WORKDIR")},
                "TOTAL_STEPS": "1000"}


@dataclasses.dataclass(frozen=True)
class Report:
    topology: str
    num_slices: int
    mode: str
    devices: int
    mesh: dict[str, int]
    hbm_bytes: int  # per device (chip)
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    state_bytes: int  # parameters + optimizer state per device from the sharding table (train) / params (else)
    input_bytes: int  # the batch (train) or the cache and token inputs (prefill / decode) per device
    mosaic_kernels: int
    collectives: dict[str, dict[str, int]]  # kind -> {"count", "bytes"} per step (loop bodies x trip counts)
    compile_seconds: float
    compiled_flops: float | None  # XLA's cost analysis, per device; Mosaic kernels not counted
    model_flops: float  # per device per step, 6N + attention (training) or 2N + attention (inference)
    tokens_per_step: int
    out_of_memory: str | None = None  # the TPU compiler's own refusal (it stops before memory_analysis exists)
    loop_trip_counts: list = dataclasses.field(default_factory=list)  # the compiled while loops' (None: unread)
    program_fingerprint: str | None = None  # the compiled program apart from its constants (hlo.fingerprint)
    libtpu_flags: str = ""  # LIBTPU_INIT_ARGS the compiler ran with

    @property
    def per_device_bytes(self) -> int:
        """What one device holds at the peak: arguments + outputs not aliased to them + temporaries + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return self.out_of_memory is None and self.per_device_bytes <= self.hbm_bytes

    def to_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), per_device_bytes=self.per_device_bytes, fits=self.fits)


def build_config(gin_files: Sequence[str], bindings: Sequence[str]):
    """The TrainerConfig the train CLI would build from these files and bindings (data paths not needed)."""
    gin_config.parse(gin_files, bindings, placeholders=PLACEHOLDERS)
    config, _ = gin_config.train(workdir="unused", data_sources=(), recipe_groups=None, init_from=None)
    return config


def _num_sources() -> int:
    """How many mixture sources the step reports metrics for (the stage's data_sources, unevaluated)."""
    try:
        return len(gin.query_parameter("train.data_sources"))
    except ValueError:
        return 0


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _train_lowering(config, model, mesh, batch_rows: int):
    optimizer = make_optimizer(config.optimizer)
    abstract_state, shardings = step_lib.state_shardings(model, optimizer, mesh)
    step = step_lib.jit_train_step(model, optimizer, mesh, shardings, batch_keys=step_lib.BATCH_KEYS,
                                   accumulation_steps=config.optimizer.accumulation_steps,
                                   z_loss=config.optimizer.z_loss, loss_config=config.loss,
                                   num_sources=_num_sources())
    length = config.loader.sequence_length
    batch_sharding = sharding.data_sharding(mesh, 2)
    batch = {key: jax.ShapeDtypeStruct((batch_rows, length), jnp.float32 if key == "loss_weights" else jnp.int32,
                                       sharding=batch_sharding) for key in step_lib.BATCH_KEYS}
    state = _abstract(abstract_state, shardings)
    with sharding.activate(mesh):
        lowered = step.jitted.lower(state, batch)
    state_bytes = sharding.sharded_bytes((abstract_state.params, abstract_state.opt_state),
                                         (shardings.params, shardings.opt_state))
    input_bytes = sharding.sharded_bytes(batch, {key: batch_sharding for key in batch})
    return lowered, state_bytes, input_bytes, batch_rows * length, config.model.flops_per_token(length, training=True)


def _cache_shardings(cache, mesh):
    def one(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        logical = {"['key']": CACHE_AXES, "['value']": CACHE_AXES, "['segment_ids']": ("act_batch", None)}.get(name)
        # scanned layers stack the cache along a leading layer axis
        spec = sharding.logical_to_mesh_spec((None,) * (leaf.ndim - len(logical)) + tuple(logical)) if logical \
            else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, cache)


def _inference_lowering(config, model, mesh, mode: str, batch_rows: int, prompt_length: int, new_tokens: int):
    """The Generator's two programs (qwencoder_jax.model.kv_cache): a prefill of [rows, prompt] tokens into a
    cache of prompt + new_tokens slots, or one decode step over that cache."""
    abstract_state, shardings = step_lib.state_shardings(model, make_optimizer(config.optimizer), mesh)
    params = _abstract(abstract_state.params, shardings.params)
    cache_length = prompt_length + new_tokens
    cache = cache_shapes(model, batch_rows, cache_length)
    cache_shardings = _cache_shardings(cache, mesh)
    cache = _abstract(cache, cache_shardings)
    rows = sharding.data_sharding(mesh, 2)
    if mode == "prefill":
        tokens = prompt_length

        def program(params, cache, ids_bp, segment_ids_bp, positions_bp):
            hidden_bpd, mutated = model.apply({"params": params, "cache": cache}, ids_bp, segment_ids_bp,
                                              positions_bp, return_hidden=True, decode="prefill", mutable=["cache"])
            return kv_cache._last_logits(model, params, hidden_bpd[:, -1]), mutated["cache"]
    else:
        tokens = 1

        def program(params, cache, ids_bp, segment_ids_bp, positions_bp):
            logits_b1v, mutated = model.apply({"params": params, "cache": cache}, ids_bp, segment_ids_bp,
                                              positions_bp, decode="step", mutable=["cache"])
            return logits_b1v[:, 0], mutated["cache"]

    inputs = [jax.ShapeDtypeStruct((batch_rows, tokens), jnp.int32, sharding=rows) for _ in range(3)]
    jitted = jax.jit(program, out_shardings=(sharding.data_sharding(mesh, 2), cache_shardings), donate_argnums=(1,))
    with sharding.activate(mesh):
        lowered = jitted.lower(params, cache, *inputs)
    state_bytes = sharding.sharded_bytes(abstract_state.params, shardings.params)
    input_bytes = sharding.sharded_bytes((cache, inputs), (cache_shardings, [rows] * 3))
    flops_per_token = config.model.flops_per_token(cache_length if mode == "decode" else tokens, training=False)
    return lowered, state_bytes, input_bytes, batch_rows * tokens, flops_per_token


def lower_stage(gin_files: Sequence[str], bindings: Sequence[str], topology: Topology, num_slices: int = 1,
                mode: str = "train", prompt_length: int | None = None, new_tokens: int = 256,
                libtpu_flags: str = ""):
    """The stage's program lowered for the topology (not compiled), the Report's figures known before compiling,
    and the seconds lowering took. libtpu_flags: XLA TPU flags (a libtpu_flags.resolve spec)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    config = build_config(gin_files, bindings)
    if config.mesh.num_slices != num_slices:
        config = dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, num_slices=num_slices))
    devices = compile_devices(topology, num_slices, libtpu_flags)
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    model = Transformer(config.model)
    hosts = topology.hosts * num_slices
    batch_rows = config.loader.batch_size * hosts  # loader batch_size is per process (one process per host)
    batch_parts = sharding._mesh_axis_size(mesh, sharding.data_sharding(mesh, 2).spec[0])
    if batch_rows % batch_parts:
        raise ValueError(f"the global batch of {batch_rows} rows (BATCH_SIZE={config.loader.batch_size} per host x "
                         f"{hosts} hosts) does not split over the {batch_parts} devices of the batch mesh axes "
                         f"{dict(mesh.shape)}; raise BATCH_SIZE to a multiple of {batch_parts // hosts or 1} or "
                         f"change MESH_SHAPE")
    start = time.perf_counter()
    if mode == "train":
        lowered, state_bytes, input_bytes, tokens, flops_per_token = _train_lowering(config, model, mesh, batch_rows)
    else:
        prompt = prompt_length or config.loader.sequence_length
        lowered, state_bytes, input_bytes, tokens, flops_per_token = _inference_lowering(
            config, model, mesh, mode, batch_rows, prompt, new_tokens)
    common = dict(topology=topology.name, num_slices=num_slices, mode=mode, devices=len(devices),
                  mesh={name: int(size) for name, size in mesh.shape.items()}, hbm_bytes=topology.hbm_bytes_per_chip,
                  state_bytes=state_bytes, input_bytes=input_bytes,
                  model_flops=flops_per_token * tokens / len(devices), tokens_per_step=tokens,
                  libtpu_flags=combined(os.environ.get("LIBTPU_INIT_ARGS"), libtpu_flags))
    return lowered, common, time.perf_counter() - start


def compile_stage(gin_files: Sequence[str], bindings: Sequence[str], topology: Topology, num_slices: int = 1,
                  mode: str = "train", prompt_length: int | None = None, new_tokens: int = 256,
                  hlo_path: str | None = None, libtpu_flags: str = "") -> Report:
    """The Report of the compiled program; hlo_path: also write the compiled HLO text there."""
    lowered, common, lowering_seconds = lower_stage(gin_files, bindings, topology, num_slices, mode, prompt_length,
                                                    new_tokens, libtpu_flags)
    start = time.perf_counter() - lowering_seconds
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        # "... HLO temporaries (66.02G) exceeds available HBM (15.75G)": the compiler stops at the first excess
        message = str(error).splitlines()[0]
        temporaries = re.search(r"temporaries \(([\d.]+)G\)", message)
        return Report(**common, argument_bytes=common["state_bytes"] + common["input_bytes"], output_bytes=0,
                      alias_bytes=0,
                      temp_bytes=int(float(temporaries.group(1)) * 2**30) if temporaries else 0, code_bytes=0,
                      mosaic_kernels=0, collectives={}, compile_seconds=time.perf_counter() - start,
                      compiled_flops=None, out_of_memory=message)
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text()
    if hlo_path:
        Path(hlo_path).write_text(text)
    collectives, trips = hlo.collectives(text)
    return Report(**common, argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
                  alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
                  code_bytes=memory.generated_code_size_in_bytes, mosaic_kernels=hlo.mosaic_kernels(text),
                  collectives=collectives, compile_seconds=seconds, compiled_flops=(cost or {}).get("flops"),
                  loop_trip_counts=trips, program_fingerprint=hlo.fingerprint(text))
