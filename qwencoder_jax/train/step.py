"""A pure, sharded training step: `train_step(state, batch) -> (state, metrics)` with the optax optimizer
of train/optimizer.py.

    model = Transformer(config)
    optimizer = make_optimizer(OptimizerConfig())        # train/optimizer.py
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=-1))
    state, state_shardings = init_train_state(model, optimizer, mesh, jax.random.key(0))
    step_fn = jit_train_step(model, optimizer, mesh, state_shardings)
    state, metrics = step_fn(state, batch)        # batch laid out by sharding.data_sharding(mesh)

Batches are dicts of [batch, length] arrays: `input_ids` and `targets` (already shifted), optionally
`segment_ids`, `positions` (packed rows), `loss_weights` and `source_ids` (1-based index of each token's mixture
source, 0 = none; with num_sources > 0 the metrics carry per-source loss sums and token counts). The loop (I/O,
checkpoints, metrics, signals) lives elsewhere and builds around this function; nothing here reads files or clocks.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from qwencoder_jax import sharding
from qwencoder_jax.model.transformer import output_projection
from qwencoder_jax.train.loss import (LossConfig, cross_entropy, fused_head_cross_entropy,
                                      token_chunked_head_cross_entropy)

BATCH_KEYS = ("input_ids", "targets", "segment_ids", "positions", "loss_weights", "source_ids")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def loss_fn(model: nn.Module, params: Any, batch: dict[str, jax.Array], z_loss: float = 0.0,
            loss_config: LossConfig = LossConfig(), num_sources: int = 0,
            differentiate: str = "loss") -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean token loss, stats). differentiate="objective_sum" when the gradient is taken of
    stats["objective_sum"] instead of the loss (microbatch accumulation; the token-chunked head needs to know)."""
    args = (batch["input_ids"], batch.get("segment_ids"), batch.get("positions"))
    loss_args = dict(weights_bt=batch.get("loss_weights"), z_loss=z_loss, source_ids_bt=batch.get("source_ids"),
                     num_sources=num_sources)
    if loss_config.token_chunk_size:
        x_btd = model.apply({"params": params}, *args, return_hidden=True)
        return token_chunked_head_cross_entropy(x_btd, output_projection(model.config, params), batch["targets"],
                                                chunk_size=loss_config.token_chunk_size,
                                                head_dtype=loss_config.head_dtype, differentiate=differentiate,
                                                **loss_args)
    if loss_config.vocab_chunk_size:
        x_btd = model.apply({"params": params}, *args, return_hidden=True)
        w_vd = output_projection(model.config, params).T  # tied: the embedding table itself, no copy
        return fused_head_cross_entropy(x_btd, w_vd, batch["targets"], chunk_size=loss_config.vocab_chunk_size,
                                        head_dtype=loss_config.head_dtype, **loss_args)
    if loss_config.head_dtype is not None:
        raise ValueError("LossConfig.head_dtype applies to the fused heads only; set vocab_chunk_size or "
                         "token_chunk_size > 0 as well")
    logits_btv = model.apply({"params": params}, *args)
    return cross_entropy(logits_btv, batch["targets"], **loss_args)


def loss_and_grads(model: nn.Module, params: Any, batch: dict[str, jax.Array]):
    """((loss, stats), grads) of the mean token loss: the part of the step the parity tests compare."""
    return jax.value_and_grad(lambda p: loss_fn(model, p, batch), has_aux=True)(params)


