"""Evaluate a checkpoint: python -m qwencoder_apps.eval --checkpoint DIR --tasks humaneval,infilling --output DIR

Writes OUTPUT/results.json (options and metrics), OUTPUT/report.md (tables), OUTPUT/<task>.records.jsonl (every
problem's completions and scores) and OUTPUT/needle.png. With --num_processes N it starts N copies of itself
(--process_index i --process_count N), each taking every N-th block of problems, and merges their records in
global order, so the metrics equal a one-process run's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from typing import Sequence

from qwencoder_jax import cli_flags
from qwencoder_jax.eval import report, sandbox
from qwencoder_jax.eval.options import EvalOptions

TASKS = ("humaneval", "infilling", "needle", "math", "perplexity")
PARTS = "parts"


def _task_module(name: str):
    return importlib.import_module(f"qwencoder_jax.eval.{name}")


def _numbers(text: str, kind) -> tuple:
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli_flags.ArgumentParser(prog="python -m qwencoder_apps.eval", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model checkpoint directory (checkpoints.save_model)")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the checkpoint's, else the Qwen2.5 one)")
    parser.add_argument("--tasks", default="humaneval,infilling,needle,math",
                        help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--output", required=True, help="directory for results.json, report.md, records, figures")
    parser.add_argument("--limit", type=int, help="first N problems of each task")
    parser.add_argument("--num_samples", type=int, default=1, help="HumanEval completions per problem")
    parser.add_argument("--chat", action="store_true",
                        help="HumanEval as an instruct model: the checkpoint's chat template, EvalPlus-style prompt, "
                             "code from the reply's fenced block")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--math_max_new_tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float_weights", action="store_true",
                        help="decode from the float params even where the checkpoint keeps packed (GGUF) weights")
    parser.add_argument("--workers", type=int, default=2, help="concurrent sandboxed programs per process")
    parser.add_argument("--unsandboxed", action="store_true",
                        help="run model-written code WITHOUT isolation (only if bubblewrap cannot work here)")
    parser.add_argument("--execute_infilling", action="store_true", help="also run tests on filled-in programs")
    parser.add_argument("--needle_lengths", type=lambda t: _numbers(t, int), default=(256, 512, 1024),
                        help="context lengths in tokens, e.g. 256,512,1024 (the report's setting: ...,131072)")
    parser.add_argument("--needle_depths", type=lambda t: _numbers(t, float), default=(0.0, 0.25, 0.5, 0.75, 1.0))
    parser.add_argument("--needle_trials", type=int, default=1)
    parser.add_argument("--data_source", action="append", default=[], metavar="NAME=DIR",
                        help="a data_pipelines output directory to compute perplexity on (repeatable)")
    parser.add_argument("--perplexity_split", default="validation")
    parser.add_argument("--perplexity_documents", type=int, default=64)
    parser.add_argument("--perplexity_max_tokens", type=int, default=2048)
    parser.add_argument("--num_processes", type=int, default=1, help="evaluation processes to split problems over")
    parser.add_argument("--process_index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--process_count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    args.task_list = tasks
    for source in args.data_source:
        if "=" not in source:
            parser.error(f"--data_source takes NAME=DIR, got {source!r}")
    if "perplexity" in tasks and not args.data_source:
        parser.error("the perplexity task needs at least one --data_source NAME=DIR")
    if args.num_processes < 1:
        parser.error(f"--num_processes must be >= 1, got {args.num_processes}")
    return args


def options_of(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(
        limit=args.limit, num_samples=args.num_samples, chat=args.chat, temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, seed=args.seed, workers=args.workers, unsandboxed=args.unsandboxed,
        execute_infilling=args.execute_infilling, needle_context_tokens=args.needle_lengths,
        needle_depths=args.needle_depths, needle_trials=args.needle_trials,
        math_max_new_tokens=args.math_max_new_tokens, perplexity_documents=args.perplexity_documents,
        perplexity_split=args.perplexity_split, perplexity_max_tokens=args.perplexity_max_tokens,
        data_sources=tuple(tuple(source.split("=", 1)) for source in args.data_source))


def _part_path(output: str, task: str, index: int) -> str:
    return os.path.join(output, PARTS, f"{task}.{index}.jsonl")


def run_share(args: argparse.Namespace, options: EvalOptions, index: int, count: int) -> None:
    """Runs this process's share of every task and writes its records to OUTPUT/parts/."""
    # jax and the model load only in processes that generate, not in the merging parent
    from qwencoder_jax.eval.generate import Generator

    generator = Generator.from_checkpoint(args.checkpoint, tokenizer=args.tokenizer,
                                          packed_weights=False if args.float_weights else None)
    if options.chat and "humaneval" in args.task_list and not generator.chat_template:
        raise SystemExit(f"error: --chat needs the checkpoint's chat template; {args.checkpoint} has no "
                         "chat_template.jinja (GGUF conversions of instruct models carry one)")
    os.makedirs(os.path.join(args.output, PARTS), exist_ok=True)
    for task in args.task_list:
        records = _task_module(task).run(generator, options, index, count)
        with open(_part_path(args.output, task, index), "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        print(f"[process {index}/{count}] {task}: {len(records)} records", file=sys.stderr, flush=True)


def merge(args: argparse.Namespace, options: EvalOptions, count: int) -> dict:
    metrics, figures = {}, {}
    for task in args.task_list:
        records = []
        for index in range(count):
            with open(_part_path(args.output, task, index), encoding="utf-8") as handle:
                records += [json.loads(line) for line in handle]
        records.sort(key=lambda record: (record.get("source", ""), record["index"]))
        with open(os.path.join(args.output, f"{task}.records.jsonl"), "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        module = _task_module(task)
        metrics[task] = module.summarize(records)
        if task == "needle":
            figures[task] = module.plot(metrics[task], os.path.join(args.output, "needle.png"))
    results = {"checkpoint": os.path.abspath(args.checkpoint), "tasks": args.task_list, "processes": count,
               "options": {key: value for key, value in vars(options).items()}, "metrics": metrics}
    report.write(args.output, results, figures)
    return results


def _spawn(argv: Sequence[str], count: int) -> None:
    processes = [subprocess.Popen([sys.executable, "-m", "qwencoder_apps.eval", *argv, "--process_index", str(i),
                                   "--process_count", str(count)]) for i in range(count)]
    failed = [i for i, process in enumerate(processes) if process.wait() != 0]
    if failed:
        raise SystemExit(f"evaluation process(es) {failed} failed (exit statuses "
                         f"{[processes[i].returncode for i in failed]}); see their output above")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    options = options_of(args)
    executes = "humaneval" in args.task_list or ("infilling" in args.task_list and args.execute_infilling)
    if executes and not args.unsandboxed:
        try:
            sandbox.check_available()
        except sandbox.SandboxUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if args.process_index is not None:  # one share of a multi-process run
        run_share(args, options, args.process_index, args.process_count or 1)
        return 0
    if args.num_processes > 1:
        _spawn(argv, args.num_processes)
    else:
        run_share(args, options, 0, 1)
    results = merge(args, options, args.num_processes)
    print(json.dumps(results["metrics"], indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
