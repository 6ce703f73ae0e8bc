"""Sharding invariants on 8 fake CPU devices: sharded == unsharded (loss and gradients, both attention backends),
context-parallel splash attention == one device (both query layouts), FSDP really divides parameter + optimizer
memory, no involuntary rematerialisation, bad layouts fail with errors that name the problem, and gin overrides
change the mesh."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwencoder_jax import sharding
from qwencoder_jax.model import attention
from qwencoder_jax.model.config import CONTEXT_PARALLEL_LAYOUTS, ModelConfig
from qwencoder_jax.model.transformer import Transformer, init_params
from qwencoder_jax.train import step as train_step_lib
from qwencoder_jax.train.optimizer import OptimizerConfig, make_optimizer


def per_device_bytes(tree: Any) -> int:
    """The largest number of bytes any one device holds of a tree of jax arrays (from their actual shards)."""
    totals: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return max(totals.values()) if totals else 0

# hidden 64, 2 layers, 8 query / 4 key-value heads: every head count divides a tensor axis of 4.
CONFIG = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8,
                     intermediate_size=128, tie_embeddings=False, rope_theta=10_000.0, splash_block_size=128)
BATCH, LENGTH = 8, 128

# (data, fsdp, tensor) as the issue lists them; sequence stays 1.
MESH_SHAPES = [(8, 1, 1), (1, 8, 1), (1, 2, 4), (2, 2, 2)]


def mesh_of(data, fsdp, tensor, sequence=1):
    return sharding.make_mesh(sharding.MeshConfig(data=data, fsdp=fsdp, sequence=sequence, tensor=tensor))


@functools.lru_cache(maxsize=None)
def params_and_batch(length=LENGTH, batch_size=BATCH, document_starts=(0, 50)):
    params = init_params(CONFIG, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    ids = jnp.asarray(np.random.default_rng(0).integers(0, CONFIG.vocab_size, (batch_size, length + 1)), jnp.int32)
    # packed documents (ids 1, 2, ...), so segment ids reach every backend; positions restart per document
    index_t = np.arange(length)
    document_t = np.searchsorted(np.asarray(document_starts), index_t, side="right")
    starts_t = np.asarray(document_starts)[document_t - 1]
    segment_ids = jnp.asarray(np.repeat(document_t[None], batch_size, 0), jnp.int32)
    positions = jnp.asarray(np.repeat((index_t - starts_t)[None], batch_size, 0), jnp.int32)
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": segment_ids, "positions": positions}
    return params, batch


@functools.lru_cache(maxsize=None)
def unsharded_loss_and_grads(backend, *batch_args):
    model = Transformer(CONFIG.replace(attention_backend=backend))
    params, batch = params_and_batch(*batch_args)
    (loss, _), grads = jax.jit(functools.partial(train_step_lib.loss_and_grads, model))(params, batch)
    return loss, grads


def sharded_loss_and_grads(backend, mesh, *batch_args):
    model = Transformer(CONFIG.replace(attention_backend=backend))
    params, batch = params_and_batch(*batch_args)
    boxed = sharding.abstract_boxed_params(model, batch["input_ids"][:1])
    param_shardings = sharding.shard_params(boxed, mesh)
    batch_shardings = train_step_lib.batch_shardings(mesh, batch)
    params = jax.device_put(params, param_shardings)
    batch = jax.device_put(batch, batch_shardings)
    fn = jax.jit(functools.partial(train_step_lib.loss_and_grads, model),
                 in_shardings=(param_shardings, batch_shardings),
                 out_shardings=((sharding.replicated(mesh), None), param_shardings))
    with sharding.activate(mesh):
        (loss, _), grads = fn(params, batch)
    return loss, grads, param_shardings


def relative_error(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))  # numpy: the two sides live on different devices
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(y))) + 1e-12))
               for x, y in pairs)


@pytest.mark.parametrize("backend", ["xla", "splash"])
@pytest.mark.parametrize("shape", MESH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_loss_and_gradients_match_one_device(backend, shape):
    reference_loss, reference_grads = unsharded_loss_and_grads(backend)
    loss, grads, param_shardings = sharded_loss_and_grads(backend, mesh_of(*shape))
    assert abs(float(loss) - float(reference_loss)) <= 1e-5 * abs(float(reference_loss))
    assert relative_error(grads, reference_grads) <= 1e-5
    # the gradients come back in the parameters' layout
    for grad, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(param_shardings)):
        assert grad.sharding.is_equivalent_to(expected, grad.ndim)


def test_splash_runs_under_shard_map_when_a_mesh_is_active():
    model = Transformer(CONFIG.replace(attention_backend="splash"))
    params, batch = params_and_batch()
    mesh = mesh_of(1, 2, 4)
    with sharding.activate(mesh):
        text = jax.jit(lambda p, b: model.apply({"params": p}, b["input_ids"])).lower(params, batch).as_text()
    assert "manual_computation" in text  # shard_map lowers to a Shardy manual computation


def test_fsdp_divides_parameter_and_optimizer_memory():
    model = Transformer(CONFIG)
    optimizer = make_optimizer(OptimizerConfig(schedule="constant"))
    one_device = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1, 1), sharding.MESH_AXES)
    full_state, _ = train_step_lib.init_train_state(model, optimizer, one_device, jax.random.key(0))
    fsdp_state, _ = train_step_lib.init_train_state(model, optimizer, mesh_of(1, 8, 1), jax.random.key(0))
    unsharded = per_device_bytes((full_state.params, full_state.opt_state))
    per_device = per_device_bytes((fsdp_state.params, fsdp_state.opt_state))
    assert per_device <= unsharded / 8 * 1.05, (per_device, unsharded)
    # and it is the same state, only laid out differently
    assert relative_error(fsdp_state.params, full_state.params) == 0.0


def test_train_step_is_the_same_on_every_mesh(capfd):
    model = Transformer(CONFIG)
    optimizer = make_optimizer(OptimizerConfig(peak_learning_rate=1e-2, schedule="constant"))
    params, batch = params_and_batch()
    batch = {"input_ids": batch["input_ids"], "targets": batch["targets"]}
    losses = {}
    for shape in [(1, 1, 1), (2, 2, 2)]:
        devices = jax.devices()[:int(np.prod(shape))]
        mesh = sharding.make_mesh(sharding.MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2]), devices)
        state, shardings = train_step_lib.init_train_state(model, optimizer, mesh, jax.random.key(0))
        step_fn = train_step_lib.jit_train_step(model, optimizer, mesh, shardings)
        placed = jax.device_put(batch, train_step_lib.batch_shardings(mesh, batch))
        losses[shape] = []
        for _ in range(3):
            state, metrics = step_fn(state, placed)
            losses[shape].append(float(metrics["loss"]))
        assert int(state.step) == 3
    np.testing.assert_allclose(losses[(2, 2, 2)], losses[(1, 1, 1)], rtol=1e-5)
    assert losses[(1, 1, 1)][-1] < losses[(1, 1, 1)][0]
    # XLA's partitioner warns (on stderr, from C++) when a layout change forces it to recompute an op in full on
    # every device; the embedding lookup used to do that on (data, fsdp, tensor) meshes
    assert "Involuntary full rematerialization" not in capfd.readouterr().err


# --- configuration and errors ------------------------------------------------------------------------------


def test_mesh_fill_and_axis_order():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2}
    # tensor varies fastest: neighbouring device ids share a tensor group
    assert [d.id for d in mesh.devices[0, 0, 0]] == [0, 1]


def test_mesh_shape_that_does_not_match_device_count_names_the_sizes():
    with pytest.raises(ValueError, match=r"needs 6 devices per slice but there are 8"):
        sharding.make_mesh(sharding.MeshConfig(data=3, fsdp=2))
    with pytest.raises(ValueError, match=r"cannot fill its -1 axis.*multiply to 3"):
        sharding.make_mesh(sharding.MeshConfig(data=3, fsdp=-1))
    with pytest.raises(ValueError, match=r"at most one axis may be -1"):
        sharding.MeshConfig(data=-1, fsdp=-1)


def test_indivisible_dimension_names_parameter_axis_and_sizes():
    # 4 key/value heads cannot split over tensor=8
    model = Transformer(CONFIG)
    boxed = sharding.abstract_boxed_params(model, jnp.zeros((1, 8), jnp.int32))
    with pytest.raises(ValueError, match=r"k_proj.*size 4, which mesh axes tensor \(size 8\) do not divide"):
        sharding.shard_params(boxed, mesh_of(1, 1, 8))


def test_abstract_mesh_plans_a_pod_layout_without_devices():
    abstract_mesh = sharding.make_abstract_mesh(sharding.MeshConfig(fsdp=-1, tensor=4), 256)
    assert dict(abstract_mesh.shape) == {"data": 1, "fsdp": 64, "sequence": 1, "tensor": 4}
    model = Transformer(CONFIG)
    boxed = sharding.abstract_boxed_params(model, jnp.zeros((1, 8), jnp.int32))
    shardings = sharding.shard_params(boxed, sharding.make_abstract_mesh(sharding.MeshConfig(fsdp=-1), 64))
    embedding = shardings["embed"]["embedding"]
    assert embedding.shard_shape((256, 64)) == (256, 1)


def test_gin_overrides_change_the_mesh():
    gin = pytest.importorskip("gin")
    from pathlib import Path
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(Path(__file__).resolve().parents[2] / "gin" / "mesh.gin")],
                                            ["MESH_SHAPE = (2, 2, 1, 2)"])
        config = gin.get_configurable("qwencoder_jax.sharding.mesh_config_from_shape")()
        assert config == sharding.MeshConfig(data=2, fsdp=2, sequence=1, tensor=2)
        assert dict(sharding.make_mesh(config).shape) == {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2}
    finally:
        gin.clear_config()


def test_sequence_axis_shards_activations_for_the_xla_backend():
    reference_loss, reference_grads = unsharded_loss_and_grads("xla")
    loss, grads, _ = sharded_loss_and_grads("xla", mesh_of(1, 4, 1, sequence=2))
    assert abs(float(loss) - float(reference_loss)) <= 1e-5 * abs(float(reference_loss))
    assert relative_error(grads, reference_grads) <= 1e-5


# Context parallelism: (data, fsdp, sequence, tensor) meshes with the sequence sharded; each shard holds 128 tokens
# (one kernel block) and the packed documents begin and end inside shards, so every boundary case is met: a
# document continuing from the previous shard, one spanning whole shards, one ending mid-shard.
# Interpret-mode splash makes each case ~25-50 s on 2 cores: the mixed mesh runs by default, the others are slow.
CONTEXT_PARALLEL_CASES = [
    pytest.param((1, 4, 2, 1), 256, 4, (0, 100, 200), marks=pytest.mark.slow),
    pytest.param((1, 2, 4, 1), 512, 2, (0, 100, 300, 450), marks=pytest.mark.slow),
    ((2, 1, 2, 2), 256, 2, (0, 60, 190)),
]


@pytest.mark.parametrize("shape,length,batch_size,document_starts", CONTEXT_PARALLEL_CASES,
                         ids=["fsdp4-sequence2", "fsdp2-sequence4", "data2-sequence2-tensor2"])
def test_context_parallel_splash_matches_one_device(shape, length, batch_size, document_starts):
    data, fsdp, sequence, tensor = shape
    batch_args = (length, batch_size, document_starts)
    reference_loss, reference_grads = unsharded_loss_and_grads("xla", *batch_args)
    mesh = mesh_of(data, fsdp, tensor, sequence=sequence)
    loss, grads, _ = sharded_loss_and_grads("splash", mesh, *batch_args)
    assert abs(float(loss) - float(reference_loss)) <= 1e-5 * abs(float(reference_loss))
    assert relative_error(grads, reference_grads) <= 1e-5


@pytest.mark.parametrize("layout", CONTEXT_PARALLEL_LAYOUTS)
def test_context_parallel_attention_layouts_match_the_reference(layout):
    """The attention op alone over 4 sequence shards (a non-trivial zig-zag exchange), value and gradients."""
    length, batch_size = 512, 2
    q_key, k_key, v_key = jax.random.split(jax.random.key(3), 3)
    q_bthe = jax.random.normal(q_key, (batch_size, length, 8, 8))
    k_bske, v_bske = (jax.random.normal(key, (batch_size, length, 4, 8)) for key in (k_key, v_key))
    segment_ids_bt = jnp.asarray(np.arange(length)[None].repeat(batch_size, 0) // 90 + 1, jnp.int32)

    def objective(attend_fn, q, k, v):
        out_bthe = attend_fn(q, k, v, segment_ids_bt)
        return jnp.sum(out_bthe * jnp.cos(out_bthe))  # a non-linear read-out, so every output gets its own cotangent

    reference = jax.value_and_grad(functools.partial(objective, attention.xla_attention), argnums=(0, 1, 2))
    config = CONFIG.replace(attention_backend="splash", context_parallel_layout=layout)
    splash_attend = functools.partial(attention.sharded_splash_attention, config)
    sharded = jax.jit(jax.value_and_grad(functools.partial(objective, splash_attend), argnums=(0, 1, 2)))
    expected_value, expected_grads = reference(q_bthe, k_bske, v_bske)
    mesh = mesh_of(1, 2, 1, sequence=4)
    with sharding.activate(mesh):
        value, grads = sharded(q_bthe, k_bske, v_bske)
        text = sharded.lower(q_bthe, k_bske, v_bske).as_text()
    assert abs(float(value) - float(expected_value)) <= 1e-5 * abs(float(expected_value))
    assert relative_error(grads, expected_grads) <= 1e-5
    # keys are gathered, never whole activations; only the zig-zag layout trades query halves
    assert "all_gather" in text and ("collective_permute" in text) == (layout == "zigzag")


def test_context_parallel_splash_names_an_indivisible_shard_length():
    with pytest.raises(ValueError, match=r"per-device sequence length that is a multiple of 128 .*, got 64"):
        sharded_loss_and_grads("splash", mesh_of(1, 4, 1, sequence=2))  # 128 tokens / 2 shards


def test_multislice_layout_puts_the_dcn_axis_across_slices():
    config = sharding.MeshConfig(fsdp=-1, tensor=4, num_slices=2)
    assert config.resolve(256) == ((1, 32, 1, 4), (2, 1, 1, 1))
    assert dict(sharding.make_abstract_mesh(config, 256).shape) == {"data": 2, "fsdp": 32, "sequence": 1, "tensor": 4}
    with pytest.raises(ValueError, match="do not split into num_slices=3"):
        sharding.MeshConfig(num_slices=3).resolve(8)


def test_shard_params_refuses_unboxed_params():
    with pytest.raises(ValueError, match="nn.Partitioned logical-axis metadata"):
        sharding.shard_params(params_and_batch()[0], mesh_of(1, 8, 1))


def test_distributed_config_from_env_and_errors(monkeypatch):
    from qwencoder_jax import distributed
    monkeypatch.setenv(distributed.COORDINATOR_ENV, "127.0.0.1:1234")
    monkeypatch.setenv(distributed.NUM_PROCESSES_ENV, "4")
    monkeypatch.setenv(distributed.PROCESS_ID_ENV, "2")
    config = distributed.DistributedConfig.from_env(heartbeat_timeout_seconds=7)
    assert (config.coordinator_address, config.num_processes, config.process_id) == ("127.0.0.1:1234", 4, 2)
    assert config.heartbeat_timeout_seconds == 7
    with pytest.raises(ValueError, match=r"process_id 5 is outside \[0, num_processes=4\)"):
        distributed.DistributedConfig.from_env(process_id=5).validate()
    monkeypatch.delenv(distributed.PROCESS_ID_ENV)
    with pytest.raises(ValueError, match=r"\['process_id'\] not set"):
        distributed.initialize()


def test_sharding_benchmark_stays_runnable():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import sharding_step
    result = sharding_step.throughput("tiny", devices=2, batch=2, sequence=32, steps=1)
    assert result["tokens_per_second"] > 0
    # fsdp=8 holds an eighth of the state, up to the replicated norm scales
    full, eighth = sharding_step.unsharded_bytes("tiny"), sharding_step.rule_bytes("tiny", 8)
    assert full / 8 <= eighth <= full / 8 * 1.05
