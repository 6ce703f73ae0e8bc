"""XLA TPU flags side by side: each preset's stage compiled for its recommended slice (benchmarks/aot_table.py's
SLICES) as shipped and with a libtpu flags spec, one after the other, printing per-device HBM and the
collectives per device per step of both, and the ratios (flags / shipped). Result bytes are what the collectives
produce; "ring traffic" estimates what each device sends, by the ring algorithms' costs: an all-reduce sends about
twice its bytes (a reduce-scatter, then an all-gather), the others about their result bytes.

    python benchmarks/aot_flags.py [--flags async_collectives] [--presets 7b,14b,32b] [--stage stage1_file_level]

Needs libtpu (scripts/setup.sh). Figures and what they mean: docs/tpu_aot.md (XLA TPU flags).
"""

from __future__ import annotations

import argparse
import sys

from aot_table import PRESETS, SLICES, STAGES, run_row

from qwencoder_jax import cli_flags
from qwencoder_jax.aot import libtpu_flags

GIB = 2**30
KINDS = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute")


def line(label: str, row: dict) -> str:
    if "per_device_bytes" not in row:
        return f"  {label:<9} error: {row.get('error')}"
    collectives = "  ".join(f"{kind} {row['collectives'][kind]['count']:5d} x {row['collectives'][kind]['bytes'] / GIB:7.2f} GiB"
                            for kind in KINDS)
    return (f"  {label:<9} {row['per_device_bytes'] / GIB:6.2f} GiB per device, fits {'yes' if row['fits'] else 'NO'}, "
            f"compile {row['compile_seconds']:5.0f} s  {collectives}")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else ("1.00" if not a else "inf")


def main(argv=None) -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flags", default="async_collectives", help="a libtpu flags spec (profiles, --flag=value)")
    parser.add_argument("--presets", default="7b,14b,32b")
    parser.add_argument("--stage", default="stage1_file_level")
    args = parser.parse_args(argv)
    presets = args.presets.split(",")
    if set(presets) - set(PRESETS):
        parser.error(f"unknown preset {', '.join(sorted(set(presets) - set(PRESETS)))}; presets {PRESETS}")
    if args.stage not in STAGES:
        parser.error(f"unknown stage {args.stage}; stages {STAGES}")
    try:
        libtpu_flags.resolve(args.flags)
    except ValueError as error:
        parser.error(str(error))
    status = 0
    for preset in presets:
        shipped, flagged = run_row(args.stage, preset), run_row(args.stage, preset, args.flags)
        print(f"{args.stage} {preset} on {SLICES[preset]}:")
        print(line("shipped", shipped))
        print(line("flags", flagged))
        if "per_device_bytes" in shipped and "per_device_bytes" in flagged:
            moved = {name: sum(row["collectives"][kind]["bytes"] for kind in KINDS) for name, row in
                     (("shipped", shipped), ("flags", flagged))}
            ring = {name: moved[name] + row["collectives"]["all-reduce"]["bytes"] for name, row in
                    (("shipped", shipped), ("flags", flagged))}
            print(f"  ring traffic per device per step: shipped {ring['shipped'] / GIB:.2f} GiB, flags "
                  f"{ring['flags'] / GIB:.2f} GiB")
            print(f"  ratio     per-device HBM {ratio(flagged['per_device_bytes'], shipped['per_device_bytes'])}, "
                  f"collective result bytes {ratio(moved['flags'], moved['shipped'])}, ring traffic "
                  f"{ratio(ring['flags'], ring['shipped'])}", flush=True)
        else:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