def accumulated_loss_and_grads(model: nn.Module, params: Any, batch: dict[str, jax.Array], accumulation_steps: int,
                               z_loss: float = 0.0, loss_config: LossConfig = LossConfig(), num_sources: int = 0,
                               frozen: tuple[str, ...] = ()):
    """loss_and_grads over `accumulation_steps` microbatches (a scan over the leading rows), normalised by the
    loss weight of the whole batch, so the result equals one pass over the batch up to summation order."""
    rows = batch["input_ids"].shape[0]
    if rows % accumulation_steps:
        raise ValueError(f"batch of {rows} rows does not split into {accumulation_steps} microbatches; make the "
                         "batch size a multiple of accumulation_steps")
    micro = jax.tree.map(lambda x: x.reshape(accumulation_steps, rows // accumulation_steps, *x.shape[1:]), batch)

    def sums(p, microbatch):
        p = stop_frozen(p, frozen) if frozen else p
        _, stats = loss_fn(model, p, microbatch, z_loss, loss_config, num_sources, differentiate="objective_sum")
        return stats["objective_sum"], stats

    def body(carry, microbatch):
        grads_sum, stats_sum = carry
        (_, stats), grads = jax.value_and_grad(sums, has_aux=True)(params, microbatch)
        return (jax.tree.map(jnp.add, grads_sum, grads), jax.tree.map(jnp.add, stats_sum, stats)), None

    zeros_stats = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(
        lambda: loss_fn(model, params, jax.tree.map(lambda x: x[0], micro), z_loss, loss_config, num_sources)[1]))
    (grads_sum, stats), _ = jax.lax.scan(body, (jax.tree.map(jnp.zeros_like, params), zeros_stats), micro)
    denominator = jnp.maximum(stats["weight_sum"], 1.0)
    loss = (stats["loss_sum"] + z_loss * stats["z_loss_sum"]) / denominator
    return (loss, stats), jax.tree.map(lambda g: g / denominator, grads_sum)


def stop_frozen(params: Any, frozen: tuple[str, ...]) -> Any:
    """`params` with the gradient stopped under the `frozen` top-level names: their gradient is a symbolic zero,
    so the step computes none (the frozen embedding of a large vocabulary costs no gradient memory)."""
    return {name: jax.lax.stop_gradient(value) if name in frozen else value for name, value in params.items()}


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, accumulation_steps: int = 1,
                    z_loss: float = 0.0, loss_config: LossConfig = LossConfig(), num_sources: int = 0,
                    frozen: tuple[str, ...] = ()) -> Callable:
    """The pure step function (unjitted, so callers can wrap it). accumulation_steps > 1 scans over microbatches
    (one optimizer update per call); z_loss adds the log-normaliser penalty to the loss being minimised;
    loss_config picks the plain or the vocabulary-chunked head + loss (same result); num_sources > 0 adds
    `loss_sum_by_source` and `tokens_by_source` ([num_sources + 1], index 0 = no source) to the metrics;
    `frozen` top-level parameters get no gradient (pair it with OptimizerConfig.frozen)."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        if accumulation_steps > 1:
            (loss, stats), grads = accumulated_loss_and_grads(model, state.params, batch, accumulation_steps, z_loss,
                                                              loss_config, num_sources, frozen)
        else:
            (loss, stats), grads = jax.value_and_grad(
                lambda p: loss_fn(model, stop_frozen(p, frozen) if frozen else p, batch, z_loss, loss_config,
                                  num_sources), has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": stats["weight_sum"]}
        if num_sources > 0:
            metrics["loss_sum_by_source"] = stats["loss_sum_by_source"]
            metrics["tokens_by_source"] = stats["weight_sum_by_source"]
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def _example_inputs(sequence_length: int = 8):
    return (jnp.zeros((1, sequence_length), jnp.int32),)


def _opt_state_shardings(opt_state, params, param_shardings, replicated):
    """Each optimizer-state leaf laid out like the parameter it tracks: the one whose path ends its own path (the
    trailing dictionary keys) with the same shape, e.g. Adam's moments, also inside multi_transform's partitions.
    Anything else (step counts, Adafactor's factored row and column vectors) is replicated."""
    by_path = {}
    for (path, leaf), leaf_sharding in zip(jax.tree_util.tree_leaves_with_path(params),
                                           jax.tree.leaves(param_shardings)):
        by_path[tuple(key.key for key in path)] = (leaf.shape, leaf_sharding)

    def layout(path, leaf):
        keys = []
        for key in reversed(path):
            if not isinstance(key, jax.tree_util.DictKey):
                break
            keys.insert(0, key.key)
        shape, leaf_sharding = by_path.get(tuple(keys), (None, replicated))
        return leaf_sharding if shape == leaf.shape else replicated

    return jax.tree_util.tree_map_with_path(layout, opt_state)


def state_shardings(model: nn.Module, optimizer: optax.GradientTransformation, mesh,
                    rules=sharding.LOGICAL_AXIS_RULES) -> tuple[TrainState, TrainState]:
    """(abstract TrainState, its NamedShardings): parameters from the model's logical axes, optimizer moments
    laid out like the parameters they track, scalars (step, counts) replicated. Entirely abstract (eval_shape):
    it serves meshes of devices this host cannot address (ahead-of-time compiles for a TPU topology)."""
    boxed = sharding.abstract_boxed_params(model, jax.ShapeDtypeStruct((1, 8), jnp.int32))  # abstract: no arrays
    param_shardings = sharding.shard_params(boxed, mesh, rules)
    abstract_params = nn.meta.unbox(boxed)
    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
    replicated = sharding.replicated(mesh)
    opt_shardings = _opt_state_shardings(abstract_opt_state, abstract_params, param_shardings, replicated)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                          opt_state=abstract_opt_state)
    shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
    return abstract, shardings


