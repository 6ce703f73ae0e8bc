"""The one sharding table: a device mesh with named axes, and the rules mapping logical axes onto it.

    mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
    with activate(mesh):                        # jax.set_mesh + flax's logical-axis rules
        shardings = shard_params(abstract_params_tree_with_metadata, mesh)
        logits = jax.jit(model.apply, ...)(...)  # the model's nn.with_logical_constraint calls now bind

Design notes: docs/TRAINING.md, section `qwencoder_jax/sharding.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "sequence", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a global batch is split over

# logical axis -> mesh axis (or axes, or None = replicated). Flax applies the first rule naming a logical axis.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters (and, through them, gradients and optimizer moments)
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    # activations
    ("act_batch", BATCH_AXES),
    ("act_length", "sequence"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Devices per mesh axis within one slice (ICI); -1 fills the axis with the devices left over.

    num_slices > 1 builds a multislice (hybrid) mesh: slices are joined over the data-centre network (DCN) along
    `dcn_axis`, so that axis has num_slices times its in-slice size. Only the cheap, once-per-step gradient
    reduction of data parallelism should cross DCN, hence the default `data`.
    """

    data: int = 1
    fsdp: int = -1
    sequence: int = 1
    tensor: int = 1
    num_slices: int = 1
    dcn_axis: str = "data"

    def __post_init__(self):
        shape = self.per_slice_shape()
        if sum(size == -1 for size in shape) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1 (fill), got {dict(zip(MESH_AXES, shape))}")
        for name, size in zip(MESH_AXES, shape):
            if size == 0 or size < -1:
                raise ValueError(f"MeshConfig.{name} must be a positive device count or -1 (fill), got {size}")
        if self.num_slices < 1:
            raise ValueError(f"MeshConfig.num_slices must be >= 1, got {self.num_slices}")
        if self.dcn_axis not in MESH_AXES:
            raise ValueError(f"MeshConfig.dcn_axis {self.dcn_axis!r} is not a mesh axis; choose one of {MESH_AXES}")

    def per_slice_shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in MESH_AXES)

    def resolve(self, num_devices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(ICI shape per slice, DCN shape) with -1 filled in, for `num_devices` devices in all."""
        if num_devices % self.num_slices:
            raise ValueError(f"{num_devices} devices do not split into num_slices={self.num_slices} equal slices")
        per_slice = num_devices // self.num_slices
        shape = list(self.per_slice_shape())
        known = math.prod(size for size in shape if size != -1)
        if -1 in shape:
            if per_slice % known:
                raise ValueError(f"mesh {self._describe(shape)} cannot fill its -1 axis: the other axes multiply to "
                                 f"{known}, which does not divide the {per_slice} devices per slice")
            shape[shape.index(-1)] = per_slice // known
        elif known != per_slice:
            raise ValueError(f"mesh {self._describe(shape)} needs {known} devices per slice but there are "
                             f"{per_slice} ({num_devices} devices / {self.num_slices} slices); set one axis to -1 "
                             f"to fill, or change the axis sizes")
        dcn = tuple(self.num_slices if name == self.dcn_axis else 1 for name in MESH_AXES)
        return tuple(shape), dcn

    @staticmethod
    def _describe(shape: Sequence[int]) -> str:
        return "(" + ", ".join(f"{name}={size}" for name, size in zip(MESH_AXES, shape)) + ")"


def make_mesh(config: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh with axes MESH_AXES (Auto axis types: GSPMD propagates shardings between our constraints)."""
    devices = list(jax.devices() if devices is None else devices)
    ici_shape, dcn_shape = config.resolve(len(devices))
    if config.num_slices > 1:
        device_array = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices=devices)
    elif len(devices) > 1 and devices[0].platform == "tpu":
        device_array = mesh_utils.create_device_mesh(ici_shape, devices=devices)  # follows the physical torus
    else:
        device_array = np.asarray(devices).reshape(ici_shape)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def make_abstract_mesh(config: MeshConfig, num_devices: int) -> jax.sharding.AbstractMesh:
    """A device-free mesh of `num_devices` devices (for planning layouts and memory of pods we do not have)."""
    ici_shape, dcn_shape = config.resolve(num_devices)
    shape = tuple(i * d for i, d in zip(ici_shape, dcn_shape))
    return jax.sharding.AbstractMesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


# --- logical specs -> shardings ---------------------------------------------------------------------------


def _mesh_axis_size(mesh, mesh_axes) -> int:
    if mesh_axes is None:
        return 1
    names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    return math.prod(mesh.shape[name] for name in names)


def logical_to_mesh_spec(logical_spec: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """A PartitionSpec over mesh axes for one tuple of logical axis names (unknown names: replicated)."""
    return nn.logical_to_mesh_axes(tuple(logical_spec), rules)


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec) or (isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x))


