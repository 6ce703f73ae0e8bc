"""A training run from gin files (the gin entry points: qwencoder_jax/train/gin_config.py).

    python -m qwencoder_apps.train --gin_file=gin/stages/stage1_file_level.gin --gin_file=gin/cpu/tiny.gin \\
        --gin.CODE_DIR='"runs/data/code"' --gin.TOTAL_STEPS=100 --workdir=runs/stage1

Every binding is parsed, and every configurable called, before any data is read or any array built: an unknown
or mistyped macro, configurable or parameter fails first with one line naming it and the closest known names
(train/gin_check.py; `--debug` shows the traceback). The operative config lands in WORKDIR/operative_config.gin.
`--gin.KEY=VALUE` is `KEY = VALUE` in gin syntax (strings need their quotes: --gin.X='"a"').
"""

from __future__ import annotations

import sys

from qwencoder_jax import allocator

if __name__ == "__main__":
    allocator.use_tcmalloc()  # before JAX is imported (qwencoder_jax/allocator.py)

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import gin  # noqa: E402

from qwencoder_jax import cli_flags, distributed  # noqa: E402
from qwencoder_jax.checkpoints import CheckpointError  # noqa: E402
from qwencoder_jax.train import gin_check  # noqa: E402
from qwencoder_jax.train.gin_config import GIN_DIR, build, parse  # noqa: E402,F401 (applications use GIN_DIR)
from qwencoder_jax.train.trainer import ResumeError, Trainer  # noqa: E402


def split_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = cli_flags.ArgumentParser(prog="python -m qwencoder_apps.train", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later ones win)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding 'KEY = VALUE'")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--dry_run", action="store_true", help="parse, bind and write the config; train nothing")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a configuration error")
    return parse_with_gin_flags(parser, argv)


def parse_with_gin_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace,
                                                                                       list[str]]:
    """Parses argv with `parser`, turning every `--gin.KEY=VALUE` into the binding 'KEY = VALUE' (after the
    parser's own --gin_bindings); anything else unknown is an error naming it."""
    args, rest = parser.parse_known_args(list(argv))
    bindings = list(args.gin_bindings)
    for item in rest:
        if not item.startswith("--gin.") or "=" not in item:
            parser.error(f"unrecognised argument {item!r}; use --gin.KEY=VALUE for gin bindings")
        key, value = item[len("--gin."):].split("=", 1)
        bindings.append(f"{key} = {value}")
    return args, bindings


def main(argv: Sequence[str]) -> int:
    args, bindings = split_arguments(argv)
    try:
        parse(args.gin_file, bindings)
        config, inference_overrides = build(args.workdir)
    except Exception as error:  # a configuration mistake: one line (the traceback only with --debug)
        if args.debug:
            raise
        print(f"error: {gin_check.describe(error)} (--debug shows the traceback)", file=sys.stderr)
        return 2
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "operative_config.gin").write_text(gin.operative_config_str())
    if inference_overrides:
        (workdir / "inference_overrides.json").write_text(json.dumps(inference_overrides, indent=2) + "\n")
    if args.dry_run:
        print(f"dry run: config written to {workdir / 'operative_config.gin'}")
        return 0
    distributed.initialize()  # multi-process runs (env from launch/local.py, or a TPU pod); else a no-op

    try:
        result = Trainer(config).run()
    except (ResumeError, CheckpointError) as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"stopped: {result.stop_reason} at step {result.final_step}; last good checkpoint "
          f"{result.last_good_checkpoint} in {workdir / 'checkpoints'}")
    return 0 if result.stop_reason in ("completed", "preempted") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
