"""The documented multi-process form, repeated: how many runs complete, how many stall, and their wall time.

    python benchmarks/multiprocess_repeat.py [--runs 6] [--steps 6] [--data DIR]

Each run is `python launch/local.py --num_processes 2 --devices_per_process 2 -- python -m qwencoder_apps.train
--gin_file=gin/stages/stage1_file_level.gin --gin_file=gin/cpu/tiny.gin --gin.MESH_SHAPE='(1,-1,1,1)' ...` in a
fresh workdir, checkpointing every `--checkpoint_every` steps. The reference, measured first in the same run: the
same training on one process with the same four devices. DIR holds code/, text/ and math/ in the data pipelines'
layout; without it, small shards of this Python's standard library are written to a temporary directory.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from qwencoder_jax import cli_flags
from qwencoder_jax.data import shards

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def write_stdlib_data(root: Path) -> Path:
    """code/ (20 standard-library files), text/ and math/ (module docstrings) as the stage-1 sources."""
    files = sorted(STDLIB.glob("*.py"))[:60]
    code = [{"id": f"stdlib:{f.name}", "source": "stdlib", "kind": "code_file", "language": "python",
             "repo_name": "cpython", "path": f.name, "text": f.read_text(encoding="utf-8")[:6000]} for f in files[:20]]
    shards.write_dataset(root / "code", "stdlib_code", "code_file", code)
    docs = []
    for f in files:
        try:
            doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8")))
        except SyntaxError:
            continue
        if doc and len(doc) > 80:
            docs.append((f.name, doc))
    for kind in ("text", "math"):
        examples = [{"id": f"{kind}:{name}", "kind": kind, "text": doc, "language": "en"} for name, doc in docs[:10]]
        shards.write_dataset(root / kind, f"stdlib_{kind}", kind, examples)
    return root


def parse_gin_macro(path: Path, name: str) -> str:
    for line in path.read_text().splitlines():
        if line.split("=")[0].strip() == name:
            return line.split("=", 1)[1].strip()
    raise SystemExit(f"error: {path} binds no {name}")


def train_arguments(data: Path, workdir: Path, steps: int, checkpoint_every: int) -> list[str]:
    return [sys.executable, "-m", "qwencoder_apps.train", "--gin_file=gin/stages/stage1_file_level.gin",
            "--gin_file=gin/cpu/tiny.gin", "--gin.MESH_SHAPE=(1,-1,1,1)", f"--gin.TOTAL_STEPS={steps}",
            f"--gin.CHECKPOINT_EVERY={checkpoint_every}", f"--gin.CODE_DIR='{data / 'code'}'",
            f"--gin.TEXT_DIR='{data / 'text'}'", f"--gin.MATH_DIR='{data / 'math'}'", f"--workdir={workdir}"]


def run(command: list[str], env: dict[str, str], timeout: float) -> tuple[str, float, str]:
    """(outcome, wall seconds, output tail): outcome is completed, stalled or failed."""
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout + 60)
        output, code = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as expired:
        output, code = str(expired.stdout or "") + str(expired.stderr or ""), None
    wall = time.perf_counter() - start
    if code == 0:
        return "completed", wall, output[-300:]
    stalled = code is None or "[launch] timed out" in output or "no step finished for" in output
    return ("stalled" if stalled else "failed"), wall, output[-600:]


def main(argv: list[str] | None = None) -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--checkpoint_every", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300, help="seconds before the launcher stops a run")
    parser.add_argument("--data", type=Path, default=None, help="code/, text/, math/ shards (default: stdlib)")
    args = parser.parse_args(argv)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = args.data or write_stdlib_data(scratch / "data")
        single_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
        # BATCH_SIZE is per process: one process takes both processes' rows (the same global batch).
        one_process = train_arguments(data, scratch / "reference", args.steps, args.checkpoint_every)
        batch = 2 * int(parse_gin_macro(ROOT / "gin/cpu/tiny.gin", "BATCH_SIZE"))
        outcome, reference, tail = run(one_process + [f"--gin.BATCH_SIZE={batch}"], single_env, args.timeout)
        if outcome != "completed":
            print(f"error: the one-process reference run did not complete:\n{tail}", file=sys.stderr)
            return 1
        print(f"reference: 1 process x 4 devices, {args.steps} steps: {reference:.1f} s", flush=True)
        outcomes, walls = [], []
        for number in range(args.runs):
            launcher = [sys.executable, "launch/local.py", "--num_processes", "2", "--devices_per_process", "2",
                        "--timeout", str(args.timeout), "--"]
            outcome, wall, tail = run(launcher + train_arguments(data, scratch / f"run{number}", args.steps,
                                                                 args.checkpoint_every), env, args.timeout)
            outcomes.append(outcome)
            walls.append(wall)
            print(f"run {number + 1}/{args.runs}: {outcome} in {wall:.1f} s" + ("" if outcome == "completed"
                                                                              else f"\n{tail}"), flush=True)
    done = [wall for outcome, wall in zip(outcomes, walls) if outcome == "completed"]
    median = statistics.median(done) if done else float("nan")
    print(f"completed={len(done)} stalled={outcomes.count('stalled')} failed={outcomes.count('failed')} "
          f"median_completed_wall_s={median:.1f} ratio_to_one_process={median / reference:.2f}")
    return 0 if len(done) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
