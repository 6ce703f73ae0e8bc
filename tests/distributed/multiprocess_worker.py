"""One process of the multi-process tests (started by launch/local.py, or alone for the 1-process reference).

    python tests/distributed/multiprocess_worker.py --result FILE --checkpoint DIR [--die_after_step N --die_process P]

Trains the tiny model five steps on a (data=2, fsdp=-1) mesh over all global devices, each process loading only
its own rows; saves params with orbax; every process restores them into the same sharded layout and checks its
shards; process 0 writes {"losses": [...], "restored": true} as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from qwencoder_jax import checkpoints, cli_flags, distributed, sharding
from qwencoder_jax.model.config import ModelConfig
from qwencoder_jax.model.transformer import Transformer
from qwencoder_jax.train import step as train_step_lib
from qwencoder_jax.train.optimizer import OptimizerConfig, make_optimizer

CONFIG = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8,
                     intermediate_size=128, tie_embeddings=False, rope_theta=10_000.0)
GLOBAL_BATCH, LENGTH, STEPS = 8, 32, 5


def main() -> int:
    parser = cli_flags.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--die_after_step", type=int, default=None)
    parser.add_argument("--die_process", type=int, default=1)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()

    distributed.initialize()
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=-1))
    model = Transformer(CONFIG)
    optimizer = make_optimizer(OptimizerConfig(peak_learning_rate=1e-2, schedule="constant"))
    state, shardings = train_step_lib.init_train_state(model, optimizer, mesh, jax.random.key(0))
    step_fn = train_step_lib.jit_train_step(model, optimizer, mesh, shardings)

    rows = distributed.process_rows(GLOBAL_BATCH)
    losses = []
    for step in range(args.steps):
        # every process draws the same global batch and keeps only its rows (a stand-in for a sharded loader)
        tokens = np.random.default_rng(step).integers(0, CONFIG.vocab_size, (GLOBAL_BATCH, LENGTH + 1))
        local = {"input_ids": tokens[rows, :-1].astype(np.int32), "targets": tokens[rows, 1:].astype(np.int32)}
        state, metrics = step_fn(state, distributed.global_batch(local, mesh))
        losses.append(float(metrics["loss"]))
        print(f"step {step} loss {losses[-1]:.6f}", flush=True)
        if args.die_after_step == step and jax.process_index() == args.die_process:
            print("dying on purpose", flush=True)
            os._exit(3)

    checkpoints.save_model(args.checkpoint, CONFIG, state.params, overwrite=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.params)
    restored = checkpoints.load_params_sharded(args.checkpoint, abstract)
    same = all(
        restored_leaf.sharding == leaf.sharding
        and all(np.array_equal(np.asarray(a.data), np.asarray(b.data))
                for a, b in zip(restored_leaf.addressable_shards, leaf.addressable_shards))
        for restored_leaf, leaf in zip(jax.tree.leaves(restored), jax.tree.leaves(state.params)))
    # every process must have restored correctly: reduce the flag over processes
    all_same = bool(jax.experimental.multihost_utils.process_allgather(jnp.asarray(same)).all()) \
        if jax.process_count() > 1 else same
    if jax.process_index() == 0:
        with open(args.result, "w") as f:
            json.dump({"losses": losses, "restored": all_same, "processes": jax.process_count(),
                       "devices": jax.device_count()}, f)
    print(f"done: restored={all_same}", flush=True)
    return 0 if all_same else 1


if __name__ == "__main__":
    import jax.experimental.multihost_utils  # noqa: F401  (imported here: only this script needs it)
    sys.exit(main())
