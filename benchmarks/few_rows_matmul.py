"""The few-row matmul kernel (and the packed-weight one) against XLA's CPU dot, per weight shape of a decode step.

    python benchmarks/few_rows_matmul.py                       # SmolLM2-135M's shapes, 1 and 8 rows
    python benchmarks/few_rows_matmul.py --rows 1,4,8,16 --shapes 896x896,896x4864,4864x896 --megabytes 800

A decode step reads each weight once, from memory: so each measurement chains as many distinct weights of one
shape as fill `--megabytes` (more than the last-level cache) in one jit, and reports microseconds per matmul and
the read rate (weight bytes / time) for XLA's dot and for the kernel (qwencoder_jax/cpu_decode/few_rows). Shapes
are KxN (x [rows, K] against w [K, N]); a `t` suffix (e.g. 49152x576t) means w is stored [N, K], the tied-head
layout. Prints per shape: `rows=R KxN: xla=<us> (<GB/s>) kernel=<us> (<GB/s>) speedup=<xla/kernel>`, then
(K a multiple of 32) `packed4=<us> packed8=<us>`: the same matmuls with the weights as 4-bit and 8-bit blocks
(qwencoder_jax/cpu_decode/packed, the form a GGUF's Q4_1 / Q8_0 weights are decoded from) and their speed-up over
the float32 kernel. The packed chain is the same number of matmuls in 1/7 (4-bit) to 1/4 (8-bit) of the bytes,
so much of it can sit in the last-level cache, as SmolLM2's 110 MiB of packed weights can in a decode step.

Caveat: with one row and the [N, K] layout, this chain sends XLA to a slow path (2.8 GB/s) that the decode
step does not hit (its one-row head takes ~4 ms there, ~27 GB/s); read that row as "the kernel is at read
bandwidth", not as a 10x. benchmarks/decode_throughput.py measures whole steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from qwencoder_jax import cli_flags  # noqa: E402
from qwencoder_jax.cpu_decode import few_rows, packed  # noqa: E402

SMOLLM2_SHAPES = "576x576,576x192,576x1536,1536x576,576x49152t"


def parse_shape(text: str) -> tuple[int, int, bool]:
    transposed = text.endswith("t")
    try:
        k, n = (int(v) for v in text.rstrip("t").split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r} is not KxN (e.g. 576x1536, or 576x49152t for a [N, K] weight)") from None
    return k, n, transposed


def per_matmul_seconds(rows: int, k: int, n: int, transposed: bool, megabytes: float, repeats: int) -> dict:
    count = max(2, int(megabytes * 1e6 // (k * n * 4)))
    rng = np.random.default_rng(0)
    weights = [jnp.asarray(rng.standard_normal((n, k) if transposed else (k, n), np.float32)) for _ in range(count)]
    x = jnp.asarray(rng.standard_normal((rows, k), np.float32))
    variants = {
        "xla": ((lambda x, w: x @ w.T) if transposed else (lambda x, w: x @ w), weights),
        "kernel": (lambda x, w: few_rows.matmul(x, w, transposed), weights),
    }
    if k % packed.BLOCK == 0:
        for bits in (4, 8):
            blocks = [packed.PackedWeight.quantize(np.asarray(w if transposed else w.T), bits) for w in weights]
            variants[f"packed{bits}"] = (packed.matmul, [jax.tree.map(jnp.asarray, b) for b in blocks])
    result = {}
    for name, (matmul, operands) in variants.items():
        def chain(x, operands, matmul=matmul):
            total = jnp.zeros((rows, n), jnp.float32)
            for w in operands:
                total = total + matmul(x, w)
            return total

        seconds = min(common.time_calls(lambda: jax.jit(chain)(x, operands), repeats, warmup=1))
        result[name] = seconds / count
    result["bytes"] = k * n * 4
    return result


def main(argv=None) -> list[dict]:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--shapes", default=SMOLLM2_SHAPES)
    parser.add_argument("--megabytes", type=float, default=400.0, help="weights chained per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not few_rows.available():
        raise SystemExit("the few-row kernel could not be built here (see the warning above)")
    print(f"device {common.describe_device()}, jax {jax.__version__}, float32, {args.megabytes:.0f} MB of weights "
          "per measurement", flush=True)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for text in args.shapes.split(","):
            k, n, transposed = parse_shape(text)
            r = per_matmul_seconds(rows, k, n, transposed, args.megabytes, args.repeats)
            print(f"rows={rows} {text}: xla={r['xla'] * 1e6:.0f}us ({r['bytes'] / r['xla'] / 1e9:.1f} GB/s) "
                  f"kernel={r['kernel'] * 1e6:.0f}us ({r['bytes'] / r['kernel'] / 1e9:.1f} GB/s) "
                  f"speedup={r['xla'] / r['kernel']:.2f}"
                  + "".join(f" {name}={r[name] * 1e6:.0f}us ({r['kernel'] / r[name]:.2f}x kernel)"
                            for name in ("packed4", "packed8") if name in r), flush=True)
            results.append({"rows": rows, "shape": text, **r})
    return results


if __name__ == "__main__":
    main()
