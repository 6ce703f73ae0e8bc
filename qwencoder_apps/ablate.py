"""Ablations: train a set of gin variants of one run with the same budget, then compare them in one table.

    python -m qwencoder_apps.ablate --sweep=gin/ablations/table3_mixtures.sweep --gin_file=gin/cpu/tiny.gin \\
        --gin.CODE_DIR='"runs/data/stdlib_code"' --gin.TEXT_DIR='"runs/data/docs_text"' \\
        --gin.MATH_DIR='"runs/data/mmath"' --gin.TOTAL_STEPS=40 --workdir=runs/ablation

    --sweep FILE        a .sweep file (TOML: [variants.NAME] gin_files/bindings) or a .gin file (one variant);
                        repeatable
    --variant SPEC      NAME=ITEM;ITEM... where items are gin files (.gin) or bindings KEY=VALUE; repeatable
    --gin_file FILE     an overlay given after every variant's files (e.g. gin/cpu/tiny.gin); repeatable
    --gin.KEY=VALUE     a binding after every variant's bindings (the shared budget, the data)
    --launcher          local (default: one child process per variant, in order), inprocess, or pod
    --processes N       local: run each variant as N JAX processes through launch/local.py
    --dry_run           check every variant and print the commands; train nothing
    --collect_only      build the table from WORKDIR's variants as they are
    --rerun             train variants again even if their record says completed

Each variant trains through `python -m qwencoder_apps.train` in WORKDIR/<variant>/. Afterwards WORKDIR holds
ablation.md, ablation.csv, ablation.json (one row per variant: steps, final loss, per-source losses
`loss/<source>` when the trainer logs them, tokens/s, tokens, wall time, eval results when a results.json is in
the variant's workdir) and ablation.png (loss curves and final losses). See qwencoder_apps/ablation/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from qwencoder_apps.ablation import collect, runner
from qwencoder_apps.ablation.spec import Sweep, SweepError, build_sweep
from qwencoder_jax import cli_flags


def parse_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = cli_flags.ArgumentParser(prog="python -m qwencoder_apps.ablate", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="append", default=[], help=".sweep (TOML) or .gin file; repeatable")
    parser.add_argument("--variant", action="append", default=[], help="NAME=ITEM;ITEM... (gin files or KEY=VALUE)")
    parser.add_argument("--gin_file", action="append", default=[], help="overlay after every variant's files")
    parser.add_argument("--gin_bindings", action="append", default=[], help="binding 'KEY = VALUE' for all")
    parser.add_argument("--workdir", default="runs/ablation")
    parser.add_argument("--launcher", default="local", choices=runner.LAUNCHERS)
    parser.add_argument("--processes", type=int, default=1, help="local: JAX processes per variant (launch/local.py)")
    parser.add_argument("--devices_per_process", type=int, default=1, help="local: fake CPU devices per process")
    parser.add_argument("--dry_run", action="store_true", help="check and print the commands; train nothing")
    parser.add_argument("--collect_only", action="store_true", help="only build the table from WORKDIR")
    parser.add_argument("--rerun", action="store_true", help="train variants again even if completed")
    parser.add_argument("--tail", type=int, default=5, help="final values average the last TAIL logged steps")
    parser.add_argument("--title", default=None, help="figure title (default: the sweep's description)")
    pod = parser.add_argument_group("pod launcher")
    pod.add_argument("--pod_name", default="ablation", help="TPU resource name prefix (PREFIX-<variant>)")
    pod.add_argument("--pod_flags", default="", help="flags for launch/tpu_vm.py, e.g. '--project P --zone Z "
                                                     "--accelerator v5p-64 --gin MESH_SHAPE=(1,-1,1,1)'")
    pod.add_argument("--pod_workdir", default="runs/ablation", help="the variants' workdir root on the pod")
    from qwencoder_apps import train as cli  # lazily: jax and the trainer load only when an ablation really starts

    return cli.parse_with_gin_flags(parser, argv)


def summarize(workdir: str | Path, variant_names: Sequence[str] | None = None, tail: int = 5,
              title: str = "ablation") -> tuple[list[dict], dict[str, Path]]:
    """Collects the variants' rows and writes ablation.{md,csv,json,png} into workdir."""
    rows = collect.collect(workdir, variant_names, tail)
    if not rows:
        raise FileNotFoundError(f"{workdir} holds no variant (no subdirectory with metrics.jsonl or "
                                f"{collect.RUN_RECORD}); run the sweep first")
    paths = collect.write_table(rows, workdir)
    paths["plot"] = collect.plot(workdir, rows, Path(workdir) / "ablation.png", title)
    return rows, paths


def run(sweep: Sweep, workdir: str | Path, launcher: str = "local", rerun: bool = False, tail: int = 5,
        title: str | None = None, log=print, processes: int = 1,
        devices_per_process: int = 1) -> tuple[list[dict], dict[str, Path]]:
    """Checks, trains every variant and writes the comparison; returns (rows, output paths). The API the
    notebooks and tests use: `run(build_sweep([...], overlays=[...], extra_bindings=[...]), workdir)`."""
    runner.check(sweep, workdir)
    (Path(workdir)).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "sweep.json").write_text(json.dumps({
        "description": sweep.description, "launcher": launcher,
        "variants": [{"name": v.name, "gin_files": sweep.gin_files_of(v), "bindings": sweep.bindings_of(v)}
                     for v in sweep.variants]}, indent=1) + "\n")
    runner.run_sweep(sweep, workdir, launcher, rerun, log, processes, devices_per_process)
    return summarize(workdir, [v.name for v in sweep.variants], tail, title or sweep.description or "ablation")


def main(argv: Sequence[str] | None = None) -> int:
    args, bindings = parse_arguments(sys.argv[1:] if argv is None else argv)
    workdir = Path(args.workdir)
    try:
        if args.collect_only:
            names = None
            if args.sweep or args.variant:
                names = [v.name for v in build_sweep(args.sweep, args.variant, args.gin_file, bindings).variants]
            rows, paths = summarize(workdir, names, args.tail, args.title or "ablation")
        else:
            sweep = build_sweep(args.sweep, args.variant, args.gin_file, bindings)
            if args.launcher == "pod":
                commands = runner.pod_commands(sweep, args.pod_name, shlex.split(args.pod_flags), args.pod_workdir,
                                               dry_run=args.dry_run)
                runner.check(sweep, workdir)
                if args.dry_run:
                    for command in commands.values():
                        print(shlex.join(command))
                    return 0
                records = runner.launch_pods(commands, workdir)
                print("[ablate] pods finished: " + ", ".join(f"{r.variant} {r.status}" for r in records))
                print(f"[ablate] copy the variants' workdirs from {args.pod_workdir} into {workdir}, then run "
                      "--collect_only")
                return 0 if all(r.status == "completed" for r in records) else 1
            if args.dry_run:
                runner.check(sweep, workdir)
                for variant in sweep.variants:
                    print(shlex.join(runner.train_command(sweep, variant, workdir / variant.name, args.processes,
                                                          args.devices_per_process)))
                return 0
            rows, paths = run(sweep, workdir, args.launcher, args.rerun, args.tail, args.title,
                              processes=args.processes, devices_per_process=args.devices_per_process)
    except (SweepError, FileNotFoundError) as error:
        print(f"[ablate] error: {error}", file=sys.stderr)
        return 2
    print(collect.markdown_table(rows), end="")
    print("[ablate] wrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if all(row["status"] in ("completed", "unknown") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
