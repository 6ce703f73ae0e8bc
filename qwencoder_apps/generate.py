"""Generate from a checkpoint on the command line (KV-cache decoding, see qwencoder_jax.eval.generate).

    python -m qwencoder_apps.generate --checkpoint runs/demo/smollm2-135m --prompt "def fibonacci(n):"
    python -m qwencoder_apps.generate --checkpoint CKPT --prompt "def f(" --temperature 0.8 --top_p 0.95 \\
        --num_samples 4 --seed 1 --stop "\\ndef"
    python -m qwencoder_apps.generate --checkpoint CKPT --prefix "def add(a, b):\\n" --suffix "\\n    return c\\n"

Prints each completion (the infill in FIM mode), preceded by a `--- sample N ---` line when there are several.
Backslash escapes in --prompt / --prefix / --suffix / --stop (\\n, \\t, \\\\) are decoded, so shells need no
quoting tricks for newlines.
"""

from __future__ import annotations

import argparse
import codecs
import sys

from qwencoder_jax import cli_flags


def _unescape(text: str) -> str:
    return codecs.decode(text, "unicode_escape") if "\\" in text else text


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli_flags.ArgumentParser(prog="python -m qwencoder_apps.generate", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="converted or training checkpoint directory")
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the checkpoint's own, or Qwen2.5's)")
    parser.add_argument("--prompt", default=None, help="text to continue")
    parser.add_argument("--prefix", default=None, help="FIM mode: the code before the hole")
    parser.add_argument("--suffix", default=None, help="FIM mode: the code after the hole")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="0 = off")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable); cut before it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--float_weights", action="store_true",
                        help="decode from the float params even where the checkpoint keeps packed (GGUF) weights")
    args = parser.parse_args(argv)
    fim = args.prefix is not None or args.suffix is not None
    if fim and args.prompt is not None:
        parser.error("give either --prompt, or --prefix and --suffix (FIM mode), not both")
    if not fim and args.prompt is None:
        parser.error("nothing to generate from: give --prompt, or --prefix and --suffix")
    if not fim and not args.prompt:
        parser.error("--prompt is empty; generation needs at least one prompt token")
    if fim and not ((args.prefix or "") + (args.suffix or "")):
        parser.error("--prefix and --suffix are both empty; give the code around the hole")
    if args.num_samples < 1:
        parser.error(f"--num_samples must be >= 1, got {args.num_samples}")
    if args.num_samples > 1 and args.temperature == 0:
        print("note: --temperature 0 is greedy, so all samples will be the same", file=sys.stderr)
    return args


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    # after parsing: --help and flag errors answer without loading jax
    from qwencoder_jax.eval.generate import Generator, SamplingConfig

    try:
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, top_k=args.top_k,
                                  stop=tuple(_unescape(s) for s in args.stop), seed=args.seed)
        generator = Generator.from_checkpoint(args.checkpoint, tokenizer=args.tokenizer,
                                              packed_weights=False if args.float_weights else None)
        n = args.num_samples
        if args.prompt is not None:
            completions = generator.generate([_unescape(args.prompt)] * n, sampling)
        else:
            completions = generator.infill([_unescape(args.prefix or "")] * n, [_unescape(args.suffix or "")] * n,
                                           sampling)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for i, completion in enumerate(completions):
        if len(completions) > 1:
            print(f"--- sample {i} ---")
        print(completion)
    return completions


if __name__ == "__main__":
    main()
