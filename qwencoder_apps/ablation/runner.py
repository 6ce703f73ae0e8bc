"""Running a sweep's variants: checked first, then each through the trainer's command line in its own workdir.

Design notes: docs/ABLATIONS.md, section `qwencoder_apps/ablation/runner.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from qwencoder_apps.ablation import collect
from qwencoder_apps.ablation.spec import Sweep, SweepError, Variant

REPOSITORY = Path(__file__).resolve().parents[2]
LAUNCHERS = ("local", "inprocess", "pod")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    variant: str
    status: str  # "completed" | "failed" | "skipped" (already completed) | "launched" (pod)
    returncode: int | None
    wall_seconds: float
    command: list[str]
    gin_files: list[str]
    bindings: list[str]


def check(sweep: Sweep, workdir: str | Path) -> dict[str, str]:
    """Parses and binds every variant (no data read, no array built); returns {variant: operative config}."""
    # the trainer's gin command line loads jax: only when variants are checked
    import gin

    from qwencoder_apps import train as cli
    from qwencoder_jax.train import gin_check

    configs = {}
    # gin logs "Path not found" at ERROR for every include it then finds on its search path: noise here.
    root_logger, level = logging.getLogger(), logging.getLogger().level
    root_logger.setLevel(logging.CRITICAL)
    try:
        for variant in sweep.variants:
            try:
                cli.parse(sweep.gin_files_of(variant), sweep.bindings_of(variant))
                cli.build(str(Path(workdir) / variant.name))
                configs[variant.name] = gin.config_str()
            except Exception as error:  # gin raises several types; all mean the variant's config is wrong
                raise SweepError(f"variant {variant.name!r} does not bind: {gin_check.describe(error)}") from error
    finally:
        gin.clear_config()
        root_logger.setLevel(level)
    seen: dict[str, str] = {}
    for name, config in configs.items():
        if config in seen:
            raise SweepError(f"variants {seen[config]!r} and {name!r} bind the same configuration: what the "
                             "variant changes is overridden (an overlay or later file sets it too?); move the "
                             "change into the variant's bindings")
        seen[config] = name
    return configs


def train_command(sweep: Sweep, variant: Variant, workdir: Path, processes: int = 1,
                  devices_per_process: int = 1) -> list[str]:
    command = [sys.executable, "-m", "qwencoder_apps.train", *sweep.train_arguments(variant, str(workdir))]
    if processes > 1:
        command = [sys.executable, str(REPOSITORY / "launch" / "local.py"), "--num_processes", str(processes),
                   "--devices_per_process", str(devices_per_process), "--", *command]
    return command


def _completed(variant_dir: Path) -> bool:
    path = variant_dir / collect.RUN_RECORD
    return path.is_file() and json.loads(path.read_text()).get("status") == "completed"


def _write_record(variant_dir: Path, record: RunRecord) -> None:
    variant_dir.mkdir(parents=True, exist_ok=True)
    (variant_dir / collect.RUN_RECORD).write_text(json.dumps(dataclasses.asdict(record), indent=1) + "\n")


def run_variant(sweep: Sweep, variant: Variant, workdir: Path, launcher: str, processes: int = 1,
                devices_per_process: int = 1) -> RunRecord:
    variant_dir = workdir / variant.name
    variant_dir.mkdir(parents=True, exist_ok=True)
    if launcher == "inprocess" and processes > 1:
        raise ValueError("the inprocess launcher runs one process; use --launcher=local for --processes > 1")
    command = train_command(sweep, variant, variant_dir, processes, devices_per_process)
    started = time.perf_counter()
    log_path = variant_dir / "train.log"
    if launcher == "local":
        env = dict(os.environ)
        # The child must import this checkout whatever the caller's working directory (data paths stay relative
        # to it, as the user wrote them).
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPOSITORY), env.get("PYTHONPATH", "")) if p)
        with open(log_path, "w") as log:
            returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    elif launcher == "inprocess":
        # in-process runs only: jax and the trainer load when an ablation starts
        from qwencoder_apps import train as cli

        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output):
                returncode = cli.main(command[3:])
        except Exception:  # recorded, not raised: the other variants still run
            output.write(traceback.format_exc())
            returncode = 1
        log_path.write_text(output.getvalue())
    else:
        raise ValueError(f"launcher {launcher!r} does not run variants here; use one of {LAUNCHERS}")
    record = RunRecord(variant.name, "completed" if returncode == 0 else "failed", returncode,
                       time.perf_counter() - started, command, sweep.gin_files_of(variant), sweep.bindings_of(variant))
    _write_record(variant_dir, record)
    return record


def run_sweep(sweep: Sweep, workdir: str | Path, launcher: str = "local", rerun: bool = False,
              log=print, processes: int = 1, devices_per_process: int = 1) -> list[RunRecord]:
    """Runs every variant in order (a variant whose record says completed is skipped unless `rerun`)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    records = []
    for number, variant in enumerate(sweep.variants, 1):
        variant_dir = workdir / variant.name
        if not rerun and _completed(variant_dir):
            log(f"[ablate] {number}/{len(sweep.variants)} {variant.name}: already completed, kept")
            previous = json.loads((variant_dir / collect.RUN_RECORD).read_text())
            records.append(RunRecord(**{**previous, "status": "completed"}))
            continue
        log(f"[ablate] {number}/{len(sweep.variants)} {variant.name}: training ({launcher})")
        record = run_variant(sweep, variant, workdir, launcher, processes, devices_per_process)
        log(f"[ablate] {number}/{len(sweep.variants)} {variant.name}: {record.status} in "
            f"{record.wall_seconds:.1f} s" + ("" if record.status == "completed" else
                                               f" (see {variant_dir / 'train.log'})"))
        records.append(record)
    return records