def init_train_state(model: nn.Module, optimizer: optax.GradientTransformation, mesh, rng: jax.Array,
                     rules=sharding.LOGICAL_AXIS_RULES) -> tuple[TrainState, TrainState]:
    """A TrainState created directly in its sharded layout (no device ever holds the whole model)."""
    _, shardings = state_shardings(model, optimizer, mesh, rules)

    def init(rng):
        params = nn.meta.unbox(model.init(rng, *_example_inputs())["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    # Deliberately not under sharding.activate: flax's DenseGeneral initialises a flat kernel and reshapes it,
    # and the rules would pin the flat array with the 3-axis spec. out_shardings alone lays the result out.
    state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings


def batch_shardings(mesh, batch: dict[str, Any], rules=sharding.LOGICAL_AXIS_RULES) -> dict[str, Any]:
    return {key: sharding.data_sharding(mesh, len(value.shape), rules) for key, value in batch.items()}


def jit_train_step(model: nn.Module, optimizer: optax.GradientTransformation, mesh, shardings: TrainState,
                   batch_keys: tuple[str, ...] = ("input_ids", "targets"), rules=sharding.LOGICAL_AXIS_RULES,
                   donate: bool = True, accumulation_steps: int = 1, z_loss: float = 0.0,
                   loss_config: LossConfig = LossConfig(), num_sources: int = 0,
                   frozen: tuple[str, ...] = ()) -> Callable:
    """The step jitted with explicit in/out shardings; calls run under the mesh and the rules so the model's
    activation constraints and the splash backend's shard_map see them."""
    unknown = sorted(set(batch_keys) - set(BATCH_KEYS))
    if unknown:
        raise ValueError(f"unknown batch keys {unknown}; a batch holds some of {BATCH_KEYS}")
    batch_sharding = {key: sharding.data_sharding(mesh, 2, rules) for key in batch_keys}
    replicated = sharding.replicated(mesh)
    train_step = make_train_step(model, optimizer, accumulation_steps, z_loss, loss_config, num_sources, frozen)
    # Every metric is replicated (a sharding prefix covers the whole metrics dict).
    jitted = jax.jit(train_step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, replicated),
                     donate_argnums=(0,) if donate else ())

    def step(state: TrainState, batch: dict[str, jax.Array]):
        with sharding.activate(mesh, rules):
            return jitted(state, batch)

    step.jitted = jitted  # for .lower(...) in memory planning
    return step
