"""TPU slice types by the names the launchers take ("v5p-256"), as compile-only devices from libtpu.

    topology = parse("v5p-8")                 # 4 chips, "v5p:2x2x1", 95 GiB HBM per chip
    devices = compile_devices(topology, num_slices=1)   # no TPU needed: libtpu describes the devices

libtpu is not a dependency of CPU runs: scripts/setup.sh installs it into its own folder (`<venv>/libtpu-aot`),
which only this module puts on the path, so ordinary CPU runs never load or probe it. `QWENCODER_LIBTPU_DIR`
names another folder; an importable `libtpu` package is used as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from qwencoder_jax.aot import libtpu_flags as flags_lib

# family -> (TensorCores counted per chip in the type name, topology-description prefix, HBM GiB per chip,
# peak bf16 dense TFLOP/s per chip) -- Google Cloud's TPU system-architecture pages.
FAMILIES = {
    "v4": (2, "v4", 32, 275.0),
    "v5litepod": (1, "v5e", 16, 197.0),
    "v5p": (2, "v5p", 95, 459.0),
    "v6e": (1, "v6e", 32, 918.0),
}
# chips -> the slice's chip grid (the shapes Cloud TPU provisions; 3D tori for v4/v5p, 2D for v5e/v6e)
GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
           512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
CHIPS_PER_HOST = 4
INSTALL_HINT = ("libtpu is not installed: run scripts/setup.sh (x86-64 Linux), or `pip install --target "
                "<venv>/libtpu-aot libtpu==0.0.42.1` (the version jax's tpu extra pins)")


class LibtpuMissing(RuntimeError):
    pass


_loaded_with: str | None = None  # LIBTPU_INIT_ARGS when libtpu loaded in this process (it reads them only then)


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # the launchers' accelerator type, e.g. "v5p-256"
    family: str
    chips: int
    grid: str  # e.g. "4x8x8"

    @property
    def description(self) -> str:
        """The name libtpu's topology description takes, e.g. "v5p:4x8x8"."""
        return f"{FAMILIES[self.family][1]}:{self.grid}"

    @property
    def hbm_bytes_per_chip(self) -> int:
        return FAMILIES[self.family][2] * 2**30

    @property
    def peak_flops_per_chip(self) -> float:
        return FAMILIES[self.family][3] * 1e12

    @property
    def hosts(self) -> int:
        return max(1, self.chips // CHIPS_PER_HOST)


def known_topologies() -> list[str]:
    names = []
    for family, (cores, *_rest) in FAMILIES.items():
        grid = GRID_3D if family in ("v4", "v5p") else GRID_2D
        names += [f"{family}-{chips * cores}" for chips in sorted(grid)]
    return names


def parse(name: str) -> Topology:
    """A Topology from a launcher name; ValueError listing the known names otherwise."""
    family, _, count = name.rpartition("-")
    if family in FAMILIES and count.isdigit():
        cores = FAMILIES[family][0]
        chips, remainder = divmod(int(count), cores)
        grid = (GRID_3D if family in ("v4", "v5p") else GRID_2D).get(chips)
        if grid and not remainder:
            return Topology(name=name, family=family, chips=chips, grid=grid)
    raise ValueError(f"unknown TPU topology {name!r}; known: {' '.join(known_topologies())}")


def _libtpu_dir() -> Path | None:
    configured = os.environ.get("QWENCODER_LIBTPU_DIR")
    if configured is not None:
        return Path(configured)
    if importlib.util.find_spec("libtpu") is not None:
        return None  # importable as it is
    return Path(sys.prefix) / "libtpu-aot"


def libtpu_path() -> str:
    """The path of libtpu.so, or LibtpuMissing with the install hint."""
    folder = _libtpu_dir()
    candidates = [folder / "libtpu" / "libtpu.so"] if folder is not None else []
    if folder is None:
        spec = importlib.util.find_spec("libtpu")
        candidates = [Path(location) / "libtpu.so" for location in (spec.submodule_search_locations or [])]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    where = f" (looked in {folder})" if folder is not None else ""
    raise LibtpuMissing(INSTALL_HINT + where)


def log_dir() -> Path:
    """Where libtpu writes its own log files during a compile (it would otherwise litter /tmp/tpu_logs): TPU_LOG_DIR
    when set, else the project's cache folder."""
    if os.environ.get("TPU_LOG_DIR"):
        return Path(os.environ["TPU_LOG_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwencoder_jax" / "libtpu_logs"


def compile_devices(topology: Topology, num_slices: int = 1, libtpu_flags: str = "") -> list:
    """The slice's TPU devices (num_slices slices of it), good for compiling only. libtpu_flags (a
    libtpu_flags.resolve spec) are added to LIBTPU_INIT_ARGS; libtpu reads them when it first loads, so one process
    compiles with one set: another set raises ValueError."""
    global _loaded_with
    path = libtpu_path()
    effective = flags_lib.combined(os.environ.get("LIBTPU_INIT_ARGS"), libtpu_flags)
    if _loaded_with is not None and effective != _loaded_with:
        raise ValueError(f"libtpu already loaded in this process with LIBTPU_INIT_ARGS={_loaded_with!r}; it reads "
                         f"its flags only when it loads, so {effective!r} needs a new process")
    # jax only here: topology names and libtpu are checked before any heavy import
    from jax.experimental import topologies

    # a one-chip slice is not divisible into libtpu's default 2x2x1 chips per host
    bounds = {"chips_per_host_bounds": (1, 1, 1)} if topology.chips == 1 else {}
    with _compile_only_environment(path, topology, effective):
        devices = list(topologies.get_topology_desc(platform="tpu", topology_name=topology.description,
                                                    num_slices=num_slices, **bounds).devices)
    _loaded_with = effective
    return devices


def check_flags(libtpu_flags: str) -> None:
    """ValueError naming what libtpu refuses in these flags (with LIBTPU_INIT_ARGS), found in a child process:
    libtpu ends the whole process on an unknown flag, which a caller would read as "does not fit"."""
    probe = ("import sys; from qwencoder_jax.aot import topology as t; "
             "t.compile_devices(t.parse('v5litepod-1'), 1, sys.argv[1])")
    root = str(Path(__file__).resolve().parents[2])  # this checkout, wherever the caller runs from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    result = subprocess.run([sys.executable, "-c", probe, libtpu_flags], capture_output=True, text=True, env=env)
    if result.returncode:
        lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
        refused = [line for line in lines if "flag" in line.lower()] or lines[-1:] or [f"exit {result.returncode}"]
        flags = flags_lib.combined(os.environ.get("LIBTPU_INIT_ARGS"), libtpu_flags)
        raise ValueError(f"libtpu refuses the flags {flags!r}: {refused[0]}")


@contextlib.contextmanager
def _compile_only_environment(path: str, topology: Topology, libtpu_init_args: str):
    """libtpu's settings while it describes the slice, then the environment as it was: left behind, the TPU-VM
    variables would make this process (and its children: launchers, tests) look like a TPU pod worker."""
    settings = {
        "TPU_LIBRARY_PATH": path,  # jax loads the TPU plugin from here
        # quiets libtpu's probing of the host for a TPU it will not find (the metadata server, worker hostnames)
        "TPU_ACCELERATOR_TYPE": topology.name, "TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
        "TPU_WORKER_ID": "0",
        # libtpu otherwise takes /tmp/libtpu_lockfile, and a second compile on this host (a launcher's check, a
        # test's subprocess) fails with "Internal error when accessing libtpu multi-process lockfile"; nothing here
        # touches a TPU, so processes need not exclude each other
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
        "TPU_LOG_DIR": str(log_dir()),
        "LIBTPU_INIT_ARGS": libtpu_init_args}
    Path(settings["TPU_LOG_DIR"]).mkdir(parents=True, exist_ok=True)
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update({name: value for name, value in settings.items()
                       if name in ("TPU_LIBRARY_PATH", "LIBTPU_INIT_ARGS") or before[name] is None})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
