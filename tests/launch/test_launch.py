"""The pod launch scripts in --dry_run: the exact gcloud / kubectl / xpk commands for a v5p-256 slice and a
2-slice Multislice run (nothing is executed), and the command every worker runs is one the train CLI accepts:
its flags go through the CLI's own parser and gin binds every configurable from them."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "launch"))

import gke  # noqa: E402
import tpu_vm  # noqa: E402

COMMON = ["--name", "coder", "--project", "proj", "--zone", "us-east5-a", "--accelerator", "v5p-256",
          "--gin", "MESH_SHAPE=(1,-1,1,1)", "--workdir", "gs://bucket/runs/stage1"]


def dry_run_lines(module, argv, capsys) -> list[str]:
    """The dry run's commands after the ahead-of-time check (its first line, checked in test_launch_aot_check)."""
    assert module.main(argv + ["--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "-m qwencoder_apps.aot --topology" in lines[0]
    return lines[1:]


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
    assert train[-1] == ("--command=cd ~/qwencoder-jax && python -m qwencoder_apps.train "
                         "--gin_file=gin/stages/stage1_file_level.gin '--gin.MESH_SHAPE=(1,-1,1,1)' "
                         "--workdir=gs://bucket/runs/stage1")
    assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "coder", "--project=proj",
                      "--zone=us-east5-a", "--force", "--quiet"]
    assert len(lines) == 8


def test_tpu_vm_two_slices(capsys):
    lines = dry_run_lines(tpu_vm, COMMON + ["--num_slices", "2", "--gin", "NUM_SLICES=2"], capsys)
    assert lines[1].endswith("--node-count=2 --node-prefix=coder")
    assert [line.split()[6] for line in lines if "tpu-vm scp" in line] == [
        "coder-0:/tmp/qwencoder-jax.tar.gz", "coder-1:/tmp/qwencoder-jax.tar.gz"]
    assert "--gin.NUM_SLICES=2" in lines[-2]


def test_launchers_reject_an_unknown_accelerator_in_one_line(capsys):
    """A slice type the TPU topologies do not have (a typo, an odd TensorCore count) is an argument error naming
    the known types, not a traceback."""
    import pytest
    for module, argv in ((tpu_vm, ["--name", "x", "--project", "p", "--zone", "z", "--workdir", "w"]),
                         (gke, ["--name", "x", "--image", "i", "--workdir", "w"])):
        for name in ("v9-8", "v5p-7"):
            with pytest.raises(SystemExit) as stop:
                module.main(argv + ["--accelerator", name, "--dry_run"])
            error = capsys.readouterr().err
            assert stop.value.code == 2 and "Traceback" not in error
            assert f"argument --accelerator: unknown TPU topology '{name}'; known: " in error and "v5p-256" in error


def test_gke_jobset_single_slice(capsys):
    lines = dry_run_lines(gke, ["--name", "coder", "--image", "gcr.io/p/qc:1", "--gin", "MESH_SHAPE=(1,-1,1,1)",
                                "--workdir", "gs://b/r"], capsys)
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
    lines = dry_run_lines(gke, ["--name", "coder", "--image", "img", "--num_slices", "2", "--workdir", "gs://b/r"],
                          capsys)
    manifest = yaml.safe_load("\n".join(lines[1:lines.index("---")]))
    assert manifest["spec"]["replicatedJobs"][0]["replicas"] == 2
    env = {e["name"]: e for e in manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "2"
    assert env["MEGASCALE_COORDINATOR_ADDRESS"]["value"] == "coder-slice-0-0.coder"
    lines = dry_run_lines(gke, ["--name", "coder", "--image", "img", "--num_slices", "2", "--xpk", "--cluster", "c1",
                                "--workdir", "gs://b/r"], capsys)
    assert lines[0] == ("xpk workload create --cluster=c1 --workload=coder --tpu-type=v5p-256 --num-slices=2 "
                        "--docker-image=img '--command=python -m qwencoder_apps.train "
                        "--gin_file=gin/stages/stage1_file_level.gin --workdir=gs://b/r'")


# --- the worker command against the real train CLI ------------------------------------------------------------

DATA_BINDINGS = ["CODE_DIR='gs://b/code'", "TEXT_DIR='gs://b/text'", "MATH_DIR='gs://b/math'", "NUM_SLICES=2",
                 "BATCH_SIZE=8", "TOTAL_STEPS=1000"]
POD_FLAGS = ["--gin_file", "gin/models/qwen2.5-coder-7b.gin", "--gin", "MESH_SHAPE=(1,-1,1,4)"] + [
    flag for binding in DATA_BINDINGS for flag in ("--gin", binding)]


def train_cli_accepts(worker_command: str, tmp_path, monkeypatch) -> "object":
    """Split the worker's shell command, check it names the train entry point, and run its flags through the train
    CLI's parser and gin (everything up to training itself): the bound TrainerConfig comes back."""
    from qwencoder_apps import train as cli

    words = shlex.split(worker_command)
    start = words.index("python")
    assert words[start:start + 3] == ["python", "-m", "qwencoder_apps.train"]
    import qwencoder_apps.train as entry  # the module `python -m qwencoder_apps.train` runs
    assert entry.main is cli.main
    monkeypatch.chdir(ROOT)  # workers run from the checkout's root, where the gin paths are relative to
    args, bindings = cli.split_arguments(words[start + 3:])
    try:
        cli.parse(args.gin_file, bindings)
        config, _ = cli.build(args.workdir)
    finally:
        import gin
        gin.clear_config()
    return config


def test_tpu_vm_worker_command_is_accepted_by_the_train_cli(capsys, tmp_path, monkeypatch):
    lines = dry_run_lines(tpu_vm, COMMON[:-2] + ["--num_slices", "2", "--workdir", "gs://b/runs/s1"] + POD_FLAGS,
                          capsys)
    worker_command = shlex.split(lines[-2])[-1].removeprefix("--command=").split(" && ", 1)[1]
    config = train_cli_accepts(worker_command, tmp_path, monkeypatch)
    assert config.workdir == "gs://b/runs/s1" and config.model.hidden_size == 3584
    assert (config.mesh.tensor, config.mesh.num_slices) == (4, 2)
    assert config.data_sources[0].dataset_dir == "gs://b/code"


def test_gke_worker_commands_are_accepted_by_the_train_cli(capsys, tmp_path, monkeypatch):
    argv = ["--name", "coder", "--image", "img", "--num_slices", "2", "--workdir", "gs://b/runs/s1"] + POD_FLAGS
    lines = dry_run_lines(gke, argv, capsys)
    manifest = yaml.safe_load("\n".join(lines[1:lines.index("---")]))
    container = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    pod_command = container["command"][-1] if isinstance(container["command"], list) else container["command"]
    config = train_cli_accepts(pod_command, tmp_path, monkeypatch)
    assert config.workdir == "gs://b/runs/s1" and config.mesh.num_slices == 2
    xpk = shlex.split(dry_run_lines(gke, argv + ["--xpk", "--cluster", "c1"], capsys)[0])
    assert train_cli_accepts(xpk[-1].removeprefix("--command="), tmp_path, monkeypatch).model.hidden_size == 3584


def test_pod_launchers_refuse_to_run_without_a_workdir(capsys):
    import pytest
    for module, argv in ((tpu_vm, COMMON[:-2]), (gke, ["--name", "coder", "--image", "img"])):
        with pytest.raises(SystemExit):
            module.main(argv + ["--dry_run"])
        assert "--workdir" in capsys.readouterr().err


def test_launchers_check_ahead_of_time_first_unless_told_not_to(capsys):
    """The check is the aot CLI on the launch's own slice, stage and bindings; --no_check drops it."""
    from qwencoder_apps.aot import _parser
    from qwencoder_apps.train import parse_with_gin_flags

    for module, argv in ((tpu_vm, COMMON + ["--num_slices", "2"]),
                         (gke, ["--name", "c", "--image", "i", "--workdir", "gs://b/r", "--num_slices", "2",
                                "--gin", "MESH_SHAPE=(1,-1,1,1)"])):
        assert module.main(argv + ["--dry_run"]) == 0
        check = shlex.split(capsys.readouterr().out.splitlines()[0])
        args, bindings = parse_with_gin_flags(_parser(), check[3:])
        assert (args.topology, args.num_slices) == ("v5p-256", 2)
        assert args.gin_file == ["gin/stages/stage1_file_level.gin"] and bindings == ["MESH_SHAPE = (1,-1,1,1)"]
        assert module.main(argv + ["--dry_run", "--no_check"]) == 0
        assert "qwencoder_apps.aot" not in capsys.readouterr().out


def test_libtpu_flags_reach_the_check_and_every_worker_alike(capsys, tmp_path, monkeypatch):
    """--libtpu_flags (default: this shell's LIBTPU_INIT_ARGS) is resolved once: the check compiles with it and every
    worker runs with it as LIBTPU_INIT_ARGS, and the worker command still goes through the train CLI."""
    from qwencoder_apps.aot import _parser
    from qwencoder_apps.train import parse_with_gin_flags
    from qwencoder_jax.aot import libtpu_flags

    resolved = libtpu_flags.resolve("async_collectives --xla_extra=1")
    monkeypatch.delenv("LIBTPU_INIT_ARGS", raising=False)
    pod = ["--workdir", "gs://b/runs/s1"] + POD_FLAGS
    for module, argv in ((tpu_vm, COMMON[:-2] + pod), (gke, ["--name", "c", "--image", "i", "--xpk", "--cluster",
                                                           "c1"] + pod)):
        assert module.main(argv + ["--dry_run", "--libtpu_flags", "async_collectives --xla_extra=1"]) == 0
        lines = capsys.readouterr().out.splitlines()
        args, _ = parse_with_gin_flags(_parser(), shlex.split(lines[0])[3:])
        assert args.libtpu_flags == resolved
        worker = next(shlex.split(line)[-1] for line in lines if "qwencoder_apps.train" in line)
        worker = worker.removeprefix("--command=").split(" && ")[-1]
        words = shlex.split(worker)
        assert words[0] == f"LIBTPU_INIT_ARGS={resolved}" and words[1:4] == ["python", "-m", "qwencoder_apps.train"]
        assert train_cli_accepts(worker, tmp_path, monkeypatch).workdir == "gs://b/runs/s1"
    monkeypatch.setenv("LIBTPU_INIT_ARGS", "--xla_from_shell=1")
    assert tpu_vm.main(COMMON + ["--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "--libtpu_flags=--xla_from_shell=1" in lines[0] and "LIBTPU_INIT_ARGS=--xla_from_shell=1 python" in lines[-2]
    monkeypatch.delenv("LIBTPU_INIT_ARGS")
    assert tpu_vm.main(COMMON + ["--dry_run"]) == 0
    assert "LIBTPU_INIT_ARGS" not in capsys.readouterr().out  # none given, none set


def test_a_bad_libtpu_flags_spec_is_one_line(capsys):
    import pytest
    with pytest.raises(SystemExit) as stop:
        tpu_vm.main(COMMON + ["--dry_run", "--libtpu_flags", "fast"])
    assert stop.value.code == 2
    assert "argument --libtpu_flags: libtpu flags: 'fast' is neither a profile" in capsys.readouterr().err
