"""Run a training stage on Cloud TPU VMs: one slice, or several joined over DCN (Multislice).

    python launch/tpu_vm.py --name coder7b --project P --zone us-east5-a --accelerator v5p-256 \
        --stage gin/stages/stage1_file_level.gin --gin_file gin/models/qwen2.5-coder-7b.gin \
        --gin MESH_SHAPE="(1,-1,1,1)" --gin CODE_DIR='"gs://B/code"' ... --workdir gs://B/runs/stage1 --dry_run
    python launch/tpu_vm.py ... --num_slices 2 --gin MESH_SHAPE="(1,-1,1,1)" --gin NUM_SLICES=2

Steps, each a plain gcloud command (--dry_run prints them, one per line, and runs nothing):
  1. request the slice(s) as a queued resource (Multislice needs queued resources: --node-count/--node-prefix)
  2. wait until the queued resource is ACTIVE
  3. copy a `git archive` of this checkout to every worker of every slice and install it (jax[tpu] pinned)
  4. run the stage on every worker at once (`queued-resources ssh --node=all --worker=all`); gcloud streams each
     worker's output. The TPU runtime sets the worker / slice / MEGASCALE_* variables, so
     `qwencoder_jax.distributed.initialize()` needs no flags there.
  5. delete the queued resource (and its TPU VMs), also when a step fails, unless --keep
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
import time
from typing import Sequence

from qwencoder_jax import cli_flags

# launch/ is the script directory
from tpu_slices import (SliceType, accelerator_argument, aot_check_command, libtpu_flags_argument,
                        run_aot_check, stage_command)

JAX_VERSION = "0.10.2"
REMOTE_DIR = "qwencoder-jax"
ARCHIVE = "/tmp/qwencoder-jax.tar.gz"

# accelerator family -> TPU VM runtime version (slice geometry: tpu_slices.py)
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
                    "v6e": "v2-alpha-tpuv6e"}


@dataclasses.dataclass(frozen=True)
class TpuRun:
    name: str
    project: str
    zone: str
    accelerator: str = "v5p-256"
    num_slices: int = 1
    stage: str = "gin/stages/stage1_file_level.gin"
    gin_bindings: tuple[str, ...] = ()
    entry: str = "qwencoder_apps.train"
    gin_files: tuple[str, ...] = ()  # more gin files after the stage (overlays), repository-relative
    workdir: str | None = None  # the trainer's --workdir on every worker
    libtpu_flags: str = ""  # the workers' LIBTPU_INIT_ARGS (tpu_slices.libtpu_flags_argument)
    runtime_version: str | None = None
    spot: bool = False
    keep: bool = False

    @property
    def slice(self) -> SliceType:
        return SliceType(self.accelerator)

    def node_names(self) -> list[str]:
        if self.num_slices == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(self.num_slices)]  # what --node-prefix produces

    def gcloud_scope(self) -> list[str]:
        return [f"--project={self.project}", f"--zone={self.zone}"]


def create_commands(run: TpuRun) -> list[list[str]]:
    runtime = run.runtime_version or RUNTIME_VERSIONS[run.slice.family]
    command = ["gcloud", "compute", "tpus", "queued-resources", "create", run.name, *run.gcloud_scope(),
               f"--accelerator-type={run.accelerator}", f"--runtime-version={runtime}"]
    if run.num_slices == 1:
        command.append(f"--node-id={run.name}")
    else:
        command += [f"--node-count={run.num_slices}", f"--node-prefix={run.name}"]
    if run.spot:
        command.append("--spot")
    return [command]


def wait_command(run: TpuRun) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", run.name, *run.gcloud_scope(),
            "--format=value(state.state)"]


def copy_and_install_commands(run: TpuRun) -> list[list[str]]:
    commands = [["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"]]
    for node in run.node_names():
        commands.append(["gcloud", "compute", "tpus", "tpu-vm", "scp", ARCHIVE, f"{node}:{ARCHIVE}",
                         "--worker=all", *run.gcloud_scope()])
    install = (f"mkdir -p ~/{REMOTE_DIR} && tar -xzf {ARCHIVE} -C ~/{REMOTE_DIR} && cd ~/{REMOTE_DIR} && "
               f"pip install -q -r requirements-tpu.txt 'jax[tpu]=={JAX_VERSION}' && pip install -q --no-deps -e .")
    commands.append(remote(run, install))
    return commands


def remote(run: TpuRun, shell_command: str) -> list[str]:
    """`shell_command` on every worker of every slice, output streamed back by gcloud."""
    return ["gcloud", "compute", "tpus", "queued-resources", "ssh", run.name, *run.gcloud_scope(), "--node=all",
            "--worker=all", f"--command={shell_command}"]


def run_command(run: TpuRun) -> list[str]:
    return remote(run, f"cd ~/{REMOTE_DIR} && " + stage_command(run.entry, run.stage, run.gin_bindings,
                                                                  run.gin_files, run.workdir, run.libtpu_flags))


def delete_command(run: TpuRun) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", run.name, *run.gcloud_scope(), "--force",
            "--quiet"]


def plan(run: TpuRun) -> list[list[str]]:
    """Every command in order (the wait step appears once: it is polled when run for real)."""
    return (create_commands(run) + [wait_command(run)] + copy_and_install_commands(run) + [run_command(run)]
            + ([] if run.keep else [delete_command(run)]))


def execute(run: TpuRun, poll_seconds: float = 30.0) -> int:
    status = 0
    try:
        for command in create_commands(run):
            subprocess.run(command, check=True)
        while True:
            state = subprocess.run(wait_command(run), check=True, capture_output=True, text=True).stdout.strip()
            print(f"[tpu_vm] queued resource {run.name}: {state}", flush=True)
            if state == "ACTIVE":
                break
            if state in ("FAILED", "SUSPENDED"):
                raise RuntimeError(f"queued resource {run.name} ended in state {state}")
            time.sleep(poll_seconds)
        for command in copy_and_install_commands(run):
            subprocess.run(command, check=True)
        status = subprocess.run(run_command(run)).returncode
    except (subprocess.CalledProcessError, RuntimeError) as error:
        print(f"[tpu_vm] failed: {error}", file=sys.stderr)
        status = 1
    finally:
        if not run.keep:
            subprocess.run(delete_command(run))
    return status


def parse(argv: Sequence[str] | None = None) -> tuple[TpuRun, bool]:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--zone", required=True)
    accelerator_argument(parser)
    parser.add_argument("--num_slices", type=int, default=1)
    parser.add_argument("--stage", default="gin/stages/stage1_file_level.gin")
    parser.add_argument("--gin", action="append", default=[], help="gin binding, e.g. MESH_SHAPE='(1,-1,1,1)'")
    parser.add_argument("--gin_file", action="append", default=[], help="gin file after the stage (repeatable)")
    parser.add_argument("--workdir", required=True,
                        help="the trainer's --workdir, the same on every worker: a shared location (gs://...), "
                             "since every host writes its shards of each checkpoint there")
    parser.add_argument("--entry", default="qwencoder_apps.train", help="python -m entry point run on each worker")
    parser.add_argument("--runtime_version", default=None)
    parser.add_argument("--spot", action="store_true")
    parser.add_argument("--keep", action="store_true", help="do not delete the TPUs at the end")
    parser.add_argument("--dry_run", action="store_true", help="print the commands and run nothing")
    libtpu_flags_argument(parser)
    parser.add_argument("--no_check", action="store_true",
                        help="skip the ahead-of-time compile check (python -m qwencoder_apps.aot) before provisioning")
    args = parser.parse_args(argv)
    run = TpuRun(name=args.name, project=args.project, zone=args.zone, accelerator=args.accelerator,
                 num_slices=args.num_slices, stage=args.stage, gin_bindings=tuple(args.gin), entry=args.entry,
                 gin_files=tuple(args.gin_file), workdir=args.workdir,
                 runtime_version=args.runtime_version, spot=args.spot, keep=args.keep,
                 libtpu_flags=args.libtpu_flags)
    run.slice  # fail early on an unknown accelerator
    check = None if args.no_check else aot_check_command(run.accelerator, run.num_slices, run.stage,
                                                         run.gin_bindings, run.gin_files, run.libtpu_flags)
    return run, args.dry_run, check


def main(argv: Sequence[str] | None = None) -> int:
    run, dry_run, check = parse(argv)
    if dry_run:
        if check:
            print(shlex.join(check))
        print(f"# {run.num_slices} x {run.accelerator}: {run.slice.chips} chips and "
              f"{run.slice.hosts} hosts per slice")
        for command in plan(run):
            print(shlex.join(command))
        return 0
    if check and run_aot_check(check, "tpu_vm"):
        return 1
    return execute(run)


if __name__ == "__main__":
    sys.exit(main())