def logical_to_sharding(tree_of_logical_specs: Any, mesh, rules=LOGICAL_AXIS_RULES, shapes: Any = None) -> Any:
    """NamedShardings for a tree of logical specs (tuples of logical axis names or PartitionSpecs of them).

    With `shapes` (a matching tree of arrays or ShapeDtypeStructs), every dimension is checked to divide evenly
    over its mesh axes, so a bad layout fails here with the parameter and axis named, not deep inside XLA.
    """
    specs = jax.tree.map(lambda s: logical_to_mesh_spec(s, rules), tree_of_logical_specs, is_leaf=_is_spec)
    if shapes is not None:
        validate_divisible(specs, shapes, mesh)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def validate_divisible(mesh_specs: Any, shapes: Any, mesh) -> None:
    """Raise ValueError naming the array, dimension and mesh axes for any dimension its mesh axes do not divide."""
    flat_specs = jax.tree_util.tree_flatten_with_path(mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]
    flat_shapes = jax.tree.leaves(shapes)
    if len(flat_specs) != len(flat_shapes):
        raise ValueError(f"sharding specs ({len(flat_specs)} leaves) and shapes ({len(flat_shapes)} leaves) differ")
    for (path, spec), leaf in zip(flat_specs, flat_shapes):
        shape = tuple(leaf.shape)
        if len(spec) > len(shape):
            raise ValueError(f"{jax.tree_util.keystr(path)}: spec {spec} has more axes than its shape {shape}")
        for dim, (size, mesh_axes) in enumerate(zip(shape, spec)):
            parts = _mesh_axis_size(mesh, mesh_axes)
            if size % parts:
                raise ValueError(
                    f"{jax.tree_util.keystr(path)}: dimension {dim} of shape {shape} has size {size}, which mesh "
                    f"axes {mesh_axes} (size {parts}) do not divide; change the mesh shape "
                    f"{dict(mesh.shape)} or the rule for this axis")


def logical_specs(boxed_tree: Any) -> Any:
    """The logical spec of every leaf of a tree holding flax nn.Partitioned metadata (None-free leaves: ())."""
    return nn.get_partition_spec(boxed_tree)


def abstract_boxed_params(model: nn.Module, *example_args) -> Any:
    """Parameter shapes with their nn.Partitioned metadata, without allocating (an eval_shape of init)."""
    # the key is made inside the trace: nothing concrete is created (meshes of compile-only TPU devices allow none)
    return jax.eval_shape(lambda *args: model.init(jax.random.key(0), *args), *example_args)["params"]


def shard_params(params_or_abstract: Any, mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a parameter tree that still carries nn.Partitioned metadata (abstract or real)."""
    if not any(isinstance(leaf, nn.Partitioned) for leaf in
               jax.tree.leaves(params_or_abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))):
        raise ValueError("shard_params needs parameters that still carry their nn.Partitioned logical-axis metadata "
                         "(these are unboxed, so every leaf would be replicated); pass "
                         "sharding.abstract_boxed_params(model, example_input_ids) instead")
    specs = logical_specs(params_or_abstract)
    return logical_to_sharding(specs, mesh, rules, shapes=nn.meta.unbox(params_or_abstract))


def data_sharding(mesh, rank: int = 2, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """How a [batch, length, ...] input is laid out: rows over the batch axes, the rest as activations say."""
    logical = ("act_batch", "act_length") + (None,) * (rank - 2)
    return NamedSharding(mesh, logical_to_mesh_spec(logical[:rank], rules))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activate(mesh, rules=LOGICAL_AXIS_RULES) -> Iterator[None]:
    """Make `mesh` the ambient mesh and `rules` the logical-axis rules: the model's constraints then bind and the
    attention backends see the mesh (jax.sharding.get_abstract_mesh)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def sharded_bytes(abstract_tree: Any, shardings: Any) -> int:
    """Bytes per device of a tree laid out by `shardings` (NamedShardings on a real or abstract mesh)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
        shard_shape = sharding.shard_shape(tuple(leaf.shape))
        total += math.prod(shard_shape) * np.dtype(leaf.dtype).itemsize
    return total


# --- gin ---------------------------------------------------------------------------------------------------


def _gin_configurable(fn):
    try:  # gin is optional: pure-Python users build MeshConfig themselves
        import gin
    except ImportError:  # pragma: no cover - exercised only without gin installed
        return fn
    return gin.configurable(fn)


@_gin_configurable
def mesh_config(data: int = 1, fsdp: int = -1, sequence: int = 1, tensor: int = 1, num_slices: int = 1,
                dcn_axis: str = "data") -> MeshConfig:
    """The MeshConfig gin binds (`mesh_config.fsdp = 8`, or gin/mesh.gin's MESH_SHAPE macro via `shape`)."""
    return MeshConfig(data=data, fsdp=fsdp, sequence=sequence, tensor=tensor, num_slices=num_slices,
                      dcn_axis=dcn_axis)


@_gin_configurable
def mesh_config_from_shape(shape: Sequence[int] = (1, -1, 1, 1), num_slices: int = 1,
                           dcn_axis: str = "data") -> MeshConfig:
    """A MeshConfig from one (data, fsdp, sequence, tensor) tuple: what `--gin.MESH_SHAPE=(1,8,1,1)` sets."""
    shape = tuple(int(size) for size in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must give one size per mesh axis {MESH_AXES}")
    return MeshConfig(*shape, num_slices=num_slices, dcn_axis=dcn_axis)
