"""The gin entry points of a training run, and the parsing of gin files and bindings (the command line that uses
them: `python -m qwencoder_apps.train`).

Gin binds only these top-level constructors: `train` (the run), `model_config` (a preset plus overrides),
`loader_config`, `optimizer_config`, `loss_config`, and the mesh (qwencoder_jax.sharding.mesh_config_from_shape,
gin/mesh.gin). `parse` checks every binding (an unknown or mistyped macro, configurable or parameter fails with
one line naming it and the closest known names: train/gin_check.py); `build` calls every configurable.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Sequence

import gin

from qwencoder_jax import sharding
from qwencoder_jax.data.loader import LoaderConfig
from qwencoder_jax.model.config import ModelConfig, get_preset
from qwencoder_jax.train import gin_check
from qwencoder_jax.train.loss import LossConfig
from qwencoder_jax.train.optimizer import OptimizerConfig
from qwencoder_jax.train.trainer import DataSource, TrainerConfig

GIN_DIR = Path(__file__).resolve().parents[2] / "gin"


@gin.configurable
def model_config(preset: str = gin.REQUIRED, rope_theta: float | None = None, compute_dtype: str | None = None,
                 remat_policy: str | None = None, attention_backend: str | None = None,
                 context_parallel_layout: str | None = None, overrides: dict | None = None) -> ModelConfig:
    """A preset by name; the stage sets rope_theta, the machine the execution fields, `overrides` anything else
    (e.g. {"vocab_size": 151936} for the tiny preset on real data)."""
    named = {"rope_theta": rope_theta, "compute_dtype": compute_dtype, "remat_policy": remat_policy,
             "attention_backend": attention_backend, "context_parallel_layout": context_parallel_layout}
    return get_preset(preset, **{k: v for k, v in named.items() if v is not None}, **dict(overrides or {}))


@gin.configurable
def loader_config(sequence_length: int = gin.REQUIRED, batch_size: int = gin.REQUIRED, seed: int = 0,
                  num_workers: int = 0, read_threads: int = 1, process_index: int | None = None,
                  process_count: int | None = None) -> LoaderConfig:
    """batch_size is per process. process_index/process_count: the loader's view of the processes (None: jax's);
    process_count=1 makes every process read the whole stream (parity tests against a one-process run)."""
    return LoaderConfig(sequence_length=sequence_length, batch_size=batch_size, seed=seed, num_workers=num_workers,
                        read_threads=read_threads, process_index=process_index, process_count=process_count)


def _optimizer_config(**fields: Any) -> OptimizerConfig:
    return OptimizerConfig(**fields)


# The allowlist makes gin check parameter names (a bare **fields would accept typos until the call).
optimizer_config = gin.configurable("optimizer_config", allowlist=list(OptimizerConfig.__dataclass_fields__))(
    _optimizer_config)


@gin.configurable
def loss_config(vocab_chunk_size: int = 0, token_chunk_size: int = 0, head_dtype: str | None = None) -> LossConfig:
    """The head + loss execution (train/loss.py): vocab_chunk_size > 0 fuses them over vocabulary chunks,
    token_chunk_size > 0 over token chunks (train/loss.py); head_dtype="float32" computes the fused head's
    matmuls in float32 (faster than bfloat16 on CPU)."""
    return LossConfig(vocab_chunk_size=vocab_chunk_size, token_chunk_size=token_chunk_size, head_dtype=head_dtype)


@gin.configurable
def train(workdir: str, model: ModelConfig = gin.REQUIRED, mixture: str = gin.REQUIRED,
          total_steps: int = gin.REQUIRED, data_sources: Sequence[Sequence[Any]] = (), recipe_groups: dict | None = None,
          loader: LoaderConfig = gin.REQUIRED, optimizer: OptimizerConfig = gin.REQUIRED,
          mesh: sharding.MeshConfig | None = None, checkpoint_every: int = 100, keep_checkpoints: int = 3,
          log_every: int = 1, init_from: str | None = None, seed: int = 0,
          inference_overrides: dict | None = None, loss: LossConfig | None = None,
          async_checkpoints: bool = True, peak_flops_per_device: float | None = None,
          restart_if_unrestorable: bool = False, allow_schedule_change: bool = False,
          stall_timeout_seconds: float | None = 600.0, eval_every: int = 0, eval_batches: int = 4,
          compilation_cache_dir: str | None = None, wandb_project: str | None = None) -> tuple[TrainerConfig, dict]:
    """The run's TrainerConfig. data_sources: (name, dataset_dir, kind[, fim_rate]) tuples, registered as tasks;
    recipe_groups: {"code": ..., "text": ..., "math": ..., "repo": ...} for tasks.register_recipe_mixtures;
    inference_overrides: model fields for serving the result (stage 2's YaRN for 131,072 tokens), written to
    WORKDIR/inference_overrides.json beside the checkpoints (training itself runs without them);
    peak_flops_per_device: the MFU denominator per device (None: train/peak.py's chip table or CPU measurement);
    restart_if_unrestorable: start again from step 0 when the workdir's checkpoints exist but none restores (else
    the run stops); allow_schedule_change: resume although total_steps or the optimizer config changed;
    stall_timeout_seconds: a multi-process run in which no step finished for this long stops (train/watchdog.py);
    eval_every/eval_batches: held-out loss every N steps (0 = off) over that many validation batches
    (train/evaluation.py); compilation_cache_dir: jax's persistent compilation cache (None: off);
    wandb_project: also log to Weights & Biases (train/loggers.py)."""
    sources = tuple(DataSource(*entry) for entry in data_sources)
    config = TrainerConfig(workdir=workdir, model=model, mixture=mixture, total_steps=total_steps, loader=loader,
                           optimizer=optimizer, data_sources=sources, recipe_groups=recipe_groups, seed=seed,
                           checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=log_every,
                           init_from=init_from, mesh=mesh or sharding.MeshConfig(fsdp=-1), loss=loss or LossConfig(),
                           async_checkpoints=async_checkpoints, peak_flops_per_device=peak_flops_per_device,
                           restart_if_unrestorable=restart_if_unrestorable,
                           allow_schedule_change=allow_schedule_change,
                           stall_timeout_seconds=stall_timeout_seconds, eval_every=eval_every,
                           eval_batches=eval_batches, compilation_cache_dir=compilation_cache_dir,
                           wandb_project=wandb_project)
    if inference_overrides:
        model.replace(**inference_overrides)  # fails here, before any work, if a field is wrong
    return config, dict(inference_overrides or {})


def parse(gin_files: Sequence[str], bindings: Sequence[str], placeholders: dict[str, str] | None = None) -> None:
    """Parses the files, then the bindings; a binding of a macro no file uses (a typo) is a GinConfigError.
    placeholders: macro -> gin value, bound only to macros the files and bindings leave %gin.REQUIRED (the
    ahead-of-time compile, `qwencoder_jax.aot`, needs no data directories)."""
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    with _quiet_gin_includes():
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
    gin_check.check_macros(bindings)
    for macro, value in (placeholders or {}).items():
        if _is_required(macro):
            gin.parse_config(f"{macro} = {value}")
    gin.finalize()


def _is_required(macro: str) -> bool:
    try:
        value = gin.query_parameter(f"{macro}/macro.value")
    except ValueError:  # not a macro of this config
        return False
    return repr(value) == "%gin.REQUIRED"  # gin spells an unset REQUIRED macro as a reference to gin.REQUIRED


@contextlib.contextmanager
def _quiet_gin_includes():
    """gin logs `ERROR:root:Path not found: base.gin` for every include it then finds on the search path."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def build(workdir: str) -> tuple[TrainerConfig, dict]:
    """Calls the bound entry point: every configurable runs, every gin.REQUIRED is checked."""
    return train(workdir=workdir)
