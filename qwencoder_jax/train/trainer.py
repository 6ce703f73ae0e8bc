"""The training loop: data, the jitted step, checkpoints, metrics, signals. Everything impure lives here.

    result = Trainer(TrainerConfig(workdir=..., model=get_preset("tiny"), mixture="stage1_70_20_10", ...)).run()

WORKDIR/
  checkpoints/<step>/   orbax composite: params, opt_state, model_config (JSON), data (grain iterator), trainer
                        (JSON: step) -- `qwencoder_jax.checkpoints.load(WORKDIR)` reads the model from it
  metrics.jsonl         one object per logged step: step, loss, grad_norm, learning_rate, tokens_per_second,
                        step_time, mfu, tokens (loss-bearing tokens of the step), and per mixture source
                        `loss/<source>` (its tokens' mean cross-entropy, z-loss excluded; absent when the step
                        held none of its tokens) and `tokens/<source>`
                        and, every eval_every steps, the held-out `eval/loss`, `eval/loss/<source>`,
                        `eval/tokens`, `eval/seconds` (train/evaluation.py; docs/MONITORING.md)
  tensorboard/          event files of the same scalars (also to Weights & Biases with wandb_project: WORKDIR/wandb)

Behaviour:
- Metrics are fetched one step late: step s's metrics are read after step s+1 is dispatched, so the host never
  waits on the device for logging. Before a checkpoint at step s, s's metrics are read first (one sync every
  checkpoint_every steps), so a checkpoint is only written from a state known to be finite.
- NaN/inf loss or gradient norm: the run stops without saving; the result names the step and the last good
  checkpoint (the one a restart resumes from).
- SIGTERM (preemption): the current step finishes, a checkpoint is saved and waited for, the run returns cleanly.
- Resume: the latest checkpoint that restores completely is used (a damaged latest one is reported, moved aside
  to <step>.damaged, the previous one tried); orbax never lists unfinished (temporary) step directories. When
  checkpoints exist but none restores, the run stops with a ResumeError; it starts again from step 0 only with
  `restart_if_unrestorable=True`, and says so. A resume under another schedule (any optimizer field, e.g. its
  total_steps, which gin binds to TOTAL_STEPS; recorded in the `trainer` item) is refused unless
  `allow_schedule_change=True`. metrics.jsonl keeps one record per step: records after the step a run starts
  from are dropped before it logs again. `init_from` (a model checkpoint or a run's workdir) loads weights only
  and applies only when the workdir has no checkpoint yet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental.multihost_utils import sync_global_devices
from tqdm import tqdm

from qwencoder_jax import checkpoints, sharding
from qwencoder_jax.data import fim, loader, tasks
from qwencoder_jax.model.config import ModelConfig
from qwencoder_jax.model.transformer import Transformer
from qwencoder_jax.train import collective_order, loggers
from qwencoder_jax.train import peak as peak_lib
from qwencoder_jax.train import step as step_lib
from qwencoder_jax.train.evaluation import Evaluator
from qwencoder_jax.train.loss import LossConfig
from qwencoder_jax.train.optimizer import OptimizerConfig, make_optimizer, make_schedule
from qwencoder_jax.train.watchdog import Watchdog

log = logging.getLogger("qwencoder_jax.train")


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A dataset directory (FORMAT.md shards + manifest) registered as the task `name` before the loader runs."""

    name: str
    dataset_dir: str
    kind: str | None = None  # None: the manifest's kind
    fim_rate: float = 0.5  # share of code documents (or repositories) turned into FIM samples


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    workdir: str
    model: ModelConfig
    mixture: str  # a registered task or mixture name (e.g. "stage1_70_20_10" after register_recipe_mixtures)
    total_steps: int
    loader: loader.LoaderConfig = loader.LoaderConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    loss: LossConfig = LossConfig()  # plain or vocabulary-chunked head + loss (same numbers; see train/loss.py)
    data_sources: tuple[DataSource, ...] = ()  # registered before the loader is built
    # Groups for tasks.register_recipe_mixtures: {"code": name or {name: rate}, "text": ..., "math": ..., "repo": ...}.
    recipe_groups: Any = None
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    log_every: int = 1
    init_from: str | None = None
    mesh: sharding.MeshConfig = sharding.MeshConfig(fsdp=-1)
    num_devices: int | None = None  # None: every device; else the first num_devices (tests)
    # MFU denominator: peak_flops_per_second is the whole run's; else peak_flops_per_device (None: the chip's bf16
    # data-sheet peak on TPU/GPU, the measured f32 matmul peak on CPU) times the mesh's devices (train/peak.py)
    peak_flops_per_second: float | None = None
    peak_flops_per_device: float | None = None
    progress_bar: bool = True
    restart_if_unrestorable: bool = False  # checkpoints exist but none restores: start from step 0 (else stop)
    allow_schedule_change: bool = False  # resume although total_steps or the optimizer config changed
    # Multi-process runs: no step finished for this long (after the first) ends the process (train/watchdog.py).
    stall_timeout_seconds: float | None = 600.0
    # Held-out loss every eval_every steps (0 = off) over eval_batches fixed validation batches (train/evaluation.py).
    eval_every: int = 0
    eval_batches: int = 4
    compilation_cache_dir: str | None = None  # persistent XLA compilation cache (train/loggers.py); None: off
    wandb_project: str | None = None  # also log to Weights & Biases (train/loggers.py); None: TensorBoard only

    def __post_init__(self):
        if self.eval_every < 0 or self.eval_batches < 1:
            raise ValueError(f"TrainerConfig needs eval_every >= 0 and eval_batches >= 1; got {self.eval_every}, "
                             f"{self.eval_batches}")
        if self.total_steps < 1 or self.checkpoint_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError(f"TrainerConfig needs total_steps, checkpoint_every, log_every, keep_checkpoints >= 1; "
                             f"got {self.total_steps}, {self.checkpoint_every}, {self.log_every}, "
                             f"{self.keep_checkpoints}")


