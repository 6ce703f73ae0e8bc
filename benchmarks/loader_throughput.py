"""Tokens/s of the grain training feed (qwencoder_jax.data.loader) against what a training step consumes.

    python benchmarks/loader_throughput.py                      # stdlib code, sequence 2048, small preset step
    python benchmarks/loader_throughput.py --files 200 --sequence 1024

Measured in one run, on the same real data (CPython standard library .py files written as FORMAT.md shards):
  1. the loader over RAW text shards (parse, file-level FIM at rate 0.5, tokenise, pack, batch), one process,
     and the same without FIM (FIM samples are tokenised a second time, as three pieces: see samples.py);
  2. the loader over PRE-TOKENISED shards of the same documents (tasks.pretokenize_source), one process;
  3. `tokenizers`' own `Tokenizer.encode_batch` over the same texts (the library's best case: Rust, all cores);
  4. one jitted forward+backward step of the `small` preset at batch 4 x 512 (benchmarks/model_throughput.py).
"Per core" divides tokens by the process's CPU seconds (all its threads), so figures from runs that use a different
number of threads compare. Tokens are real tokens (segment_ids > 0), padding excluded.
Each line ends with the ratio it is judged by: loader per core / model step (goal >= 20x) and raw-text loader
per core / encode_batch per core (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import sysconfig
import tempfile
import time

import tokenizers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
from qwencoder_jax import cli_flags  # noqa: E402
from qwencoder_jax.data import fim, loader, shards, tasks  # noqa: E402


def stdlib_examples(count: int) -> list[dict]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    examples = []
    for path in files[:count]:
        text = path.read_text(encoding="utf-8", errors="replace")
        name = path.relative_to(root).as_posix()
        examples.append({"id": f"stdlib:{name}", "source": "stdlib", "kind": "code_file", "text": text,
                         "language": "python", "repo_name": "cpython", "path": name})
    return examples


def measure_loader(name: str, config: loader.LoaderConfig, epoch_tokens: int) -> dict:
    """Times batches worth about one epoch of tokens, after one warm-up batch (index building, first reads)."""
    iterator = loader.make_iterator(name, config)
    next(iterator)
    tokens = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while tokens < epoch_tokens:
        batch = next(iterator)
        tokens += int((batch["segment_ids"] > 0).sum())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    iterator.close()
    return {"tokens": tokens, "wall_seconds": wall, "cpu_seconds": cpu, "tokens_per_second": tokens / wall,
            "tokens_per_core_second": tokens / cpu}


def measure_encode_batch(tokenizer_file: str, texts: list[str], repeats: int = 2) -> dict:
    tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
    tokenizer.encode_batch(texts[:8], add_special_tokens=False)  # warm the thread pool
    best = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        tokens = sum(len(e.ids) for e in encodings)
        result = {"tokens": tokens, "wall_seconds": wall, "cpu_seconds": cpu, "tokens_per_second": tokens / wall,
                  "tokens_per_core_second": tokens / cpu}
        if best is None or result["tokens_per_core_second"] > best["tokens_per_core_second"]:
            best = result
    return best


def main(argv=None) -> dict:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=400, help="stdlib .py files in the dataset")
    parser.add_argument("--sequence", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model_preset", default="small")
    parser.add_argument("--model_batch", type=int, default=4)
    parser.add_argument("--model_sequence", type=int, default=512)
    args = parser.parse_args(argv)

    work = pathlib.Path(tempfile.mkdtemp(prefix="loader_throughput_"))
    examples = stdlib_examples(args.files)
    shards.write_dataset(work / "raw", "stdlib_code", "code_file", examples, num_shards=4)
    texts = [e["text"] for e in examples]
    print(f"data: {len(examples)} stdlib files, {sum(map(len, texts)) / 1e6:.2f}M characters; "
          f"rows {args.batch} x {args.sequence}", flush=True)

    max_tokens = args.sequence + 1
    tasks.register_source("bench_raw", str(work / "raw"), "code_file", fim_config=fim.FimConfig(fim_rate=0.5),
                          max_tokens=max_tokens)
    tasks.pretokenize_source("bench_raw", str(work / "pretokenized"), num_shards=4)
    tasks.register_source("bench_pretokenized", str(work / "pretokenized"), "code_file", max_tokens=max_tokens)
    tasks.register_source("bench_raw_no_fim", str(work / "raw"), "code_file", fim_config=fim.FimConfig(fim_rate=0.0),
                          max_tokens=max_tokens)
    config = loader.LoaderConfig(sequence_length=args.sequence, batch_size=args.batch, seed=0, num_workers=0,
                                 read_threads=1, process_index=0, process_count=1)

    reference = measure_encode_batch(tasks.default_vocabulary().tokenizer_file, texts)
    epoch_tokens = reference["tokens"]
    raw = measure_loader("bench_raw", config, epoch_tokens)
    raw_no_fim = measure_loader("bench_raw_no_fim", config, epoch_tokens)
    pretokenized = measure_loader("bench_pretokenized", config, epoch_tokens)

    import jax  # the model only now: qwencoder_jax.data must not need it, benchmarks may use it
    import model_throughput

    print(f"device {common.describe_device()}, jax {jax.__version__}", flush=True)
    peak = common.matmul_peak_flops()
    step = model_throughput.run(args.model_preset, args.model_batch, args.model_sequence, 3, peak)
    model_tokens = step["tokens_per_second"]

    def line(label, result, ratio_name, ratio):
        print(f"{label}: tokens_per_second={result['tokens_per_second']:.0f} "
              f"tokens_per_core_second={result['tokens_per_core_second']:.0f} "
              f"({result['tokens']} tokens, {result['wall_seconds']:.2f} s wall, {result['cpu_seconds']:.2f} s cpu) "
              f"{ratio_name}={ratio:.2f}")

    print(f"model step ({args.model_preset}, {args.model_batch} x {args.model_sequence}): "
          f"tokens_per_second={model_tokens:.0f}")
    line("tokenizers encode_batch (reference)", reference, "ratio_to_model_step",
         reference["tokens_per_core_second"] / model_tokens)
    line("loader, pre-tokenised shards", pretokenized, "ratio_to_model_step",
         pretokenized["tokens_per_core_second"] / model_tokens)
    line("loader, raw text shards, FIM rate 0.5", raw, "ratio_to_model_step",
         raw["tokens_per_core_second"] / model_tokens)
    line("loader, raw text shards, no FIM", raw_no_fim, "ratio_to_model_step",
         raw_no_fim["tokens_per_core_second"] / model_tokens)
    tokenise_ratio = raw["tokens_per_core_second"] / reference["tokens_per_core_second"]
    print(f"raw-text loader (FIM 0.5) vs encode_batch, per core: ratio={tokenise_ratio:.2f} (goal >= 0.8); "
          f"wall ratio={raw['tokens_per_second'] / reference['tokens_per_second']:.2f}")
    print(f"raw-text loader (no FIM) vs encode_batch, per core: "
          f"ratio={raw_no_fim['tokens_per_core_second'] / reference['tokens_per_core_second']:.2f} (goal >= 0.8); "
          f"wall ratio={raw_no_fim['tokens_per_second'] / reference['tokens_per_second']:.2f}")
    print(f"goal loader >= 20x model step per core: pre-tokenised "
          f"{pretokenized['tokens_per_core_second'] / model_tokens:.1f}x, "
          f"raw {raw['tokens_per_core_second'] / model_tokens:.1f}x")
    return {"raw": raw, "raw_no_fim": raw_no_fim, "pretokenized": pretokenized, "encode_batch": reference,
            "model_tokens_per_second": model_tokens, "tokenise_ratio": tokenise_ratio}


if __name__ == "__main__":
    main()
