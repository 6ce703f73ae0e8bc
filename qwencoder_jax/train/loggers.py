"""Where a run's scalars go (TensorBoard always, Weights & Biases on request) and the persistent compilation cache.

    writers = open_writers(workdir, trainer_config, say)   # TensorBoard under WORKDIR/tensorboard (+ wandb)
    writers.scalars(step, {"loss": 2.3, "eval/loss": 2.5})
    writers.close()

Weights & Biases (`train.wandb_project`): the `wandb` package's own run, its files under WORKDIR/wandb; the mode
follows wandb's environment (WANDB_MODE=offline writes the run locally, for `wandb sync` later; no network).
The compilation cache (`train.compilation_cache_dir`): jax's persistent cache, set before the first compile, so
a second run of the same program loads its executables instead of compiling them (jax caches compiles that took
at least jax_persistent_cache_min_compile_time_secs, 1 s by default).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path
from typing import Callable

import jax


def enable_compilation_cache(directory: str | None, say: Callable[[str], None]) -> None:
    """Points jax's persistent compilation cache at `directory` (created; `~` expanded); None leaves jax as is."""
    if not directory:
        return
    path = Path(os.path.expanduser(directory)).absolute()
    path.mkdir(parents=True, exist_ok=True)
    current = jax.config.jax_compilation_cache_dir
    if current and Path(current).absolute() != path:
        say(f"compilation cache: this process already uses {current}; {path} is ignored")
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    say(f"compilation cache: {path}")


class TensorBoardWriter:
    """TensorBoard scalars through the tensorboard package's own event writer: no TensorFlow import (which costs
    seconds and, on a CPU-only host, logs a CUDA probe failure)."""

    def __init__(self, directory: Path):
        # tensorboard loads only where events are written (process 0 of a run)
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(str(directory))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        # tensorboard loads only where events are written (process 0 of a run)
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=name, simple_value=float(value))
                                             for name, value in values.items()])
        self._writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


class WandbWriter:
    """A Weights & Biases run named after the workdir; its id is kept in WORKDIR/wandb_run_id, so a resumed run
    continues the same wandb run."""

    def __init__(self, workdir: Path, project: str, config: dict):
        try:
            # wandb is optional: only runs with wandb_project need it
            import wandb
        except ImportError as error:
            raise RuntimeError("train.wandb_project is set but the wandb package is not installed "
                               "(pip install the version pinned in requirements.txt)") from error
        id_file = workdir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        self._run = wandb.init(project=project, dir=str(workdir), name=workdir.name, id=run_id, resume="allow",
                               config=config)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def close(self) -> None:
        self._run.finish()


class Writers:
    def __init__(self, writers: list):
        self.writers = writers

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for writer in self.writers:
            writer.scalars(step, values)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def open_writers(workdir: Path, config, say: Callable[[str], None]) -> Writers:
    """TensorBoard under workdir/tensorboard, and a wandb run when config.wandb_project is set."""
    writers: list = [TensorBoardWriter(workdir / "tensorboard")]
    if config.wandb_project:
        # wandb's config holds JSON values: the trainer config, nested dataclasses as dicts.
        flat = json.loads(json.dumps(dataclasses.asdict(config), default=str))
        writers.append(WandbWriter(workdir, config.wandb_project, flat))
        say(f"logging to Weights & Biases project {config.wandb_project!r} "
            f"(mode {os.environ.get('WANDB_MODE', 'online')}, files under {workdir / 'wandb'})")
    return Writers(writers)
