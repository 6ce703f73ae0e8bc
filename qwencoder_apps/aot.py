"""Ahead-of-time compile of a training stage (or the generator) for a TPU topology, with no TPU attached.

    python -m qwencoder_apps.aot --topology v5p-256 [--num_slices 2] [--mode train|prefill|decode] \\
        --gin_file=gin/stages/stage1_file_level.gin --gin_file=gin/models/qwen2.5-coder-7b.gin \\
        --gin.BATCH_SIZE=16 [--json report.json] [--libtpu_flags async_collectives]

Prints a table (per-device HBM against the chip's, Mosaic kernels, collectives, compile time, FLOPs) and, last,
one machine-readable line:  fits=yes per_device_gib=<f> hbm_gib=<f> mosaic_kernels=<n> compile_seconds=<f>
Exit status: 0 fits, 1 does not fit (with what to change), 2 bad arguments or libtpu missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from qwencoder_jax import cli_flags
from qwencoder_jax.aot import libtpu_flags
from qwencoder_jax.aot import topology as topology_lib

GIB = 2**30


def _parser() -> argparse.ArgumentParser:
    parser = cli_flags.ArgumentParser(prog="python -m qwencoder_apps.aot", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", required=True, help="a TPU slice type as the launchers take it, e.g. v5p-256")
    parser.add_argument("--num_slices", type=int, default=1, help="slices joined over DCN (multislice)")
    parser.add_argument("--mode", choices=("train", "prefill", "decode"), default="train")
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later ones win)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding 'KEY = VALUE'")
    parser.add_argument("--prompt_length", type=int, default=None, help="prefill/decode: prompt tokens "
                        "(default: SEQUENCE_LENGTH)")
    parser.add_argument("--new_tokens", type=int, default=256, help="prefill/decode: cache slots after the prompt")
    parser.add_argument("--json", default=None, help="write the report here as JSON")
    parser.add_argument("--hlo", default=None, help="write the compiled program's HLO text here")
    parser.add_argument("--libtpu_flags", default="",
                        help="XLA TPU compiler flags, added to LIBTPU_INIT_ARGS: profile names (" +
                             ", ".join(sorted(libtpu_flags.PROFILES)) + ") and/or --flag=value words")
    return parser


def table(report) -> str:
    gib = lambda n: f"{n / GIB:9.3f} GiB"  # noqa: E731
    rows = [("topology", f"{report.num_slices} x {report.topology} ({report.devices} devices, mesh {report.mesh})"),
            ("mode", report.mode),
            ("libtpu flags", report.libtpu_flags or "(none)"),
            ("arguments", gib(report.argument_bytes)),
            ("  state (sharding table)", gib(report.state_bytes)),
            ("  inputs (sharding table)", gib(report.input_bytes)),
            ("outputs", gib(report.output_bytes)),
            ("aliased (donated)", gib(report.alias_bytes)),
            ("temporaries", gib(report.temp_bytes)),
            ("generated code", gib(report.code_bytes)),
            ("total per device", gib(report.per_device_bytes)),
            ("HBM per chip", gib(report.hbm_bytes)),
            ("fits", f"{'yes' if report.fits else 'NO'} (headroom {(report.hbm_bytes - report.per_device_bytes) / GIB:.3f} GiB)"),
            ("Mosaic kernels", str(report.mosaic_kernels))]
    for kind, figures in report.collectives.items():
        rows.append((kind, f"{figures['count']:5d} per step, {figures['bytes'] / 2**20:10.2f} MiB per device"))
    flops = "n/a" if report.compiled_flops is None else f"{report.compiled_flops:.4g}"
    rows += [("compile seconds", f"{report.compile_seconds:.1f}"),
             ("compiled FLOPs per device", f"{flops} (XLA cost analysis: loop bodies and Mosaic kernels "
                                           "are not multiplied out)"),
             ("model FLOPs per device", f"{report.model_flops:.4g} (6N + attention per token)" if report.mode ==
              "train" else f"{report.model_flops:.4g} (2N + attention per token)")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def advice(report) -> str:
    over = (report.per_device_bytes - report.hbm_bytes) / GIB
    compiler = f"the TPU compiler says: {report.out_of_memory}; " if report.out_of_memory else ""
    return (f"does not fit: {compiler}{report.per_device_bytes / GIB:.2f} GiB per device > "
            f"{report.hbm_bytes / GIB:.0f} GiB HBM (over by {over:.2f} GiB; temporaries "
            f"{report.temp_bytes / GIB:.2f} GiB, arguments {report.argument_bytes / GIB:.2f} GiB). Try: a stronger remat policy (--gin.REMAT_POLICY='\"full\"'), "
            f"more fsdp devices or a larger slice (MESH_SHAPE, --topology), a smaller per-device batch (BATCH_SIZE, "
            f"ACCUMULATION_STEPS), sequence sharding (MESH_SHAPE's third axis), or the fused head + loss "
            f"(TOKEN_CHUNK_SIZE)")


def _one_line(error: Exception) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, (ValueError, TypeError, topology_lib.LibtpuMissing)) and first:
        return f"error: {first}"
    return f"error: {type(error).__name__}: {first}" if first else f"error: {type(error).__name__}"


def _compile(parser, argv, topology):
    # after the cheap checks in main: jax, libtpu and the trainer load only for a real compile
    from qwencoder_jax.aot import compile as compile_lib
    from qwencoder_apps.train import parse_with_gin_flags

    args, bindings = parse_with_gin_flags(parser, argv)
    return compile_lib.compile_stage(args.gin_file, bindings, topology, args.num_slices, args.mode,
                                     args.prompt_length, args.new_tokens, hlo_path=args.hlo,
                                     libtpu_flags=args.libtpu_flags)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args, _ = parser.parse_known_args(argv)
    try:  # before the heavy imports: a wrong name or a missing libtpu answers at once
        topology = topology_lib.parse(args.topology)
        if args.num_slices < 1:
            raise ValueError(f"--num_slices must be >= 1, got {args.num_slices}")
        topology_lib.libtpu_path()
        if libtpu_flags.combined(os.environ.get("LIBTPU_INIT_ARGS"), args.libtpu_flags):
            topology_lib.check_flags(args.libtpu_flags)  # libtpu would end this process on a flag it does not know
    except (ValueError, topology_lib.LibtpuMissing) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        report = _compile(parser, argv, topology)
    except Exception as error:  # noqa: BLE001 -- gin, mesh and shape errors name the problem; anything else is
        # still exit 2 in one line, never a traceback's exit 1 (which means "does not fit")
        print(_one_line(error), file=sys.stderr)
        return 2
    print(table(report))
    print(f"libtpu logs  {topology_lib.log_dir()}")
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        except OSError as error:
            print(_one_line(error), file=sys.stderr)
            return 2
    if not report.fits:
        print(advice(report), file=sys.stderr)
    if args.hlo and report.out_of_memory:
        print(f"no HLO written to {args.hlo}: the compiler stopped before producing a program", file=sys.stderr)
    print(f"fits={'yes' if report.fits else 'no'} per_device_gib={report.per_device_bytes / GIB:.3f} "
          f"hbm_gib={report.hbm_bytes / GIB:.3f} mosaic_kernels={report.mosaic_kernels} "
          f"compile_seconds={report.compile_seconds:.1f}")
    return 0 if report.fits else 1


if __name__ == "__main__":
    sys.exit(main())
