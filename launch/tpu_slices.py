"""What both pod launchers need to know about a TPU slice type ("v5p-256"), and the stage command they run.

The number in a type name counts TensorCores on v4/v5p (two per chip) and chips on v5e/v6e; hosts carry four
chips each. Launcher-specific tables (runtime versions, GKE node selectors) stay in their launchers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
from typing import Sequence

from qwencoder_jax.aot import libtpu_flags as libtpu_flags_lib
from qwencoder_jax.aot import topology as topology_lib

# family -> (TensorCores per chip counted in the type's number, chips per host)
GEOMETRY = {"v4": (2, 4), "v5p": (2, 4), "v5litepod": (1, 4), "v6e": (1, 4)}


@dataclasses.dataclass(frozen=True)
class SliceType:
    accelerator: str

    def __post_init__(self):
        family, _, count = self.accelerator.rpartition("-")
        if family not in GEOMETRY or not count.isdigit():
            raise ValueError(f"unknown TPU accelerator {self.accelerator!r}; expected FAMILY-N with FAMILY one of "
                             f"{sorted(GEOMETRY)}")

    @property
    def family(self) -> str:
        return self.accelerator.rpartition("-")[0]

    @property
    def chips(self) -> int:
        return int(self.accelerator.rpartition("-")[2]) // GEOMETRY[self.family][0]

    @property
    def hosts(self) -> int:
        return max(1, self.chips // GEOMETRY[self.family][1])

    @property
    def chips_per_host(self) -> int:
        return min(self.chips, GEOMETRY[self.family][1])


def _resolved_flags(spec: str) -> str:
    try:
        return libtpu_flags_lib.resolve(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _known_slice(name: str) -> str:
    try:
        topology_lib.parse(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def accelerator_argument(parser) -> None:
    parser.add_argument("--accelerator", type=_known_slice, default="v5p-256",
                        help="the TPU slice type, e.g. v5p-256 (v4-N and v5p-N count TensorCores, two per chip)")


def libtpu_flags_argument(parser) -> None:
    parser.add_argument("--libtpu_flags", type=_resolved_flags, default=os.environ.get("LIBTPU_INIT_ARGS", ""),
                        help="XLA TPU compiler flags for the check and every worker (their LIBTPU_INIT_ARGS): profile "
                             "names (" + ", ".join(sorted(libtpu_flags_lib.PROFILES)) + ") and/or --flag=value words; "
                             "default: this shell's LIBTPU_INIT_ARGS")


def stage_command(entry: str, stage: str, gin_bindings: Sequence[str], gin_files: Sequence[str] = (),
                  workdir: str | None = None, libtpu_flags: str = "") -> str:
    """`[LIBTPU_INIT_ARGS=...] python -m ENTRY --gin_file=STAGE [--gin_file=F ...] --gin.BINDING ...
    [--workdir=W]`, shell-quoted, as every worker runs it."""
    flags = [f"--gin_file={stage}"] + [f"--gin_file={path}" for path in gin_files]
    flags += [f"--gin.{binding}" for binding in gin_bindings] + ([f"--workdir={workdir}"] if workdir else [])
    resolved = libtpu_flags_lib.resolve(libtpu_flags)
    prefix = f"LIBTPU_INIT_ARGS={shlex.quote(resolved)} " if resolved else ""
    return prefix + f"python -m {entry} " + " ".join(shlex.quote(flag) for flag in flags)


def aot_check_command(accelerator: str, num_slices: int, stage: str, gin_bindings: Sequence[str],
                      gin_files: Sequence[str] = (), libtpu_flags: str = "") -> list[str]:
    """The ahead-of-time compile of the run's exact training step for the slice (`python -m qwencoder_apps.aot`),
    run on the launching machine before anything is provisioned: exit 0 fits, 1 does not fit, 2 bad arguments.
    It compiles with the workers' libtpu flags."""
    flags = [f"--gin_file={stage}"] + [f"--gin_file={path}" for path in gin_files]
    flags += [f"--gin.{binding}" for binding in gin_bindings]
    resolved = libtpu_flags_lib.resolve(libtpu_flags)
    flags += [f"--libtpu_flags={resolved}"] if resolved else []
    return [sys.executable, "-m", "qwencoder_apps.aot", "--topology", accelerator, "--num_slices", str(num_slices),
            *flags]


def run_aot_check(command: list[str], launcher: str) -> int:
    """Runs the check; a nonzero status refuses the launch, saying why. The command carries the workers' libtpu
    flags, so this shell's LIBTPU_INIT_ARGS is not added a second time."""
    env = {name: value for name, value in os.environ.items() if name != "LIBTPU_INIT_ARGS"}
    status = subprocess.run(command, env=env).returncode
    if status:
        print(f"[{launcher}] refusing to provision: the ahead-of-time check exited {status} (1: the step does not "
              f"fit the slice's HBM, 2: bad arguments or libtpu missing); fix it, or pass --no_check to skip",
              file=sys.stderr)
    return status
