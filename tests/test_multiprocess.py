"""Real multi-process JAX on one machine (jax.distributed + gloo): 2 processes x 2 devices == 1 process x 4
devices, orbax checkpoints written and restored by both, and a dying process never leaves the others hanging."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, str(ROOT / "tests" / "multiprocess_worker.py")]
sys.path.insert(0, str(ROOT / "launch"))

import local as local_launcher  # noqa: E402


def worker_env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    for name in ("QWENCODER_COORDINATOR", "QWENCODER_NUM_PROCESSES", "QWENCODER_PROCESS_ID"):
        env.pop(name, None)
    return env


@pytest.fixture
def launcher_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


def test_two_processes_train_like_one_and_share_a_checkpoint(tmp_path, launcher_env):
    one = subprocess.run(WORKER + ["--result", str(tmp_path / "one.json"), "--checkpoint", str(tmp_path / "one")],
                         env=worker_env(4), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    log = io.StringIO()
    status = local_launcher.launch(
        WORKER + ["--result", str(tmp_path / "two.json"), "--checkpoint", str(tmp_path / "two")],
        num_processes=2, devices_per_process=2, timeout_seconds=300, sink=log)
    assert status == 0, log.getvalue()[-5000:]
    reference, distributed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (reference["processes"], reference["devices"]) == (1, 4)
    assert (distributed["processes"], distributed["devices"]) == (2, 4)
    assert distributed["restored"] and reference["restored"]
    assert len(distributed["losses"]) == 5
    for a, b in zip(distributed["losses"], reference["losses"]):
        assert abs(a - b) <= 1e-5 * abs(b)
    # the launcher streams both processes' logs with their prefix
    assert "[p0] step 4 loss" in log.getvalue() and "[p1] done: restored=True" in log.getvalue()
    assert (tmp_path / "two" / "params").is_dir()


def test_a_dying_process_stops_the_others_with_a_clear_error(tmp_path, launcher_env):
    log = io.StringIO()
    start = time.monotonic()
    status = local_launcher.launch(
        WORKER + ["--result", str(tmp_path / "r.json"), "--checkpoint", str(tmp_path / "c"),
                  "--die-after-step", "1", "--die-process", "1"],
        num_processes=2, devices_per_process=2, timeout_seconds=240, grace_seconds=3, sink=log)
    elapsed = time.monotonic() - start
    assert status == 3, log.getvalue()[-5000:]
    assert "[launch] process 1 exited with status 3" in log.getvalue()
    assert elapsed < 120
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow  # ~30 s; the launcher test above covers the same failure with the launcher's safety net
def test_survivor_fails_on_its_own_without_the_launcher(tmp_path):
    """Without anyone killing it, process 0 gets an error from the broken collective (or the heartbeat timeout)
    instead of hanging."""
    port = local_launcher.free_port()
    processes = []
    for process_id in range(2):
        env = local_launcher.process_env(process_id, 2, 2, port, heartbeat_timeout_seconds=10)
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
        processes.append(subprocess.Popen(
            WORKER + ["--result", str(tmp_path / "r.json"), "--checkpoint", str(tmp_path / "c"),
                      "--die-after-step", "1", "--die-process", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True))
    try:
        outputs = [process.communicate(timeout=180)[0] for process in processes]
    finally:
        local_launcher._stop(processes, grace_seconds=1)
    assert processes[1].returncode == 3
    assert processes[0].returncode != 0
    assert "Gloo" in outputs[0] or "heartbeat" in outputs[0].lower() or "unavailable" in outputs[0].lower(), \
        outputs[0][-3000:]
