"""Forward+backward tokens/s and model FLOPs utilisation (MFU) of the Qwen2 model on this machine.

    python benchmarks/model_throughput.py                       # small preset, then 0.5B at sequence 2048
    python benchmarks/model_throughput.py --presets small --batch 4 --sequence 512 --steps 5

MFU = model FLOPs per token (ModelConfig.flops_per_token: every matmul incl. the output head and causal
attention, backward = 2x forward) x tokens/s / the float32 matmul peak measured at the start of the same run.
The measured step is value_and_grad of the next-token loss (no optimizer update).
Each preset ends with a line `PRESET: tokens_per_second=<float> mfu=<float> peak_gflops=<float>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from qwencoder_jax import cli_flags  # noqa: E402
from qwencoder_jax.model import Transformer, get_preset, init_params  # noqa: E402
from qwencoder_jax.train.loss import cross_entropy  # noqa: E402

# preset -> (batch, sequence, timed steps, config overrides). 0.5B at 2048 is a single timed step (about a minute
# on 2 cores) with full rematerialisation: without it the step's temporaries alone are ~22 GiB
# (benchmarks/model_memory.py), more than a 24 GiB machine can hold beside the parameters.
DEFAULT_RUNS = {"small": (4, 512, 5, {}), "qwen2.5-coder-0.5b": (1, 2048, 1, {"remat_policy": "full"})}


def forward_backward_step(config):
    model = Transformer(config)

    def loss_fn(params, tokens_bt):
        logits_btv = model.apply({"params": params}, tokens_bt[:, :-1])
        loss, _ = cross_entropy(logits_btv, tokens_bt[:, 1:])
        return loss

    return jax.jit(jax.value_and_grad(loss_fn))


def run(preset: str, batch: int, sequence: int, steps: int, peak: float, **overrides) -> dict:
    config = get_preset(preset, **overrides)
    params = init_params(config, jax.random.key(0))
    tokens_bt = jax.random.randint(jax.random.key(1), (batch, sequence + 1), 0, config.vocab_size, jnp.int32)
    step = forward_backward_step(config)
    seconds = common.time_calls(lambda: step(params, tokens_bt), steps, warmup=1)
    step_seconds = common.median(seconds)
    tokens_per_second = batch * sequence / step_seconds
    flops_per_second = config.flops_per_token(sequence, training=True) * tokens_per_second
    result = {"preset": preset, "batch": batch, "sequence": sequence, "step_seconds": step_seconds,
              "tokens_per_second": tokens_per_second, "model_tflops_per_step": flops_per_second * step_seconds / 1e12,
              "mfu": flops_per_second / peak, "peak_gflops": peak / 1e9}
    print(f"{preset}: batch {batch} x sequence {sequence}, {config.num_params() / 1e6:.1f}M params, "
          f"compute {config.compute_dtype}, remat {config.remat_policy}, median step {step_seconds:.3f} s over {steps} step(s)")
    print(f"{preset}: tokens_per_second={tokens_per_second:.1f} mfu={result['mfu']:.3f} "
          f"peak_gflops={peak / 1e9:.1f}", flush=True)
    return result


def main(argv=None) -> list[dict]:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(DEFAULT_RUNS), help="comma-separated preset names")
    parser.add_argument("--batch", type=int, help="override the batch size of every preset")
    parser.add_argument("--sequence", type=int, help="override the sequence length of every preset")
    parser.add_argument("--steps", type=int, help="override the number of timed steps")
    parser.add_argument("--compute_dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--remat_policy", default=None)
    args = parser.parse_args(argv)

    print(f"device {common.describe_device()}, jax {jax.__version__}")
    peak = common.matmul_peak_flops()
    print(f"reference: float32 matmul peak {peak / 1e9:.1f} GFLOP/s (2048^3, best of 8, this run)", flush=True)
    overrides = {k: v for k, v in (("compute_dtype", args.compute_dtype), ("remat_policy", args.remat_policy)) if v}
    results = []
    for preset in args.presets.split(","):
        batch, sequence, steps, preset_overrides = DEFAULT_RUNS.get(preset, (1, 512, 3, {}))
        results.append(run(preset, args.batch or batch, args.sequence or sequence, args.steps or steps, peak,
                           **{**preset_overrides, **overrides}))
    return results


if __name__ == "__main__":
    main()
