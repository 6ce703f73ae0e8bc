"""Training tokens/s and MFU of the real train step (forward, backward, clipping, AdamW update) on this machine.

    python benchmarks/train_throughput.py                          # the MaxText reference CPU configuration
    python benchmarks/train_throughput.py --compute_dtype float32  # compare dtypes / remat on the same machine

The reference configuration (training issue) is preset "maxtext-reference": 2 layers, hidden 256, 4 query heads,
2 kv heads, head dim 64, MLP 512, vocabulary 32,000, sequence 512, batch 1, bf16 compute, f32 weights, AdamW,
xla (dot-product) attention; `bash benchmarks/maxtext_reference.sh` measures MaxText 0.2.5 on the same one.
MFU = ModelConfig.flops_per_token x tokens/s / the float32 matmul peak measured at the start of this run.
The step is train/step.py's jitted train_step with the state donated, on a one-device mesh; timing blocks on the
returned loss each step. Ends with the line `tokens_per_second=<float> mfu=<float>`.

Head + loss: by default the token-chunked fused head + cross-entropy (train/loss.py: the gradient
formed in the forward pass, three head matmuls; exact to float32 rounding) with its matmul in float32: on this
CPU the 32k-vocabulary head is most of the step, XLA's CPU bfloat16 dots run at about half the float32 rate, and
materialised logits make several trips through memory. `--head vocab` measures the vocabulary-chunked form
(four head matmuls), `--head plain` the materialised logits.

Allocator: the benchmark re-executes itself with tcmalloc preloaded like the trainer does
(qwencoder_jax/allocator.py); QWENCODER_TCMALLOC=0 measures with glibc's allocator.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from qwencoder_jax import allocator, cli_flags, sharding  # noqa: E402
from qwencoder_jax.model import Transformer, get_preset  # noqa: E402
from qwencoder_jax.train import step as train_step_lib  # noqa: E402
from qwencoder_jax.train.loss import LossConfig  # noqa: E402
from qwencoder_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402


def main(argv=None) -> dict:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="maxtext-reference")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--compute_dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--remat_policy", default=None)
    parser.add_argument("--attention_backend", default=None, choices=["xla", "splash", "cudnn"])
    parser.add_argument("--peak_dtype", default="float32", choices=["float32", "bfloat16"],
                        help="dtype of the matmul whose measured peak is MFU's denominator (bfloat16 on GPU/TPU)")
    parser.add_argument("--peak_size", type=int, default=2048, help="side of that square matmul (8192 on GPU)")
    parser.add_argument("--vocab_size", type=int, default=None, help="override the preset's vocabulary size")
    parser.add_argument("--scan_layers", default=None, choices=["true", "false"],
                        help="layers under nn.scan (the preset's default) or one module per layer")
    parser.add_argument("--head", default="tokens", choices=["tokens", "vocab", "plain"],
                        help="fused head + loss over token chunks (default) or vocabulary chunks, or plain logits")
    parser.add_argument("--chunk_size", type=int, default=512, help="the fused head's chunk size")
    parser.add_argument("--head_dtype", default="float32", choices=["float32", "bfloat16", "compute"],
                        help="dtype of the fused head's matmul inputs; compute = the model's compute dtype")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in (("compute_dtype", args.compute_dtype), ("remat_policy", args.remat_policy),
                                   ("vocab_size", args.vocab_size), ("attention_backend", args.attention_backend))
                 if v}
    if args.scan_layers is not None:
        overrides["scan_layers"] = args.scan_layers == "true"
    config = get_preset(args.preset, **overrides)
    print(f"device {common.describe_device()}, jax {jax.__version__}, allocator {allocator.active()}")
    peak = common.matmul_peak_flops(args.peak_size, jnp.dtype(args.peak_dtype))
    print(f"reference: {args.peak_dtype} matmul peak {peak / 1e9:.1f} GFLOP/s ({args.peak_size}^3, best of 8, "
          f"this run)", flush=True)

    model = Transformer(config)
    optimizer = make_optimizer(OptimizerConfig(peak_learning_rate=3e-4, warmup_steps=10, total_steps=1000))
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1), devices=jax.devices()[:1])
    state, shardings = train_step_lib.init_train_state(model, optimizer, mesh, jax.random.key(0))
    loss_config = LossConfig(vocab_chunk_size=args.chunk_size if args.head == "vocab" else 0,
                             token_chunk_size=args.chunk_size if args.head == "tokens" else 0,
                             head_dtype=None if args.head_dtype == "compute" or args.head == "plain"
                             else args.head_dtype)
    step_fn = train_step_lib.jit_train_step(model, optimizer, mesh, shardings, loss_config=loss_config)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.sequence + 1), 0, config.vocab_size, jnp.int32)
    batch = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}

    for _ in range(3):  # compilation + steady state
        state, metrics = step_fn(state, batch)
    metrics["loss"].block_until_ready()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        metrics["loss"].block_until_ready()
        seconds.append(time.perf_counter() - start)
    step_seconds = common.median(seconds)
    tokens_per_second = args.batch * args.sequence / step_seconds
    mfu = config.flops_per_token(args.sequence, training=True) * tokens_per_second / peak
    print(f"{args.preset}: batch {args.batch} x sequence {args.sequence}, {config.num_params() / 1e6:.1f}M params, "
          f"compute {config.compute_dtype}, params {config.param_dtype}, remat {config.remat_policy}, "
          f"attention {config.attention_backend}, "
          f"scan_layers {config.scan_layers}, {loss_config}, "
          f"median step {step_seconds * 1e3:.1f} ms over {args.steps} steps, final loss {float(metrics['loss']):.3f}")
    print(f"tokens_per_second={tokens_per_second:.1f} mfu={mfu:.4f}", flush=True)
    return {"tokens_per_second": tokens_per_second, "mfu": mfu, "step_seconds": step_seconds, "peak": peak}


if __name__ == "__main__":
    allocator.use_tcmalloc()
    main()