class ResumeError(RuntimeError):
    """The workdir's checkpoints cannot be resumed as configured (damaged, or another schedule)."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    final_step: int
    stop_reason: str  # "completed" | "non_finite" | "preempted"
    resumed_from: int | None
    last_good_checkpoint: int | None
    losses: dict[int, float]
    messages: tuple[str, ...]


def register_data(config: TrainerConfig) -> None:
    for source in config.data_sources:
        tasks.register_source(source.name, source.dataset_dir, source.kind, fim_config=fim.FimConfig(
            fim_rate=source.fim_rate, seed=config.seed), max_tokens=config.loader.sequence_length + 1)
    if config.recipe_groups:
        groups = dict(config.recipe_groups)
        tasks.register_recipe_mixtures(groups["code"], groups["text"], groups["math"], groups.get("repo"))


class Trainer:
    def __init__(self, config: TrainerConfig):
        self.config = config
        self.workdir = Path(config.workdir).absolute()
        self.messages: list[str] = []
        self._stop_requested = False

    # -- messages -----------------------------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        self.messages.append(message)
        log.info(message)  # printed once, below (a logging handler would repeat it)
        print(f"[trainer] {message}", file=sys.stderr, flush=True)

    def _check_collective_order(self, state, batch) -> None:
        """Multi-process CPU runs: one line when the compiled step may start its collectives in different orders
        on different processes (XLA:CPU would deadlock; train/collective_order.py). The step's own compile."""
        if self.mesh.devices.flat[0].platform != "cpu":
            return
        with sharding.activate(self.mesh):
            text = self.step_fn.jitted.lower(state, batch).compile().as_text()
        pairs = collective_order.unordered_collectives(text)
        if pairs:
            collective, loop = pairs[0]
            self._say(f"warning: the compiled step schedules {collective} after {loop} with no order between them "
                      f"({len(pairs)} such pair(s)); XLA:CPU processes may deadlock on them (docs/reliability.md)")

    # -- setup --------------------------------------------------------------------------------------------------
    def _build(self):
        config = self.config
        sizes = (config.mesh.data, config.mesh.fsdp, config.mesh.sequence, config.mesh.tensor)
        if config.num_devices:
            devices = jax.devices()[:config.num_devices]
        elif -1 not in sizes:  # a fully given mesh uses that many devices (e.g. one CPU device of several)
            devices = jax.devices()[:math.prod(sizes) * config.mesh.num_slices]
        else:
            devices = jax.devices()
        self.mesh = sharding.make_mesh(config.mesh, devices=devices)
        self.model = Transformer(config.model)
        self.optimizer = make_optimizer(config.optimizer)
        self.schedule = make_schedule(config.optimizer)
        self.abstract_state, self.shardings = step_lib.state_shardings(self.model, self.optimizer, self.mesh)
        self.source_names = loader.source_names(config.mixture)
        self.step_fn = step_lib.jit_train_step(
            self.model, self.optimizer, self.mesh, self.shardings, batch_keys=step_lib.BATCH_KEYS,
            accumulation_steps=config.optimizer.accumulation_steps, z_loss=config.optimizer.z_loss,
            loss_config=config.loss, num_sources=len(self.source_names), frozen=config.optimizer.frozen)
        self.batch_sharding = sharding.data_sharding(self.mesh, 2)
        options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                               enable_async_checkpointing=config.async_checkpoints, create=True)
        self.manager = ocp.CheckpointManager(self.workdir / "checkpoints", options=options)

    def _new_iterator(self):
        return loader.make_iterator(self.config.mixture, self.config.loader)

    def _target(self, tree, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

    def _schedule_record(self) -> dict:
        return {"total_steps": self.config.total_steps, "optimizer": dataclasses.asdict(self.config.optimizer)}

    def _check_schedule(self, step: int, saved: dict) -> None:
        """Refuses to resume under another schedule than the checkpoint's (unless allowed)."""
        if "total_steps" not in saved:  # written before the schedule was recorded
            return
        # The run's own total_steps may change (stop earlier, or go on, on the same schedule); the schedule may not.
        current = self._schedule_record()
        changed = []
        for name, value in current["optimizer"].items():
            before = saved.get("optimizer", {}).get(name, value)
            if before != value and not (isinstance(value, tuple) and list(value) == before):
                changed.append(f"optimizer.{name} {before} -> {value}")
        if not changed:
            return
        what = ", ".join(changed)
        if not self.config.allow_schedule_change:
            raise ResumeError(f"checkpoint step {step} in {self.workdir / 'checkpoints'} was trained under another "
                              f"schedule ({what}); resuming would change the learning rate mid-run. Use a new "
                              "workdir, or set train.allow_schedule_change=True to resume anyway")
        self._say(f"resuming step {step} under a changed schedule ({what}), as allow_schedule_change allows")

    def _restore_latest(self):
        """(state, iterator, step) from the newest checkpoint that restores, or None if there is none."""
        directory = self.workdir / "checkpoints"
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            iterator = self._new_iterator()
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(self._target(self.abstract_state.params, self.shardings.params)),
                    opt_state=ocp.args.StandardRestore(
                        self._target(self.abstract_state.opt_state, self.shardings.opt_state)),
                    trainer=ocp.args.JsonRestore(),
                    data=loader.restore_args(iterator)))
            except Exception as error:  # a damaged step: report it, move it aside, fall back to the one before
                aside = directory / f"{step}.damaged"
                cause = checkpoints.describe_restore_error(error)
                failures.append(f"step {step} ({cause})")
                self._say(f"checkpoint step {step} in {directory} could not be restored ({cause}); moved it to "
                          f"{aside.name} and trying the previous one")
                if jax.process_index() == 0:
                    # Out of orbax's way (the run will save this step number again), kept for inspection.
                    (directory / str(step)).rename(aside)
                sync_global_devices(f"damaged checkpoint {step}")
                self.manager.reload()
                continue
            self._check_schedule(step, restored["trainer"] or {})
            # orbax rebuilds optax's namedtuples as lists; put the values back into the real structure.
            opt_state = jax.tree.unflatten(jax.tree.structure(self.abstract_state.opt_state),
                                           jax.tree.leaves(restored["opt_state"]))
            state = step_lib.TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32), self.shardings.step),
                                        params=restored["params"], opt_state=opt_state)
            return state, iterator, step
        damaged = sorted(p.name for p in directory.glob("*.damaged")) if directory.is_dir() else []
        if failures or damaged:
            what = "; ".join(failures) or f"only damaged checkpoints ({', '.join(damaged)})"
            if not self.config.restart_if_unrestorable:
                raise ResumeError(f"no checkpoint in {directory} restores: {what}. Nothing good to resume from; "
                                  "set train.restart_if_unrestorable=True to start again from step 0")
            self._say(f"no checkpoint in {directory} restores ({what}); starting again from step 0 as "
                      "restart_if_unrestorable allows")
        return None

    def _fresh_state(self):
        if not self.config.init_from:
            return step_lib.init_train_state(self.model, self.optimizer, self.mesh, jax.random.key(self.config.seed))[0]
        # loaded weights only: no random parameters are made first (for a 0.5B model that was a second copy)
        params = checkpoints.load_params_sharded(
            self.config.init_from, self._target(self.abstract_state.params, self.shardings.params))
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.shardings.opt_state)(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), self.shardings.step)
        self._say(f"initialised weights from {self.config.init_from} (optimizer and data start fresh)")
        return step_lib.TrainState(step=step, params=params, opt_state=opt_state)

    def _save(self, step: int, state, iterator) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            model_config=ocp.args.JsonSave(self.config.model.to_dict()),
            trainer=ocp.args.JsonSave({"step": step, "mixture": self.config.mixture, **self._schedule_record()}),
            data=loader.checkpoint_args(iterator)), force=True)

    def _device_batch(self, batch: dict, step: int) -> dict:
        batch = dict(batch)
        weights = batch.pop("loss_mask").astype(np.float32)
        batch["loss_weights"] = weights
        return {key: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(batch[key]))
                for key in step_lib.BATCH_KEYS}

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        self.workdir.mkdir(parents=True, exist_ok=True)
        loggers.enable_compilation_cache(config.compilation_cache_dir, self._say)  # before the first compile
        register_data(config)
        self._build()
        evaluator = None
        if config.eval_every:
            evaluator = Evaluator.build(self.model, config.mixture, config.loader, config.loss, config.eval_batches,
                                        self.batch_sharding, self._say)
        restored = self._restore_latest()
        if restored is not None:
            state, iterator, start = restored
            self._say(f"resumed from checkpoint step {start}")
            resumed_from = start
        else:
            state, iterator, start, resumed_from = self._fresh_state(), self._new_iterator(), 0, None
        last_good = resumed_from
        peak = config.peak_flops_per_second or peak_lib.mesh_peak_flops(list(self.mesh.devices.flat),
                                                                        config.peak_flops_per_device)
        flops_per_token = config.model.flops_per_token(config.loader.sequence_length, training=True)
        tokens_per_step = config.loader.batch_size * config.loader.sequence_length * jax.process_count()

        previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        writer = loggers.open_writers(self.workdir, config, self._say) if jax.process_index() == 0 else None
        metrics_file = _open_metrics(self.workdir / "metrics.jsonl", start) if jax.process_index() == 0 else None
        progress = _progress_bar(config, start)
        watchdog = None
        if jax.process_count() > 1 and config.stall_timeout_seconds:
            watchdog = Watchdog(config.stall_timeout_seconds).start()
        losses: dict[int, float] = {}
        stop_reason, final_step = "completed", start
        pending = None  # (step, device metrics) not yet read
        last_time = time.perf_counter()

        def read(step_and_metrics, evaluate=None) -> bool:
            """Reads one step's metrics (blocking on it); logs them; False if they are not finite. evaluate: the
            step's eval pass, run after its metrics are read (timed apart from the steps) and logged with them."""
            nonlocal last_time
            step, metrics = step_and_metrics
            fetched = jax.device_get(metrics)
            values = {key: float(value) for key, value in fetched.items() if np.ndim(value) == 0}
            now = time.perf_counter()
            step_time, last_time = now - last_time, now
            losses[step] = values["loss"]
            if watchdog:
                watchdog.progress(step)
            if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
                return False
            if step % config.log_every == 0 or step == config.total_steps or evaluate:
                tokens_per_second = tokens_per_step / step_time
                record = {"step": step, "loss": values["loss"], "grad_norm": values["grad_norm"],
                          "learning_rate": float(self.schedule(step - 1)), "tokens": values["tokens"],
                          "tokens_per_second": tokens_per_second, "step_time": step_time,
                          "mfu": flops_per_token * tokens_per_second / peak}
                record.update(self._per_source(fetched))
                if evaluate:
                    record.update(evaluate())
                    last_time = time.perf_counter()  # the next step's time leaves the eval pass out
                if metrics_file:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                if writer:
                    writer.scalars(step, {k: v for k, v in record.items() if k != "step"})
                progress.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{tokens_per_second:.0f}")
            return True

        try:
            for step in range(start, config.total_steps):
                batch = self._device_batch(next(iterator), step)
                if step == start and jax.process_count() > 1:
                    self._check_collective_order(state, batch)
                state, metrics = self.step_fn(state, batch)
                if pending is not None and not read(pending):
                    stop_reason, final_step = "non_finite", pending[0]
                    pending = None
                    break
                pending, final_step = (step + 1, metrics), step + 1
                progress.update(1)
                if evaluator and (step + 1) % config.eval_every == 0:
                    ok = read(pending, evaluate=lambda: evaluator.evaluate(state.params))
                    pending = None
                    if not ok:
                        stop_reason = "non_finite"
                        break
                if (step + 1) % config.checkpoint_every == 0 or self._stop_requested:
                    ok = pending is None or read(pending)
                    pending = None
                    if not ok:
                        stop_reason = "non_finite"
                        break
                    self._save(step + 1, state, iterator)
                    last_good = step + 1
                if self._stop_requested:
                    stop_reason = "preempted"
                    self._say(f"SIGTERM: saved checkpoint step {step + 1} and stopping")
                    break
            if pending is not None and not read(pending):
                stop_reason, final_step = "non_finite", pending[0]
            elif stop_reason == "completed" and last_good != final_step:
                self._save(final_step, state, iterator)
                last_good = final_step
            if stop_reason == "non_finite":
                self._say(f"non-finite loss or gradient norm at step {final_step} (loss {losses.get(final_step)}); "
                          f"stopped without saving; the last good checkpoint is step {last_good}")
            self.manager.wait_until_finished()
        finally:
            if watchdog:
                watchdog.close()
            progress.close()
            if metrics_file:
                metrics_file.close()
            if writer:
                writer.close()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
            self.manager.close()
            if hasattr(iterator, "close"):
                iterator.close()
        return TrainResult(final_step=final_step, stop_reason=stop_reason, resumed_from=resumed_from,
                           last_good_checkpoint=last_good, losses=losses, messages=tuple(self.messages))

    def _per_source(self, fetched: dict) -> dict[str, float]:
        """loss/<source> and tokens/<source> from the step's per-source sums (index 0 = padding, not reported)."""
        if "tokens_by_source" not in fetched:
            return {}
        record = {}
        for index, name in enumerate(self.source_names, start=1):
            tokens = float(fetched["tokens_by_source"][index])
            record[f"tokens/{name}"] = tokens
            if tokens > 0:
                record[f"loss/{name}"] = float(fetched["loss_sum_by_source"][index]) / tokens
        return record

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_requested = True