# -- pods -------------------------------------------------------------------------------------------------------

def _repository_relative(path: str) -> str:
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(REPOSITORY))
    except ValueError:
        raise SweepError(f"gin file {path} is outside the repository {REPOSITORY}; a pod runs the committed "
                         "checkout only, so put the file under gin/") from None


def tpu_name(prefix: str, variant: str) -> str:
    """TPU resource names: lowercase letters, digits and hyphens, starting with a letter, at most 63 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{variant}".lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"a-{name}"
    return name[:63].rstrip("-")


def pod_commands(sweep: Sweep, name_prefix: str, pod_flags: Sequence[str], pod_workdir: str,
                 dry_run: bool = False) -> dict[str, list[str]]:
    """{variant: `python launch/tpu_vm.py ...` argv}; the first gin file is the stage, the rest follow it."""
    commands = {}
    for variant in sweep.variants:
        files = [_repository_relative(path) for path in sweep.gin_files_of(variant)]
        command = [sys.executable, str(REPOSITORY / "launch" / "tpu_vm.py"), "--name", tpu_name(name_prefix, variant.name),
                   *pod_flags, "--stage", files[0]]
        for path in files[1:]:
            command += ["--gin_file", path]
        for binding in sweep.bindings_of(variant):
            key, _, value = binding.partition("=")
            command += ["--gin", f"{key.strip()}={value.strip()}"]
        command += ["--workdir", f"{pod_workdir.rstrip('/')}/{variant.name}"] + (["--dry_run"] if dry_run else [])
        commands[variant.name] = command
    return commands


def launch_pods(commands: dict[str, list[str]], workdir: str | Path, log=print) -> list[RunRecord]:
    """Starts every variant's tpu_vm.py at once (each has its own TPUs) and waits for all of them."""
    workdir = Path(workdir)
    started, processes = time.perf_counter(), {}
    for name, command in commands.items():
        (workdir / name).mkdir(parents=True, exist_ok=True)
        handle = open(workdir / name / "launch.log", "w")
        processes[name] = (subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT), handle)
        log(f"[ablate] {name}: launched {shlex.join(command[1:])}")
    records = []
    for name, (process, handle) in processes.items():
        returncode = process.wait()
        handle.close()
        record = RunRecord(name, "completed" if returncode == 0 else "failed", returncode,
                           time.perf_counter() - started, commands[name], [], [])
        _write_record(workdir / name, record)
        records.append(record)
    return records
