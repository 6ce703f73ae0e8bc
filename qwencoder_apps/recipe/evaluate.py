"""Phase 4: the final model evaluated through the evaluation command line (`python -m qwencoder_apps.eval`).

Three calls, because `--limit` is shared by the tasks of one call:
  perplexity  perplexity and bits per byte on each dataset's held-out `validation` split -> RUN/eval/perplexity/
  infilling   HumanEval single-line FIM exact match (first N problems' lines)            -> RUN/eval/infilling/
  humaneval   the first N HumanEval problems, completions executed in the sandbox        -> RUN/eval/humaneval/
RUN/eval/results.json merges their metrics; RUN/eval/report.md holds the table. A task that cannot run here (its
module missing, the sandbox unavailable) is recorded as skipped with the reason, and the demo goes on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Callable

from qwencoder_apps.recipe.config import EvalPlan
from qwencoder_apps.recipe.markdown import markdown_table

HEADER = ["task", "what", "result"]


def _cli_arguments(task: str, checkpoint: Path, output: Path, data_dirs: dict[str, str], plan: EvalPlan) -> list[str]:
    common = ["--checkpoint", str(checkpoint), "--tasks", task, "--output", str(output),
              "--max_new_tokens", str(plan.max_new_tokens)]
    if task == "perplexity":
        return common + [f"--data_source={name}={directory}" for name, directory in data_dirs.items()] + [
            "--perplexity_documents", str(plan.perplexity_documents),
            "--perplexity_max_tokens", str(plan.perplexity_max_tokens)]
    if task == "infilling":
        return common + ["--limit", str(plan.fim_problems)]
    return common + ["--limit", str(plan.humaneval_problems)]


class _Tee(io.StringIO):
    """Keeps what is written (to name the reason of a refusal) and passes it on (progress stays visible)."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.stream.flush()


def _missing_modules(task: str) -> list[str]:
    modules = ["qwencoder_apps.eval", "qwencoder_jax.eval.generate", f"qwencoder_jax.eval.{task}"]
    return [name for name in modules if importlib.util.find_spec(name) is None]


def run_task(task: str, checkpoint: Path, output_dir: Path, data_dirs: dict[str, str], plan: EvalPlan,
             say: Callable[[str], None], extra_arguments: tuple[str, ...] | list[str] = ()) -> dict:
    """{"task", "status", "metrics" | "reason"} for one task (extra_arguments: more command-line flags)."""
    missing = _missing_modules(task)
    if missing:
        return {"task": task, "status": "skipped", "reason": f"not available yet: {', '.join(missing)}"}
    # jax and the Generator load only when the evaluation phase runs
    from qwencoder_apps import eval as eval_cli

    output = output_dir / task
    arguments = _cli_arguments(task, checkpoint, output, data_dirs, plan) + list(extra_arguments)
    say(f"eval: python -m qwencoder_apps.eval {' '.join(arguments)}")
    captured = _Tee(sys.stderr)
    with contextlib.redirect_stderr(captured):  # the CLI explains a refusal (no sandbox) on stderr
        status = eval_cli.main(arguments)
    if status != 0:
        reason = captured.getvalue().strip().splitlines()[-1:] or [f"exit status {status}"]
        return {"task": task, "status": "skipped", "reason": reason[0]}
    results = json.loads((output / "results.json").read_text())
    return {"task": task, "status": "done", "metrics": results["metrics"][task], "output": str(output)}


def run(checkpoint: Path, output_dir: Path, data_dirs: dict[str, str], plan: EvalPlan,
        say: Callable[[str], None] = print) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {"checkpoint": str(checkpoint), "tasks": [], "notes": []}
    for task in ("perplexity", "infilling", "humaneval"):
        try:
            outcome = run_task(task, checkpoint, output_dir, data_dirs, plan, say)
        except Exception as error:  # an evaluation failure must not lose the trained run's report
            outcome = {"task": task, "status": "failed", "reason": f"{type(error).__name__}: {str(error)[:300]}"}
        results["tasks"].append(outcome)
        if outcome["status"] != "done":
            note = f"evaluation task {task} {outcome['status']}: {outcome['reason']}"
            results["notes"].append(note)
            say(note)
        else:
            for row in rows_of(outcome):
                say(f"eval: {row[0]} {row[1]}: {row[2]}")
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    (output_dir / "report.md").write_text(f"# Evaluation of {checkpoint}\n\n"
                                          + markdown_table(as_rows(results), HEADER) + "\n")
    return results


def rows_of(outcome: dict) -> list[list]:
    task = outcome["task"]
    if outcome["status"] != "done":
        return [[task, "-", f"{outcome['status']}: {outcome['reason']}"]]
    metrics = outcome["metrics"]
    if task == "perplexity":
        return [[task, f"{name} (held out, {entry['documents']} docs)",
                 f"ppl {entry['perplexity']:.1f}, {entry['bits_per_byte']:.3f} bits/byte"]
                for name, entry in metrics["sources"].items()]
    if task == "infilling":
        return [[task, f"HumanEval single-line FIM, {metrics['tasks']} lines",
                 f"exact match {metrics['exact_match']:.1%}"]]
    passes = ", ".join(f"{key} {value:.1%}" for key, value in metrics.items() if key.startswith("pass@"))
    return [[task, f"{metrics['problems']} problems, executed in the sandbox",
             f"{passes}; statuses {metrics.get('statuses', {})}"]]


def as_rows(results: dict) -> list[list]:
    return [row for outcome in results["tasks"] for row in rows_of(outcome)]
