"""Run a training stage on TPU slices in GKE: a JobSet (one Job per slice, one pod per TPU host), or xpk.

    python launch/gke.py --name coder7b --image IMAGE --accelerator v5p-256 --num_slices 2 \
        --stage gin/stages/stage1_file_level.gin --gin_file gin/models/qwen2.5-coder-7b.gin \
        --gin MESH_SHAPE="(1,-1,1,1)" --gin NUM_SLICES=2 --workdir gs://B/runs/stage1 --dry_run
    python launch/gke.py ... --xpk --cluster CLUSTER --dry_run     # the same run through xpk

--dry_run prints the manifest and the exact commands (kubectl apply / logs / delete, or xpk) and runs nothing.
The image must hold this checkout installed (e.g. `pip install -e .` and jax[tpu]). GKE's TPU webhook sets
TPU_WORKER_HOSTNAMES / TPU_WORKER_ID in each pod, which `qwencoder_jax.distributed.initialize()` picks up; for
Multislice the manifest adds the MEGASCALE_* variables (coordinator = pod 0 of slice 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
import tempfile
from typing import Any, Sequence

import yaml

from qwencoder_jax import cli_flags
from qwencoder_jax.aot import topology as topology_lib

# launch/ is the script directory
from tpu_slices import (SliceType, accelerator_argument, aot_check_command, libtpu_flags_argument,
                        run_aot_check, stage_command)

# accelerator family -> GKE node selector value (slice geometry: tpu_slices.py)
NODE_SELECTORS = {"v4": "tpu-v4-podslice", "v5p": "tpu-v5p-slice", "v5litepod": "tpu-v5-lite-podslice",
                  "v6e": "tpu-v6e-slice"}
MEGASCALE_PORT = 8080


@dataclasses.dataclass(frozen=True)
class GkeRun:
    name: str
    image: str
    accelerator: str = "v5p-256"
    num_slices: int = 1
    stage: str = "gin/stages/stage1_file_level.gin"
    gin_bindings: tuple[str, ...] = ()
    entry: str = "qwencoder_apps.train"
    gin_files: tuple[str, ...] = ()  # more gin files after the stage (overlays), repository-relative
    workdir: str | None = None  # the trainer's --workdir in every pod
    cluster: str | None = None
    topology: str | None = None
    libtpu_flags: str = ""  # every pod's LIBTPU_INIT_ARGS (tpu_slices.libtpu_flags_argument)

    @property
    def slice(self) -> SliceType:
        return SliceType(self.accelerator)

    def physical_topology(self) -> str:
        """The slice's chip grid (e.g. 4x4x8), as the AOT check compiles for it, unless --topology says otherwise."""
        return self.topology or topology_lib.parse(self.accelerator).grid

    def train_command(self) -> str:
        return stage_command(self.entry, self.stage, self.gin_bindings, self.gin_files, self.workdir,
                             self.libtpu_flags)


def manifest(run: GkeRun) -> dict[str, Any]:
    """A JobSet: `num_slices` replicas of an indexed Job with one pod per TPU host of a slice."""
    env = [{"name": "JAX_PLATFORMS", "value": "tpu"}]
    if run.num_slices > 1:
        env += [
            {"name": "MEGASCALE_COORDINATOR_ADDRESS",
             "value": f"{run.name}-slice-0-0.{run.name}"},  # pod 0 of job 0, through the JobSet's headless service
            {"name": "MEGASCALE_NUM_SLICES", "value": str(run.num_slices)},
            {"name": "MEGASCALE_PORT", "value": str(MEGASCALE_PORT)},
            {"name": "MEGASCALE_SLICE_ID", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['jobset.sigs.k8s.io/job-index']"}}},
        ]
    container = {
        "name": "train", "image": run.image, "command": ["bash", "-c", run.train_command()], "env": env,
        "ports": [{"containerPort": MEGASCALE_PORT}, {"containerPort": 8431}],  # megascale, jax coordinator
        "securityContext": {"privileged": True},
        "resources": {"limits": {"google.com/tpu": run.slice.chips_per_host}},
    }
    pod = {
        "metadata": {"annotations": {}},
        "spec": {
            "restartPolicy": "Never", "hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet",
            "nodeSelector": {"cloud.google.com/gke-tpu-accelerator": NODE_SELECTORS[run.slice.family],
                             "cloud.google.com/gke-tpu-topology": run.physical_topology()},
            "containers": [container],
        },
    }
    job = {"parallelism": run.slice.hosts, "completions": run.slice.hosts, "completionMode": "Indexed",
           "backoffLimit": 0, "template": pod}
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": run.name,
                     # one slice per node pool: the pods of a Job must land on one physical slice
                     "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
        "spec": {
            "failurePolicy": {"maxRestarts": 0},  # any failed pod fails the whole run instead of leaving it hung
            "replicatedJobs": [{"name": "slice", "replicas": run.num_slices, "template": {"spec": job}}],
        },
    }


