"""Checkpoint save and restore time of the 0.5B train state (params + AdamW moments, float32, about 5.5 GiB).

    python benchmarks/checkpoint_timing.py                        # writes under /tmp (same disk as the repository)
    python benchmarks/checkpoint_timing.py --directory DIR --preset tiny

Measures what the trainer does (train/trainer.py: an orbax CheckpointManager with async saves): the blocking part of
`manager.save` (device -> host copy, the training loop waits for this), the time until the save is committed
(`wait_until_finished`), and `manager.restore` into the sharded abstract state. The reference, in the same run on
the same disk: the same bytes written by numpy.save (one .npy per array) and read back by numpy.load, each
timed without fsync like orbax's, then `os.sync()` timed separately; numpy goes first, and the live state is freed
before the restore (24 GB of RAM hold one 5.5 GiB state plus restore buffers, not two states). The state is built
by a jitted init (train/step.py's init_train_state), never through numpy copies, so it fits the machine's memory
once; its AdamW moments are then filled with non-zero values (zeros would compress unrealistically well).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qwencoder_jax import cli_flags, sharding  # noqa: E402
from qwencoder_jax.model import Transformer, get_preset  # noqa: E402
from qwencoder_jax.train import step as step_lib  # noqa: E402
from qwencoder_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402

GIB = 1024**3


def _state_bytes(state) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def main(argv=None) -> dict:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-coder-0.5b")
    parser.add_argument("--directory", default=None, help="where to write (default: a fresh directory in /tmp)")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="checkpoint_timing_", dir=args.directory))
    try:
        config = get_preset(args.preset)
        model, optimizer = Transformer(config), make_optimizer(OptimizerConfig())
        mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1), devices=jax.devices()[:1])
        start = time.perf_counter()
        state, shardings = step_lib.init_train_state(model, optimizer, mesh, jax.random.key(0))
        jax.block_until_ready(state)
        # A state as it is mid-run: AdamW moments of a fresh init are zeros, which orbax's compression would make
        # unrealistically cheap. Filled in place (donated), so no second copy exists.
        def filled(state):
            leaves, tree = jax.tree.flatten(state.opt_state)
            keys = jax.random.split(jax.random.key(1), len(leaves))
            moments = jax.tree.unflatten(tree, [
                jax.random.normal(key, x.shape, x.dtype) * 1e-3 if jnp.issubdtype(x.dtype, jnp.floating) else x
                for key, x in zip(keys, leaves)])
            return {"params": state.params, "opt_state": moments}

        state = jax.jit(filled, donate_argnums=0)(state)  # what the trainer saves (the step travels as metadata)
        size = _state_bytes(state)
        print(f"{args.preset}: train state {size / GIB:.2f} GiB in {len(jax.tree.leaves(state))} arrays "
              f"(built in {time.perf_counter() - start:.1f} s); writing under {root}", flush=True)

        # Reference first: the same bytes through numpy, one array at a time (device_get is part of the cost, as
        # orbax's blocking copy is part of its); read back one array at a time so two copies never coexist.
        leaves = jax.tree.leaves(state)
        raw = root / "numpy"
        raw.mkdir()
        start = time.perf_counter()
        for index, leaf in enumerate(leaves):
            np.save(raw / f"{index}.npy", np.asarray(jax.device_get(leaf)))
        numpy_save = time.perf_counter() - start
        start = time.perf_counter()
        os.sync()
        numpy_sync = time.perf_counter() - start
        start = time.perf_counter()
        loaded_bytes = sum(np.load(raw / f"{index}.npy").nbytes for index in range(len(leaves)))
        numpy_load = time.perf_counter() - start
        assert loaded_bytes == size
        del leaves
        shutil.rmtree(raw)
        print(f"numpy reference: save {numpy_save:.2f} s ({size / GIB / numpy_save:.2f} GiB/s) then os.sync "
              f"{numpy_sync:.2f} s; load {numpy_load:.2f} s ({size / GIB / numpy_load:.2f} GiB/s)", flush=True)

        items = lambda s: ocp.args.Composite(params=ocp.args.StandardSave(s["params"]),  # noqa: E731
                                             opt_state=ocp.args.StandardSave(s["opt_state"]))
        manager = ocp.CheckpointManager(root / "orbax", options=ocp.CheckpointManagerOptions(
            enable_async_checkpointing=True, create=True))
        start = time.perf_counter()
        manager.save(1, args=items(state))
        blocking = time.perf_counter() - start
        manager.wait_until_finished()
        committed = time.perf_counter() - start
        start = time.perf_counter()
        os.sync()
        orbax_sync = time.perf_counter() - start
        on_disk = sum(f.stat().st_size for f in (root / "orbax").rglob("*") if f.is_file())
        print(f"orbax save: blocking {blocking:.2f} s, committed {committed:.2f} s "
              f"({size / GIB / committed:.2f} GiB/s), then os.sync {orbax_sync:.2f} s; {on_disk / GIB:.2f} GiB on "
              "disk", flush=True)

        del state  # restore beside a live copy would need twice the state in memory
        abstract, _ = step_lib.state_shardings(model, optimizer, mesh)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
        start = time.perf_counter()
        restored = manager.restore(1, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target.params), opt_state=ocp.args.StandardRestore(target.opt_state)))
        restored = {"params": restored["params"], "opt_state": restored["opt_state"]}
        jax.block_until_ready(restored)
        restore = time.perf_counter() - start
        manager.close()
        assert _state_bytes(restored) == size
        del restored
        print(f"orbax restore: {restore:.2f} s ({size / GIB / restore:.2f} GiB/s; page cache warm from the save)",
              flush=True)
        result = {"state_gib": size / GIB, "blocking_s": blocking, "committed_s": committed, "restore_s": restore,
                  "numpy_save_s": numpy_save, "numpy_load_s": numpy_load}
        print(f"save_committed_vs_numpy={committed / numpy_save:.2f}x restore_vs_numpy_load="
              f"{restore / numpy_load:.2f}x blocking_s={blocking:.2f} committed_s={committed:.2f} "
              f"restore_s={restore:.2f}", flush=True)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
