"""The optimizer of a run: AdamW or Adafactor, its learning-rate schedule, clipping, the weight-decay mask and
frozen parameters, from one config.

    config = OptimizerConfig(peak_learning_rate=3e-4, schedule="cosine", warmup_steps=100, total_steps=10_000)
    optimizer = make_optimizer(config)          # an optax.GradientTransformation for train/step.py
    schedule = make_schedule(config)            # step -> learning rate, for logging on the host

Mixed precision is the model's business (ModelConfig.compute_dtype = "bfloat16" computes in bf16 while
param_dtype = "float32" keeps the master weights and so the Adam moments in f32); nothing here casts.

Lighter state for continuing a large model on a small host: `name="adafactor"` keeps factored second moments (a
row and a column vector per matrix whose two largest dimensions reach 128) and no first moment, instead of AdamW's
two parameter-sized moments; `frozen=("embed", "lm_head")` trains everything but the named top-level parameters
(they get no optimizer state, and the train step stops their gradients, so none is computed).

Gradient accumulation is a scan over microbatches inside the train step (step.py, `accumulation_steps`), not
optax.MultiSteps: one call of the step is then one optimizer update, the loss is normalised by the tokens of the
whole batch exactly, and the optimizer state holds no extra gradient buffer to checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "wsd", "constant")
OPTIMIZERS = ("adamw", "adafactor")
# Parameters whose path holds one of these names are not decayed: norm scales and biases (and nothing else;
# embeddings and kernels are decayed, as in Qwen/Llama-style recipes).
NO_DECAY_NAMES = ("bias", "scale", "norm")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    peak_learning_rate: float = 3e-4
    schedule: str = "cosine"  # cosine: warmup then cosine to the floor; wsd: warmup, stable, decay; constant
    warmup_steps: int = 0
    total_steps: int = 1000  # the schedule's length (cosine reaches its floor here; wsd ends its decay here)
    final_learning_rate_fraction: float = 0.1  # floor, as a fraction of the peak
    decay_fraction: float = 0.2  # wsd: the last fraction of total_steps decays linearly to the floor
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0  # global-norm clipping of the gradient; None: no clipping
    z_loss: float = 0.0  # weight of the log-normaliser penalty (PaLM's z-loss); applied by the train step
    accumulation_steps: int = 1  # microbatches per update (scan in the step); divides the batch size
    name: str = "adamw"  # adamw, or adafactor (factored second moments, no first moment: b1 is not used)
    frozen: tuple[str, ...] = ()  # top-level parameter names left untouched, e.g. ("embed", "lm_head")

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; choose one of {OPTIMIZERS}")
        if isinstance(self.frozen, str):
            object.__setattr__(self, "frozen", (self.frozen,))
        object.__setattr__(self, "frozen", tuple(self.frozen))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.total_steps < 1 or self.warmup_steps < 0 or self.warmup_steps > self.total_steps:
            raise ValueError(f"OptimizerConfig needs 0 <= warmup_steps ({self.warmup_steps}) <= total_steps "
                             f"({self.total_steps}) and total_steps >= 1")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must lie in [0, 1], got {self.decay_fraction}")
        if self.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {self.accumulation_steps}")


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    peak, warmup, total = config.peak_learning_rate, config.warmup_steps, config.total_steps
    floor = peak * config.final_learning_rate_fraction
    if config.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
                                    [warmup]) if warmup else optax.constant_schedule(peak)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=floor)
    decay_steps = int(round(config.decay_fraction * total))
    stable_steps = max(total - warmup - decay_steps, 0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)) if warmup else optax.constant_schedule(peak),
         optax.constant_schedule(peak),
         optax.linear_schedule(peak, floor, max(decay_steps, 1))],
        [warmup, warmup + stable_steps])


def _path_names(path) -> list[str]:
    return [str(getattr(key, "key", getattr(key, "name", key))) for key in path]


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: every parameter except those whose path names a bias or a norm."""
    def decayed(path, _):
        return not any(part in name for name in _path_names(path) for part in NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decayed, params)


def frozen_mask(params: Any, frozen: tuple[str, ...]) -> Any:
    """True for the parameters under one of the `frozen` top-level names; an unknown name is an error."""
    unknown = sorted(set(frozen) - set(params))
    if unknown:
        raise ValueError(f"frozen names {unknown} are not top-level parameters; choose among {sorted(params)}")
    return {name: jax.tree.map(lambda _: name in frozen, value) for name, value in params.items()}


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm's result, written as one multiply by a scalar factor.

    optax selects per element between the gradient and its scaled copy; XLA's CPU backend then writes the scaled
    copy of every gradient to memory and reads both back in each Adam moment update (an extra pass over the
    largest arrays of a small model, ~5 % of its step). A scalar factor fuses into the consumers instead.
    """
    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        factor = max_norm / jnp.maximum(norm, max_norm)  # 1 below the threshold
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW or Adafactor (schedule, masked decay), frozen parameters set apart. The
    gradient norm the step reports is pre-clipping."""
    transforms = [clip_by_global_norm(config.clip_norm)] if config.clip_norm else []
    if config.name == "adamw":
        transforms.append(optax.adamw(make_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                                      weight_decay=config.weight_decay, mask=decay_mask))
    else:  # Adafactor's scaling and update clipping, then decoupled decay and the learning rate as in AdamW
        transforms += [optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0),
                       optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
                       optax.scale_by_learning_rate(make_schedule(config))]
    optimizer = optax.chain(*transforms)
    if not config.frozen:
        return optimizer
    labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(params, config.frozen))
    return optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)
