"""Peak memory of one training step (forward, backward, AdamW update) from XLA's compiled memory analysis.

    python benchmarks/model_memory.py                                  # 0.5B, batch 1, sequence 2048
    python benchmarks/model_memory.py --preset 7b --sequence 8192 --remat_policy full

Nothing runs: the step is lowered and compiled against abstract arrays (jax.ShapeDtypeStruct), so presets far
larger than this machine's memory can be measured. The reference beside the figure is the state the step must
hold in any case (params + gradients + two AdamW moments, all float32), computed from the parameter shapes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qwencoder_jax import cli_flags
from qwencoder_jax.model import Transformer, abstract_params, get_preset  # noqa: E402
from qwencoder_jax.train.loss import cross_entropy  # noqa: E402

GIB = 1024**3


def train_step_memory(preset: str, batch: int, sequence: int, **overrides) -> dict:
    config = get_preset(preset, **overrides)
    model = Transformer(config)
    optimizer = optax.adamw(1e-4, weight_decay=0.1)

    def train_step(params, opt_state, tokens_bt):
        def loss_fn(params):
            logits_btv = model.apply({"params": params}, tokens_bt[:, :-1])
            return cross_entropy(logits_btv, tokens_bt[:, 1:])[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = abstract_params(config)
    opt_state = jax.eval_shape(optimizer.init, params)
    tokens = jax.ShapeDtypeStruct((batch, sequence + 1), jnp.int32)
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, tokens).compile()
    analysis = compiled.memory_analysis()
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    state_bytes = 4 * param_bytes  # params, grads, adam mu and nu
    peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
            + analysis.temp_size_in_bytes)
    return {"preset": preset, "batch": batch, "sequence": sequence, "remat_policy": config.remat_policy,
            "argument_bytes": analysis.argument_size_in_bytes, "output_bytes": analysis.output_size_in_bytes,
            "alias_bytes": analysis.alias_size_in_bytes, "temp_bytes": analysis.temp_size_in_bytes,
            "peak_bytes": peak, "state_bytes": state_bytes}


def main(argv=None):
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-coder-0.5b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=2048)
    parser.add_argument("--remat_policy", default=None, help="one remat policy; default: none and full")
    args = parser.parse_args(argv)
    results = []
    for policy in [args.remat_policy] if args.remat_policy else ["none", "full"]:
        r = train_step_memory(args.preset, args.batch, args.sequence, remat_policy=policy)
        results.append(r)
        print(f"{r['preset']} batch {r['batch']} x {r['sequence']} remat={policy}: arguments "
              f"{r['argument_bytes'] / GIB:.2f} GiB, temporaries {r['temp_bytes'] / GIB:.2f} GiB, outputs "
              f"{r['output_bytes'] / GIB:.2f} GiB (donated {r['alias_bytes'] / GIB:.2f} GiB)")
        print(f"{r['preset']} remat={policy}: peak_gib={r['peak_bytes'] / GIB:.2f} "
              f"ratio_to_f32_train_state={r['peak_bytes'] / r['state_bytes']:.2f} "
              f"(params+grads+adam = {r['state_bytes'] / GIB:.2f} GiB)", flush=True)
    return results


if __name__ == "__main__":
    main()
