"""Phase 3: the three training stages through the real trainer command line (qwencoder_jax/train/gin_config.py), each
with its gin stage file and the gin/cpu/demo.gin overlay, chained by init_from:

  stage1  file-level, FIM 0.5, code:text:math 70:20:10 (mixture stage1_70_20_10)  -> RUN/stage1
  stage2  repo-level + FIM, initialised from stage 1's final weights (stage2_repo)  -> RUN/stage2
  stage3  SFT on ChatML, loss on assistant tokens, initialised from stage 2's         -> RUN/stage3

A stage whose workdir already holds its final checkpoint is not trained again (the trainer resumes from the
latest checkpoint, so an interrupted stage continues where it stopped).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from qwencoder_apps.recipe.config import RecipeConfig, StagePlan
from qwencoder_apps import train as cli

GIN_DIR = cli.GIN_DIR
STAGE_FILES = {1: "stages/stage1_file_level.gin", 2: "stages/stage2_repo_level.gin", 3: "stages/stage3_sft.gin"}
STAGE_NAMES = {1: "file-level + FIM", 2: "repo-level + FIM", 3: "SFT (ChatML)"}


def _quoted(value) -> str:
    return json.dumps(str(value))


def stage_arguments(number: int, plan: StagePlan, run_dir: Path, data_dirs: dict[str, str]) -> list[str]:
    """The `python -m qwencoder_apps.train` arguments of one stage."""
    workdir = run_dir / f"stage{number}"
    arguments = [f"--gin_file={GIN_DIR / STAGE_FILES[number]}", f"--gin_file={GIN_DIR / 'cpu/demo.gin'}",
                 f"--gin.TOTAL_STEPS={plan.steps}", f"--gin.BATCH_SIZE={plan.batch_size}",
                 f"--gin.SEQUENCE_LENGTH={plan.sequence_length}",
                 f"--gin.PEAK_LEARNING_RATE={plan.peak_learning_rate}", f"--gin.WARMUP_STEPS={plan.warmup_steps}",
                 f"--gin.CHECKPOINT_EVERY={max(plan.steps // 2, 1)}", f"--workdir={workdir}"]
    if number in (1, 2):
        arguments += [f"--gin.TEXT_DIR={_quoted(data_dirs['text'])}", f"--gin.MATH_DIR={_quoted(data_dirs['math'])}"]
    if number == 1:
        arguments.append(f"--gin.CODE_DIR={_quoted(data_dirs['code'])}")
    elif number == 2:
        arguments += [f"--gin.REPO_DIR={_quoted(data_dirs['repo'])}",
                      f"--gin.STAGE1_WORKDIR={_quoted(run_dir / 'stage1')}"]
    else:
        arguments += [f"--gin.SFT_DIR={_quoted(data_dirs['sft'])}",
                      f"--gin.STAGE2_WORKDIR={_quoted(run_dir / 'stage2')}"]
    return arguments


def read_metrics(workdir: Path) -> list[dict]:
    """metrics.jsonl, one record per step (a resumed run may have logged a step twice: the last one wins)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def stage_summary(number: int, plan: StagePlan, workdir: Path, seconds: float) -> dict:
    metrics = read_metrics(workdir)
    if not metrics:
        raise RuntimeError(f"stage {number}: {workdir / 'metrics.jsonl'} has no steps; see the trainer's output")
    losses = [m["loss"] for m in metrics]
    window = max(1, min(5, len(losses) // 4))
    per_source = {}  # the trainer logs loss/<source> for the sources a step held
    for name in sorted({key[len("loss/"):] for m in metrics for key in m if key.startswith("loss/")}):
        values = [m[f"loss/{name}"] for m in metrics if f"loss/{name}" in m]
        per_source[name] = {"first": sum(values[:window]) / len(values[:window]),
                            "last": sum(values[-window:]) / len(values[-window:])}
    return {"stage": number, "name": STAGE_NAMES[number], "workdir": str(workdir), "steps": metrics[-1]["step"],
            "planned_steps": plan.steps, "rows": f"{plan.batch_size} x {plan.sequence_length}",
            "tokens": plan.tokens(), "loss_bearing_tokens": int(sum(m.get("tokens", 0) for m in metrics)),
            "seconds": round(seconds, 1), "first_loss": losses[0], "last_loss": losses[-1],
            "first_loss_mean": sum(losses[:window]) / window, "last_loss_mean": sum(losses[-window:]) / window,
            "tokens_per_second": sum(m["tokens_per_second"] for m in metrics[-window:]) / window,
            "per_source_loss": per_source,
            "init_from": str(workdir.parent / f"stage{number - 1}") if number > 1 else None}


def run_stage(number: int, recipe: RecipeConfig, run_dir: Path, data_dirs: dict[str, str]) -> dict:
    plan = recipe.stage(number)
    arguments = stage_arguments(number, plan, run_dir, data_dirs)
    started = time.perf_counter()
    status = cli.main(arguments)
    if status != 0:
        raise RuntimeError(f"stage {number} did not complete (exit status {status}); its workdir "
                           f"{run_dir / f'stage{number}'} keeps the last good checkpoint: rerun with --resume")
    return stage_summary(number, plan, run_dir / f"stage{number}", time.perf_counter() - started)


STAGE_HEADER = ["stage", "what", "steps", "rows", "tokens", "time", "tok/s", "first loss", "last loss", "init from",
                "per source (first -> last)"]


def as_rows(summaries: list[dict]) -> list[list]:
    return [[s["stage"], s["name"], s["steps"], s["rows"], f"{s['tokens']:,}", f"{s['seconds']:.0f}s",
             f"{s['tokens_per_second']:.0f}", f"{s['first_loss_mean']:.3f}", f"{s['last_loss_mean']:.3f}",
             Path(s["init_from"]).name if s["init_from"] else "random",
             ", ".join(f"{name} {v['first']:.2f}->{v['last']:.2f}" for name, v in s.get("per_source_loss", {}).items())
             or "-"] for s in summaries]
