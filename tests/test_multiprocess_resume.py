"""The documented multi-process form, as a user types it: `python launch/local.py --num-processes 2
--devices-per-process 2 -- python -m qwencoder_jax.train ... --gin.MESH_SHAPE='(1,-1,1,1)'` with the default
per-process data split (each process reads its own share), a mid-run checkpoint, a process SIGKILLed while the
next checkpoint is being written, and a rerun that resumes from the last complete checkpoint.

Every run must end by itself: completed, or (a process killed / a collective stuck, docs/reliability.md) with a
non-zero status and a message; never the launcher's timeout."""

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

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stage1_data(tmp_path_factory):
    import data_helpers

    root = tmp_path_factory.mktemp("stage1_data")
    data_helpers.write_code_files(root / "code", limit=20)
    data_helpers.write_text(root / "text", limit=10)
    data_helpers.write_text(root / "math", kind="math", limit=10)
    return root


def command(data: Path, workdir: Path) -> list[str]:
    return [sys.executable, "launch/local.py", "--num-processes", "2", "--devices-per-process", "2",
            "--timeout", "500", "--", sys.executable, "-m", "qwencoder_jax.train",
            "--gin_file=gin/stages/stage1_file_level.gin", "--gin_file=gin/cpu/tiny.gin",
            "--gin.MESH_SHAPE=(1,-1,1,1)", "--gin.TOTAL_STEPS=6", "--gin.CHECKPOINT_EVERY=3",
            f"--gin.CODE_DIR='{data / 'code'}'", f"--gin.TEXT_DIR='{data / 'text'}'",
            f"--gin.MATH_DIR='{data / 'math'}'", "--gin.train.stall_timeout_seconds=90", f"--workdir={workdir}"]


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")


def run_to_the_end(data: Path, workdir: Path, attempts: int = 3) -> list[str]:
    """Runs the command until it completes; a run may stop (the watchdog), never hang. Returns the logs."""
    logs = []
    for _ in range(attempts):
        result = subprocess.run(command(data, workdir), cwd=ROOT, env=environment(), capture_output=True,
                                text=True, timeout=600)
        logs.append(result.stdout + result.stderr)
        assert "[launch] timed out" not in logs[-1], logs[-1][-4000:]
        if result.returncode == 0:
            return logs
        assert "no step finished for" in logs[-1], logs[-1][-4000:]  # the only accepted failure: a named stall
    raise AssertionError(f"no completed run in {attempts} attempts:\n" + logs[-1][-4000:])


@pytest.mark.slow  # three to four 2-process trainer runs on 2 cores: about 6 minutes
def test_documented_launcher_form_checkpoints_survives_a_kill_during_a_save_and_resumes(tmp_path, stage1_data):
    workdir = tmp_path / "run"
    started = time.monotonic()
    launcher = subprocess.Popen(command(stage1_data, workdir), cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    directory = workdir / "checkpoints"
    killed = False
    while launcher.poll() is None and time.monotonic() - started < 500:
        # step 3 is complete and step 6 is being written (orbax's temporary directory): kill process 1 now
        saving_six = directory.is_dir() and any(p.name.startswith("6.") and "tmp" in p.name
                                                for p in directory.iterdir())
        if saving_six and (directory / "3" / "commit_success.txt").exists():
            trainers = psutil.Process(launcher.pid).children()
            os.kill(trainers[-1].pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    output = launcher.communicate(timeout=300)[0]
    if killed:
        assert launcher.returncode != 0 and "exited with status -9" in output, output[-4000:]
    else:  # the save was too quick to catch on this machine: the run must then have completed
        assert launcher.returncode == 0 and (directory / "6" / "commit_success.txt").exists(), output[-4000:]
        pytest.skip("step 6's save finished before it could be interrupted")

    assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["3"]
    logs = run_to_the_end(stage1_data, workdir)
    assert "resumed from checkpoint step 3" in logs[0]
    assert "[p0] stopped: completed at step 6" in logs[-1] and "[p1] stopped: completed at step 6" in logs[-1]
    for step in ("3", "6"):  # complete: every item, each process's shards
        items = {p.name for p in (directory / step).iterdir()}
        assert {"params", "opt_state", "trainer", "data", "model_config"} <= items, items
        shards = {p.name for p in (directory / step / "params").glob("ocdbt.process_*")}
        assert shards == {"ocdbt.process_0", "ocdbt.process_1"}
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    model, params = checkpoints.load(workdir)  # one host reads what the two processes wrote
    assert model.config.num_layers > 0
    print(f"wall time, kill + resume: {time.monotonic() - started:.0f} s; attempts after the kill: {len(logs)}")
