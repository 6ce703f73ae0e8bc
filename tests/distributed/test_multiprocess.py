"""Real multi-process JAX on one machine (jax.distributed + gloo): 2 processes x 2 devices == 1 process x 4
devices, orbax checkpoints written and restored by both, and a dying process never leaves the others hanging;
the same through the real train CLI (`python -m qwencoder_apps.train` under launch/local.py) on real tiny data."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from qwencoder_jax import checkpoints

ROOT = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, str(ROOT / "tests" / "distributed" / "multiprocess_worker.py")]
TRAIN = [sys.executable, "-m", "qwencoder_apps.train"]
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
    # one host reads the checkpoint the two processes wrote (evaluation of a pod run): the 1-process run's weights
    # up to the float32 rounding by which the two runs' reductions differ
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
                 checkpoints.load_params(tmp_path / "two"), checkpoints.load_params(tmp_path / "one"))


def test_a_dying_process_stops_the_others_with_a_clear_error(tmp_path, launcher_env):
    log = io.StringIO()
    start = time.monotonic()
    status = local_launcher.launch(
        WORKER + ["--result", str(tmp_path / "r.json"), "--checkpoint", str(tmp_path / "c"),
                  "--die_after_step", "1", "--die_process", "1"],
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
                      "--die_after_step", "1", "--die_process", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True))
    try:
        outputs = [process.communicate(timeout=180)[0] for process in processes]
    finally:
        local_launcher._stop(processes, grace_seconds=1)
    assert processes[1].returncode == 3
    assert processes[0].returncode != 0
    assert "Gloo" in outputs[0] or "heartbeat" in outputs[0].lower() or "unavailable" in outputs[0].lower(), \
        outputs[0][-3000:]


# --- the real trainer, through its command line ------------------------------------------------------------


def stage1_command(data: Path, workdir: Path, steps: int) -> list[str]:
    # Every process reads the whole stream (loader_config.process_count=1), so the 2-process global batch is the
    # 1-process batch twice over: the mean loss and its gradients are the same numbers, computed with collectives
    # across processes. (With the default, each process reads every other record: a different, equally valid run.)
    return TRAIN + [
        "--gin_file=gin/stages/stage1_file_level.gin", "--gin_file=gin/cpu/tiny.gin",
        f"--gin.CODE_DIR='{data / 'code'}'", f"--gin.TEXT_DIR='{data / 'text'}'", f"--gin.MATH_DIR='{data / 'math'}'",
        f"--gin.TOTAL_STEPS={steps}", "--gin.CHECKPOINT_EVERY=2", "--gin.SEQUENCE_LENGTH=64", "--gin.BATCH_SIZE=4",
        "--gin.MESH_SHAPE=(1,-1,1,1)", "--gin.loader_config.process_index=0", "--gin.loader_config.process_count=1",
        f"--workdir={workdir}"]


def logged_losses(workdir: Path) -> list[float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in sorted(records, key=lambda record: record["step"])]


@pytest.mark.slow  # two trainer start-ups (imports, data, compile) on 2 cores: about 2 minutes
def test_train_cli_on_two_processes_matches_one_process(tmp_path, stage1_data, launcher_env, monkeypatch):
    monkeypatch.chdir(ROOT)  # the gin paths are relative to the checkout, as on a TPU worker
    steps = 4
    one = subprocess.run(stage1_command(stage1_data, tmp_path / "one", steps), env=worker_env(4),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    log = io.StringIO()
    status = local_launcher.launch(stage1_command(stage1_data, tmp_path / "two", steps), num_processes=2,
                                   devices_per_process=2, timeout_seconds=600, sink=log)
    assert status == 0, log.getvalue()[-5000:]
    for process in (0, 1):
        assert f"[p{process}] stopped: completed at step 4" in log.getvalue()

    reference, distributed = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    assert len(reference) == steps and len(distributed) == steps
    np.testing.assert_allclose(distributed, reference, rtol=1e-5)
    # orbax wrote each checkpoint from both processes (one OCDBT process directory per writer) ...
    for step in (2, 4):
        params_dir = tmp_path / "two" / "checkpoints" / str(step) / "params"
        assert {p.name for p in params_dir.glob("ocdbt.process_*")} == {"ocdbt.process_0", "ocdbt.process_1"}
    # ... and the checkpoint restores, here in one process on one device, to the 1-process run's weights: through
    # load_params (what evaluation and notebooks use) and into an explicit layout.
    reference_params = checkpoints.load_params(tmp_path / "one")
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), reference_params)
    for restored in (checkpoints.load_params(tmp_path / "two"), checkpoints.load_params_sharded(tmp_path / "two",
                                                                                                  target)):
        # atol: 1% of one Adam step at gin/cpu/tiny.gin's peak learning rate (3e-3). Adam normalises each
        # gradient by its own scale, so a parameter whose gradient is ~0 (embedding rows of tokens never seen) turns
        # the two runs' float32 summation-order differences into visible but sub-step differences.
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=3e-5), restored, reference_params)