def kubectl_commands(run: GkeRun, manifest_path: str) -> list[list[str]]:
    selector = f"jobset.sigs.k8s.io/jobset-name={run.name}"
    return [
        ["kubectl", "apply", "-f", manifest_path],
        ["kubectl", "wait", "--for=condition=Ready", "pod", "-l", selector, "--timeout=30m"],
        ["kubectl", "logs", "-f", "-l", selector, "--prefix", f"--max-log-requests={run.slice.hosts * run.num_slices}"],
        ["kubectl", "delete", "jobset", run.name],
    ]


def xpk_commands(run: GkeRun) -> list[list[str]]:
    if not run.cluster:
        raise ValueError("--xpk needs --cluster (the GKE cluster xpk created)")
    return [
        ["xpk", "workload", "create", f"--cluster={run.cluster}", f"--workload={run.name}",
         f"--tpu-type={run.accelerator}", f"--num-slices={run.num_slices}", f"--docker-image={run.image}",
         f"--command={run.train_command()}"],
        ["xpk", "workload", "list", f"--cluster={run.cluster}", f"--filter-by-job={run.name}"],
        ["xpk", "workload", "delete", f"--cluster={run.cluster}", f"--workload={run.name}"],
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--image", required=True)
    accelerator_argument(parser)
    parser.add_argument("--num_slices", type=int, default=1)
    parser.add_argument("--stage", default="gin/stages/stage1_file_level.gin")
    parser.add_argument("--gin", action="append", default=[])
    parser.add_argument("--gin_file", action="append", default=[], help="gin file after the stage (repeatable)")
    parser.add_argument("--workdir", required=True,
                        help="the trainer's --workdir, the same in every pod: a shared location (gs://...), since "
                             "every host writes its shards of each checkpoint there")
    parser.add_argument("--entry", default="qwencoder_apps.train")
    parser.add_argument("--topology", default=None, help="physical topology, e.g. 4x4x8 (default: from the type)")
    parser.add_argument("--xpk", action="store_true", help="launch with xpk instead of a JobSet manifest")
    parser.add_argument("--cluster", default=None)
    parser.add_argument("--manifest", default=None, help="where to write the manifest (default: a temp file)")
    parser.add_argument("--dry_run", action="store_true")
    libtpu_flags_argument(parser)
    parser.add_argument("--no_check", action="store_true",
                        help="skip the ahead-of-time compile check (python -m qwencoder_apps.aot) before provisioning")
    args = parser.parse_args(argv)
    run = GkeRun(name=args.name, image=args.image, accelerator=args.accelerator, num_slices=args.num_slices,
                 stage=args.stage, gin_bindings=tuple(args.gin), entry=args.entry, gin_files=tuple(args.gin_file),
                 workdir=args.workdir, cluster=args.cluster,
                 topology=args.topology, libtpu_flags=args.libtpu_flags)
    check = None if args.no_check else aot_check_command(run.accelerator, run.num_slices, run.stage,
                                                         run.gin_bindings, run.gin_files, run.libtpu_flags)
    if check and args.dry_run:
        print(shlex.join(check))
    elif check and run_aot_check(check, "gke"):
        return 1
    if args.xpk:
        commands = xpk_commands(run)
    else:
        text = yaml.safe_dump(manifest(run), sort_keys=False)
        path = args.manifest or (f"/tmp/{run.name}-jobset.yaml" if args.dry_run
                                 else tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False).name)
        if args.dry_run:
            print(f"# {path}\n{text}---")
        else:
            with open(path, "w") as f:
                f.write(text)
        commands = kubectl_commands(run, path)
    if args.dry_run:
        for command in commands:
            print(shlex.join(command))
        return 0
    status = 0
    try:
        for command in commands[:-1]:
            status = subprocess.run(command).returncode
            if status:
                break
    finally:
        subprocess.run(commands[-1])  # always tear down
    return status


if __name__ == "__main__":
    sys.exit(main())
