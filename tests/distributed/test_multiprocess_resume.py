"""The documented multi-process form, as a user types it: `python launch/local.py --num_processes 2
--devices_per_process 2 -- python -m qwencoder_apps.train ... --gin.MESH_SHAPE='(1,-1,1,1)'` with the default
per-process data split (each process reads its own share), a mid-run checkpoint, a process SIGKILLed while the
next checkpoint is being written, and a rerun that resumes from the last complete checkpoint.

Every run must complete by itself: no stalled collective (docs/reliability.md), never the launcher's timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from qwencoder_jax import checkpoints

ROOT = Path(__file__).resolve().parents[2]


def command(data: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "launch/local.py", "--num_processes", "2", "--devices_per_process", "2",
            "--timeout", "500", "--", sys.executable, "-m", "qwencoder_apps.train",
            "--gin_file=gin/stages/stage1_file_level.gin", "--gin_file=gin/cpu/tiny.gin",
            "--gin.MESH_SHAPE=(1,-1,1,1)", "--gin.TOTAL_STEPS=6", "--gin.CHECKPOINT_EVERY=3",
            f"--gin.CODE_DIR='{data / 'code'}'", f"--gin.TEXT_DIR='{data / 'text'}'",
            f"--gin.MATH_DIR='{data / 'math'}'", "--gin.train.stall_timeout_seconds=90", *extra,
            f"--workdir={workdir}"]


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")


def run_to_the_end(data: Path, workdir: Path, *extra: str) -> str:
    """Runs the command; it must complete by itself (no stall, no launcher timeout). Returns the log."""
    result = subprocess.run(command(data, workdir, *extra), cwd=ROOT, env=environment(), capture_output=True,
                            text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "[launch] timed out" not in log, log[-4000:]
    assert "may deadlock" not in log, log[-4000:]  # the trainer's collective-order check found nothing
    return log


def complete(step_dir: Path) -> None:
    items = {p.name for p in step_dir.iterdir()}
    assert {"params", "opt_state", "trainer", "data", "model_config", "commit_success.txt"} <= items, items
    shards = {p.name for p in (step_dir / "params").glob("ocdbt.process_*")}
    assert shards == {"ocdbt.process_0", "ocdbt.process_1"}  # each process wrote its own shards


@pytest.mark.slow  # three to five 2-process trainer runs on 2 cores: about 6-10 minutes
def test_documented_launcher_form_checkpoints_survives_a_kill_during_a_save_and_resumes(tmp_path, stage1_data):
    started = time.monotonic()
    workdir = tmp_path / "run"
    directory = workdir / "checkpoints"
    # 1. the documented form, mid-run and final checkpoints, each complete
    log = run_to_the_end(stage1_data, workdir)
    assert "[p0] stopped: completed at step 6" in log and "[p1] stopped: completed at step 6" in log
    complete(directory / "3")
    complete(directory / "6")
    first_wall = time.monotonic() - started

    # 2. three more steps on the same schedule; process 1 is SIGKILLed while step 9 is being written
    more = "--gin.train.total_steps=9"
    launcher = subprocess.Popen(command(stage1_data, workdir, more), cwd=ROOT, env=environment(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = False
    while launcher.poll() is None and time.monotonic() - started < 900:
        if any(p.name.startswith("9.") and "tmp" in p.name for p in directory.iterdir()):
            os.kill(psutil.Process(launcher.pid).children()[-1].pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    output = launcher.communicate(timeout=300)[0]
    assert "[launch] timed out" not in output, output[-4000:]
    if not killed:
        pytest.skip("step 9's save finished before it could be interrupted: "
                    + output[-300:])
    assert launcher.returncode != 0 and "exited with status -9" in output, output[-4000:]
    assert sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) == [3, 6]  # 9 never listed

    # 3. the rerun resumes from the last complete checkpoint and finishes
    log = run_to_the_end(stage1_data, workdir, more)
    assert "resumed from checkpoint step 6" in log
    assert "[p0] stopped: completed at step 9" in log
    complete(directory / "9")
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 10))
    model, params = checkpoints.load(workdir)  # one host reads what the two processes wrote
    assert model.config.num_layers > 0
    print(f"wall time: first run {first_wall:.0f} s, all {time.monotonic() - started:.0f} s")
