"""Sharded training steps: step time on 8 devices vs 1, and per-device memory of pod layouts.

    python benchmarks/sharding_step.py                       # both parts
    python benchmarks/sharding_step.py --skip_throughput     # memory table only

1. Throughput: the full train step (forward, backward, AdamW) of the `small` preset on a (fsdp=8) mesh of 8 fake
   CPU devices and on 1 device, same global batch; prints step time, tokens/s and the 8:1 ratio. On one CPU the 8
   "devices" share the same 2 cores, so this is only a smoke signal that sharding adds no pathological overhead
   (collectives, resharding), not a scaling figure.
   With --context_parallel S, the same step with attention_backend=splash (interpret mode off TPU) on a
   (fsdp=8/S, sequence=S) mesh, in both query layouts (zig-zag: balanced; contiguous: the last shard does about
   twice the mean causal work), against splash on the plain (fsdp=8) mesh: keys/values are all-gathered over the
   sequence axis and each device attends its own queries.
2. Memory: per-device bytes of parameters + AdamW state for the 0.5B and 7B presets under fsdp=8, 16, 64.
   `rules` is computed from the sharding rules alone: the TrainState's NamedShardings built on a device-free
   jax.sharding.AbstractMesh of that size, each leaf's `shard_shape` times its itemsize. For fsdp=8 (which this
   machine can fake) the step is also lowered and compiled on the real 8-device mesh against abstract arrays,
   and `compiled` is XLA's per-device argument size (state + one batch row per device) from memory_analysis,
   with its temporaries: that checks the rule-based figure against what the compiler actually lays out.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from qwencoder_jax import cli_flags, sharding  # noqa: E402
from qwencoder_jax.model import Transformer, get_preset  # noqa: E402
from qwencoder_jax.model.config import CONTEXT_PARALLEL_LAYOUTS  # noqa: E402
from qwencoder_jax.train import step as train_step_lib  # noqa: E402
from qwencoder_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402

GIB = 1024**3


def throughput(preset: str, devices: int, batch: int, sequence: int, steps: int, sequence_shards: int = 1,
               attention_backend: str | None = None, context_parallel_layout: str = "zigzag") -> dict:
    overrides = {"attention_backend": attention_backend} if attention_backend else {}
    overrides["context_parallel_layout"] = context_parallel_layout
    model = Transformer(get_preset(preset, **overrides))
    optimizer = make_optimizer(OptimizerConfig(schedule="constant"))
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=-1, sequence=sequence_shards), jax.devices()[:devices])
    state, shardings = train_step_lib.init_train_state(model, optimizer, mesh, jax.random.key(0))
    step_fn = train_step_lib.jit_train_step(model, optimizer, mesh, shardings)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, sequence + 1)).astype(np.int32)
    batch_arrays = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}
    batch_arrays = jax.device_put(batch_arrays, train_step_lib.batch_shardings(mesh, batch_arrays))
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = step_fn(holder["state"], batch_arrays)
        return metrics

    start = time.perf_counter()
    common.block(one_step())  # compile + first step
    compile_seconds = time.perf_counter() - start
    seconds = common.median(common.time_calls(one_step, steps, warmup=0))
    return {"devices": devices, "mesh": dict(mesh.shape), "step_seconds": seconds,
            "tokens_per_second": batch * sequence / seconds,
            "first_step_seconds": compile_seconds}


def rule_bytes(preset: str, fsdp: int) -> int:
    model = Transformer(get_preset(preset))
    abstract_mesh = sharding.make_abstract_mesh(sharding.MeshConfig(fsdp=-1), fsdp)
    optimizer = make_optimizer(OptimizerConfig(schedule="constant"))
    abstract, shardings = train_step_lib.state_shardings(model, optimizer, abstract_mesh)
    return sharding.sharded_bytes(abstract, shardings)


def unsharded_bytes(preset: str) -> int:
    model = Transformer(get_preset(preset))
    one = sharding.make_abstract_mesh(sharding.MeshConfig(fsdp=-1), 1)
    optimizer = make_optimizer(OptimizerConfig(schedule="constant"))
    abstract, shardings = train_step_lib.state_shardings(model, optimizer, one)
    return sharding.sharded_bytes(abstract, shardings)


def compiled_memory(preset: str, sequence: int) -> dict:
    """Lower + compile the real step on the 8-device fsdp mesh with abstract (sharded) arguments."""
    model = Transformer(get_preset(preset, remat_policy="full"))
    optimizer = make_optimizer(OptimizerConfig(schedule="constant"))
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=-1))
    abstract, shardings = train_step_lib.state_shardings(model, optimizer, mesh)
    step_fn = train_step_lib.jit_train_step(model, optimizer, mesh, shardings)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    batch_rows = mesh.size  # one row per device
    data = sharding.data_sharding(mesh)
    batch = {key: jax.ShapeDtypeStruct((batch_rows, sequence), jnp.int32, sharding=data)
             for key in ("input_ids", "targets")}
    with sharding.activate(mesh):
        analysis = step_fn.jitted.lower(abstract_state, batch).compile().memory_analysis()
    return {"argument_bytes": analysis.argument_size_in_bytes, "temp_bytes": analysis.temp_size_in_bytes}


def main(argv=None) -> None:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--memory_presets", nargs="*", default=["qwen2.5-coder-0.5b", "qwen2.5-coder-7b"])
    parser.add_argument("--compiled_sequence", type=int, default=2048)
    parser.add_argument("--skip_throughput", action="store_true")
    parser.add_argument("--context_parallel", type=int, default=0, metavar="S",
                        help="also time splash attention with the sequence over S devices (0: skip)")
    parser.add_argument("--context_parallel_preset", default="tiny")
    parser.add_argument("--context_parallel_sequence", type=int, default=1024)
    parser.add_argument("--skip_compiled", action="store_true")
    args = parser.parse_args(argv)
    print(f"device: {common.describe_device()}  (CPU fake devices share 2 cores: a smoke signal, not scaling)")

    if not args.skip_throughput:
        one = throughput(args.preset, 1, args.batch, args.sequence, args.steps)
        eight = throughput(args.preset, 8, args.batch, args.sequence, args.steps)
        for result in (one, eight):
            print(f"{args.preset} batch={args.batch} seq={args.sequence} devices={result['devices']}: "
                  f"step={result['step_seconds']:.3f}s tokens_per_second={result['tokens_per_second']:.0f} "
                  f"(first step incl. compile {result['first_step_seconds']:.1f}s)")
        print(f"{args.preset}: tokens/s ratio 8 devices (fsdp=8) : 1 device = "
              f"{eight['tokens_per_second'] / one['tokens_per_second']:.2f}")

    if args.context_parallel:
        shards, cp_preset = args.context_parallel, args.context_parallel_preset
        cp_sequence = args.context_parallel_sequence
        fsdp = throughput(cp_preset, 8, args.batch, cp_sequence, args.steps, attention_backend="splash")
        fsdp["layout"] = "-"
        results = [fsdp]
        for layout in CONTEXT_PARALLEL_LAYOUTS:
            results.append(throughput(cp_preset, 8, args.batch, cp_sequence, args.steps, sequence_shards=shards,
                                      attention_backend="splash", context_parallel_layout=layout)
                           | {"layout": layout})
        for result in results:
            print(f"{cp_preset} splash batch={args.batch} seq={cp_sequence} mesh={result['mesh']} "
                  f"layout={result['layout']}: step={result['step_seconds']:.3f}s "
                  f"tokens_per_second={result['tokens_per_second']:.0f} "
                  f"(first step incl. compile {result['first_step_seconds']:.1f}s)")
        for result in results[1:]:
            print(f"{cp_preset}: tokens/s ratio context parallel (sequence={shards}, {result['layout']}) : fsdp=8 = "
                  f"{result['tokens_per_second'] / fsdp['tokens_per_second']:.2f}  (fake devices on 2 shared cores, "
                  f"interpret-mode kernel: a smoke signal; the zig-zag balance shows only on real devices)")

    print("\nper-device parameters + AdamW state, float32 (GiB); rules = from NamedShardings on an AbstractMesh")
    print(f"{'preset':<22}{'unsharded':>11}{'fsdp=8':>10}{'fsdp=16':>10}{'fsdp=64':>10}  ratio unsharded/fsdp64")
    for preset in args.memory_presets:
        full = unsharded_bytes(preset)
        figures = [rule_bytes(preset, n) for n in (8, 16, 64)]
        print(f"{preset:<22}{full / GIB:>11.3f}" + "".join(f"{b / GIB:>10.3f}" for b in figures)
              + f"  {full / figures[-1]:.1f}")
    if not args.skip_compiled:
        print(f"\ncompiled on the real 8-device mesh (fsdp=8, remat full, 1 row x {args.compiled_sequence} tokens "
              "per device), XLA memory_analysis per device (GiB):")
        for preset in args.memory_presets:
            compiled = compiled_memory(preset, args.compiled_sequence)
            print(f"{preset:<22} arguments={compiled['argument_bytes'] / GIB:.3f} "
                  f"(rules: state {rule_bytes(preset, 8) / GIB:.3f})  temporaries={compiled['temp_bytes'] / GIB:.3f}")


if __name__ == "__main__":
    main()
