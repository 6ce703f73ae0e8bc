"""The ahead-of-time table: every shipped stage x the six presets on the slice recommended for it, compiled for
TPU on this host (`python -m qwencoder_apps.aot` per row, in a subprocess each), as a markdown table.

    python benchmarks/aot_table.py [--stages stage1_file_level,...] [--presets 0.5b,7b] [--out docs/aot_table.md]
        [--compile_all]

Per row: slice, mesh, per-device batch, per-device HBM (total and temporaries), fits, Mosaic kernels, compile
seconds. Needs libtpu (scripts/setup.sh). Rows run in the order given; partial results are written after each.
A stage whose program equals another's apart from constants (SAME_PROGRAM) reuses that stage's row when both
are asked for, marked `(= stage)`; --compile_all compiles it anyway.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from qwencoder_jax import cli_flags

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("stage1_file_level", "stage2_repo_level", "stage3_sft", "stage3_sft_coarse", "stage3_sft_fine")
PRESETS = ("0.5b", "1.5b", "3b", "7b", "14b", "32b")
# preset -> the recommended slice; BATCH_SIZE is per host (4 chips): 4 rows = one row per v5p chip.
SLICES = {"0.5b": "v5p-8", "1.5b": "v5p-16", "3b": "v5p-32", "7b": "v5p-256", "14b": "v5p-256", "32b": "v5p-512"}
# stage -> gin bindings for the pod run. Stage 2 (32,768 tokens) shards the sequence over 4 devices for the two
# largest presets (one row per 4 chips).
BINDINGS = {"stage2_repo_level": {"14b": ["MESH_SHAPE=(1,-1,4,1)", "BATCH_SIZE=1"],
                                  "32b": ["MESH_SHAPE=(1,-1,4,1)", "BATCH_SIZE=1"]}}
DEFAULT_BINDINGS = ["BATCH_SIZE=4"]
# stage -> the stage whose compiled program it equals apart from constants (the SFT stages differ only in their
# learning-rate schedule's constants: tests/aot/test_stage_programs.py)
SAME_PROGRAM = {"stage3_sft_coarse": "stage3_sft", "stage3_sft_fine": "stage3_sft"}


def plan(stages: list[str], presets: list[str], compile_all: bool = False) -> list[tuple[str, str, str | None]]:
    """(stage, preset, the stage whose row it reuses or None to compile), stage by stage; a row is reused only
    from a stage asked for too and compiled before it."""
    rows, compiled = [], set()
    for stage in stages:
        for preset in presets:
            source = SAME_PROGRAM.get(stage)
            reuse = source if not compile_all and (source, preset) in compiled else None
            rows.append((stage, preset, reuse))
            if reuse is None:
                compiled.add((stage, preset))
    return rows


def reused_row(row: dict, stage: str) -> dict:
    """A compiled row standing for `stage`, whose program is the same."""
    return {**row, "stage": stage, "same_as": row["stage"]}


def run_row(stage: str, preset: str, libtpu_flags: str = "") -> dict:
    bindings = BINDINGS.get(stage, {}).get(preset, DEFAULT_BINDINGS)
    with tempfile.TemporaryDirectory() as folder:
        report_path = Path(folder) / "report.json"
        command = [sys.executable, "-m", "qwencoder_apps.aot", "--topology", SLICES[preset],
                   f"--gin_file={ROOT / 'gin/stages' / (stage + '.gin')}",
                   f"--gin_file={ROOT / 'gin/models' / f'qwen2.5-coder-{preset}.gin'}",
                   *[f"--gin.{binding}" for binding in bindings], "--json", str(report_path),
                   f"--libtpu_flags={libtpu_flags}"]
        result = subprocess.run(command, capture_output=True, text=True)
        row = {"stage": stage, "preset": preset, "slice": SLICES[preset], "bindings": bindings,
               "status": result.returncode}
        if report_path.exists():
            row.update(json.loads(report_path.read_text()))
        else:
            row["error"] = (result.stderr.strip().splitlines() or ["?"])[-1][:200]
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| stage | preset | slice | bindings | mesh (data, fsdp, seq, tensor) | per-device GiB | temporaries GiB "
             "| HBM GiB | fits | Mosaic kernels | compile s |", "|" + "---|" * 11]
    for row in rows:
        if "per_device_bytes" not in row:
            lines.append(f"| {row['stage']} | {row['preset']} | {row['slice']} | {' '.join(row['bindings'])} | "
                         f"error: {row.get('error')} |||||||")
            continue
        mesh = ", ".join(str(row["mesh"][axis]) for axis in ("data", "fsdp", "sequence", "tensor"))
        lines.append(f"| {row['stage']} | {row['preset']} | {row['slice']} | {' '.join(row['bindings'])} | {mesh} | "
                     f"{row['per_device_bytes'] / 2**30:.2f} | {row['temp_bytes'] / 2**30:.2f} | "
                     f"{row['hbm_bytes'] / 2**30:.0f} | {'yes' if row['fits'] else 'NO'} | {row['mosaic_kernels']} | "
                     + (f"(= {row['same_as']}) |" if "same_as" in row else f"{row['compile_seconds']:.0f} |"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--out", default=None, help="write the markdown table here (and rows as JSON beside it)")
    parser.add_argument("--compile_all", action="store_true",
                        help="compile every row, also those whose program equals another stage's (SAME_PROGRAM)")
    args = parser.parse_args(argv)
    stages, presets = args.stages.split(","), args.presets.split(",")
    unknown = sorted(set(stages) - set(STAGES)) + sorted(set(presets) - set(PRESETS))
    if unknown:
        parser.error(f"unknown stage or preset {', '.join(unknown)}; stages {STAGES}, presets {PRESETS}")
    rows, done = [], {}
    for stage, preset, source in plan(stages, presets, args.compile_all):
        row = reused_row(done[source, preset], stage) if source else run_row(stage, preset)
        done[stage, preset] = row
        rows.append(row)
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        if args.out:
            Path(args.out).write_text(markdown(rows))
            Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    return 0 if all(row.get("fits") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
