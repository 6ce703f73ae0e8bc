"""The pod launch scripts in --dry-run: the exact gcloud / kubectl / xpk commands for a v5p-256 slice and a
2-slice Multislice run (nothing is executed)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))

import gke  # noqa: E402
import tpu_vm  # noqa: E402

COMMON = ["--name", "coder", "--project", "proj", "--zone", "us-east5-a", "--accelerator", "v5p-256",
          "--gin", "MESH_SHAPE=(1,-1,1,1)"]


def dry_run_lines(module, argv, capsys) -> list[str]:
    assert module.main(argv + ["--dry-run"]) == 0
    return capsys.readouterr().out.splitlines()


def test_tpu_vm_single_slice_v5p_256(capsys):
    lines = dry_run_lines(tpu_vm, COMMON, capsys)
    assert lines[0] == "# 1 x v5p-256: 128 chips and 32 hosts per slice"
    assert lines[1] == ("gcloud compute tpus queued-resources create coder --project=proj --zone=us-east5-a "
                        "--accelerator-type=v5p-256 --runtime-version=v2-alpha-tpuv5 --node-id=coder")
    assert lines[2].startswith("gcloud compute tpus queued-resources describe coder")
    assert lines[3] == "git archive --format=tar.gz --output=/tmp/qwencoder-jax.tar.gz HEAD"
    assert lines[4] == ("gcloud compute tpus tpu-vm scp /tmp/qwencoder-jax.tar.gz coder:/tmp/qwencoder-jax.tar.gz "
                        "--worker=all --project=proj --zone=us-east5-a")
    install, train, delete = (shlex.split(line) for line in lines[5:8])
    assert install[:9] == ["gcloud", "compute", "tpus", "queued-resources", "ssh", "coder", "--project=proj",
                           "--zone=us-east5-a", "--node=all"]
    assert "jax[tpu]==0.10.2" in install[-1]
    assert "--worker=all" in train
    assert train[-1] == ("--command=cd ~/qwencoder-jax && python -m qwencoder_jax.train "
                         "--gin_file=gin/stages/stage1_file_level.gin '--gin.MESH_SHAPE=(1,-1,1,1)'")
    assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "coder", "--project=proj",
                      "--zone=us-east5-a", "--force", "--quiet"]
    assert len(lines) == 8


def test_tpu_vm_two_slices(capsys):
    lines = dry_run_lines(tpu_vm, COMMON + ["--num-slices", "2", "--gin", "NUM_SLICES=2"], capsys)
    assert lines[1].endswith("--node-count=2 --node-prefix=coder")
    assert [line.split()[6] for line in lines if "tpu-vm scp" in line] == [
        "coder-0:/tmp/qwencoder-jax.tar.gz", "coder-1:/tmp/qwencoder-jax.tar.gz"]
    assert "--gin.NUM_SLICES=2" in lines[-2]


def test_tpu_vm_rejects_unknown_accelerator():
    import pytest
    with pytest.raises(ValueError, match="unknown TPU accelerator 'v9-8'"):
        tpu_vm.parse(["--name", "x", "--project", "p", "--zone", "z", "--accelerator", "v9-8"])


def test_gke_jobset_single_slice(capsys):
    lines = dry_run_lines(gke, ["--name", "coder", "--image", "gcr.io/p/qc:1", "--gin", "MESH_SHAPE=(1,-1,1,1)"],
                          capsys)
    separator = lines.index("---")
    manifest = yaml.safe_load("\n".join(lines[1:separator]))
    job = manifest["spec"]["replicatedJobs"][0]
    assert job["replicas"] == 1
    assert job["template"]["spec"]["parallelism"] == 32  # 128 chips / 4 per host
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "4x4x8"}
    assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == 4
    assert not any(e["name"].startswith("MEGASCALE") for e in pod["containers"][0]["env"])
    assert lines[separator + 1:] == [
        "kubectl apply -f /tmp/coder-jobset.yaml",
        "kubectl wait --for=condition=Ready pod -l jobset.sigs.k8s.io/jobset-name=coder --timeout=30m",
        "kubectl logs -f -l jobset.sigs.k8s.io/jobset-name=coder --prefix --max-log-requests=32",
        "kubectl delete jobset coder"]


def test_gke_two_slices_and_xpk(capsys):
    lines = dry_run_lines(gke, ["--name", "coder", "--image", "img", "--num-slices", "2"], capsys)
    manifest = yaml.safe_load("\n".join(lines[1:lines.index("---")]))
    assert manifest["spec"]["replicatedJobs"][0]["replicas"] == 2
    env = {e["name"]: e for e in manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "2"
    assert env["MEGASCALE_COORDINATOR_ADDRESS"]["value"] == "coder-slice-0-0.coder"
    lines = dry_run_lines(gke, ["--name", "coder", "--image", "img", "--num-slices", "2", "--xpk", "--cluster", "c1"],
                          capsys)
    assert lines[0] == ("xpk workload create --cluster=c1 --workload=coder --tpu-type=v5p-256 --num-slices=2 "
                        "--docker-image=img '--command=python -m qwencoder_jax.train --gin_file=gin/stages/stage1_file_level.gin'")