def _open_metrics(path: Path, start: int):
    """metrics.jsonl for appending, without the records of steps after `start` (logged by an earlier run that
    stopped, or whose checkpoints were lost, after them): one record per step."""
    if path.exists():
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= start]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _NoProgress:
    def update(self, n=1): pass

    def set_postfix(self, **kwargs): pass

    def close(self): pass


class _ProgressLines:
    """Progress for a log file (stderr not a terminal): a plain line about every 5% of the run, not a bar."""

    def __init__(self, total: int, start: int):
        self.total, self.n, self.every, self.printed = total, start, max(1, -(-total // 20)), start

    def update(self, n=1):
        self.n += n

    def set_postfix(self, **values):  # called with the metrics of step self.n
        if self.n - self.printed >= self.every or (self.n == self.total and self.printed < self.total):
            self.printed = self.n
            shown = "".join(f" {key}={value}" for key, value in values.items())
            print(f"[train] step {self.n}/{self.total}{shown}", file=sys.stderr, flush=True)

    def close(self): pass


def _progress_bar(config: TrainerConfig, start: int):
    if not config.progress_bar or jax.process_index() != 0:
        return _NoProgress()
    if not sys.stderr.isatty():
        return _ProgressLines(config.total_steps, start)
    return tqdm(total=config.total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
