"""The pod launchers, run for real (not --dry-run), check ahead of time before provisioning: a run that does not fit
its slice is refused with one line and no cloud command is ever called; a run that fits goes on to the first one.
The AOT compile is real (libtpu); gcloud / kubectl / xpk, which cannot run here, are recording stand-ins first on
PATH that append their arguments to a file and fail."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwencoder_jax.aot import topology

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--stage", "gin/stages/stage1_file_level.gin", "--gin-file", "gin/models/tiny.gin", "--gin",
        "SEQUENCE_LENGTH=128", "--gin", "BATCH_SIZE=4", "--workdir", "gs://bucket/run"]
# a 4M-token vocabulary at width 1024: 16 GiB of embedding, times three with Adam, on one 16 GiB v5e chip
TOO_BIG = ["--gin", 'MODEL_OVERRIDES={"vocab_size": 4194304, "hidden_size": 1024}']
LAUNCHERS = {"tpu_vm": ["--name", "coder", "--project", "proj", "--zone", "us-east5-a"],
             "gke": ["--name", "coder", "--image", "gcr.io/p/qc:1"]}


@pytest.fixture
def cloud(tmp_path):
    """A PATH whose gcloud, kubectl and xpk record their argv (one line per call) and exit 1."""
    try:
        topology.libtpu_path()
    except topology.LibtpuMissing as error:
        pytest.skip(f"{error} (scripts/setup.sh installs it on x86-64 Linux)")
    bin_dir, record = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name in ("gcloud", "kubectl", "xpk"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{record}"\nexit 1\n')
        tool.chmod(0o755)

    def launch(launcher, *args):
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "XDG_CACHE_HOME": str(tmp_path / "cache")}  # libtpu's logs
        if launcher == "gke":
            args += ("--manifest", str(tmp_path / "jobset.yaml"))
        result = subprocess.run([sys.executable, f"launch/{launcher}.py", *LAUNCHERS[launcher], *args], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=600)
        calls = record.read_text().splitlines() if record.exists() else []
        record.unlink(missing_ok=True)
        return result, calls

    return launch


@pytest.mark.slow  # a real compile per launcher: about 20 s each on a loaded 2-core machine
@pytest.mark.parametrize("launcher", ["tpu_vm", "gke"])
def test_a_run_that_does_not_fit_is_refused_before_any_cloud_command(cloud, launcher):
    result, calls = cloud(launcher, "--accelerator", "v5litepod-1", *TINY, *TOO_BIG)
    assert result.returncode == 1, result.stderr[-2000:]
    assert calls == []
    refusal = [line for line in result.stderr.splitlines() if "refusing to provision" in line]
    assert len(refusal) == 1 and refusal[0].startswith(f"[{launcher}] refusing to provision: the ahead-of-time check "
                                                       "exited 1")
    assert "does not fit" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("launcher, first", [
    ("tpu_vm", "gcloud compute tpus queued-resources create coder --project=proj --zone=us-east5-a "
               "--accelerator-type=v5litepod-4 --runtime-version=v2-alpha-tpuv5-lite --node-id=coder"),
    ("gke", "kubectl apply -f {tmp_path}/jobset.yaml")])
def test_a_run_that_fits_goes_on_to_provision(cloud, launcher, first, tmp_path):
    result, calls = cloud(launcher, "--accelerator", "v5litepod-4", *TINY)
    assert "fits=yes" in result.stdout, result.stderr[-2000:]
    assert calls and calls[0] == first.format(tmp_path=tmp_path), calls
    # the stand-in fails, so each launcher tears down what it may have created and reports the failure
    assert calls[-1] in ("gcloud compute tpus queued-resources delete coder --project=proj --zone=us-east5-a "
                         "--force --quiet", "kubectl delete jobset coder")
    assert result.returncode == 1
