"""Command line: python -m data_pipelines.sft <command> ...; every command prints read/kept/rejected by reason.

  langid-train   train the code language-ID model on local source trees      --output MODEL.bin
  langid-eval    accuracy per language on held-out files                     --model MODEL.bin
  synthesize     code files -> instruction/response pairs via a model        --files ... --model URL|checkpoint:PATH
  judge          checklist scores, keep above the threshold                  --input X.jsonl --model ...
                 [--checklist C.json]
  validate       run code + tests in the multilingual sandbox, keep passing  --input X.jsonl
  ast-fim        tree-sitter FIM samples from code files                     --files ... --output DIR|X.jsonl
  chatml         validate ChatML JSONL and write `sft` shards                 --input X.jsonl --output DIR
                 [--fim_samples F.jsonl --fim_share 0.1]: mix in AST-FIM samples
  decontaminate  drop conversations overlapping evaluation sets               --input X.jsonl --output Y.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from data_pipelines.sft import chatml
from data_pipelines.sft.tally import Tally
from qwencoder_jax import cli_flags


def _expand(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        if os.path.isdir(path):
            out += sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)
        else:
            out.append(path)
    return out


def _records(path: str, tally: Tally) -> list[dict]:
    return [record for _, record in chatml.read_jsonl(path, tally)]


def _report(tally: Tally, label: str) -> None:
    print(f"{label}: {tally.summary()}")
    for problem in tally.problems[:5]:
        print(f"  e.g. {problem}"[:300])


def main(argv: list[str] | None = None) -> int:
    parser = cli_flags.ArgumentParser(prog="python -m data_pipelines.sft", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("langid-train", "langid-eval"):
        sub = commands.add_parser(name)
        sub.add_argument("--output" if name == "langid-train" else "--model", required=True)
        sub.add_argument("--root", action="append", help="source trees (default: what this machine has)")
        sub.add_argument("--files_per_language", type=int, default=300)
    sub = commands.add_parser("synthesize")
    sub.add_argument("--files", nargs="+", required=True)
    sub.add_argument("--model", required=True, help="http://HOST:PORT/v1[#MODEL] or checkpoint:PATH")
    sub.add_argument("--response_model", default=None)
    sub.add_argument("--output", required=True)
    sub = commands.add_parser("judge")
    sub.add_argument("--input", required=True)
    sub.add_argument("--model", required=True)
    sub.add_argument("--checklist", default=None, help="JSON: threshold, scale, criteria [{name, question, weight}]")
    sub.add_argument("--output", required=True)
    sub = commands.add_parser("validate")
    sub.add_argument("--input", required=True)
    sub.add_argument("--output", required=True)
    sub.add_argument("--workers", type=int, default=2)
    sub = commands.add_parser("ast-fim")
    sub.add_argument("--files", nargs="+", required=True)
    sub.add_argument("--output", required=True, help="a directory (shards) or a .jsonl file")
    sub.add_argument("--format", choices=("psm", "chatml"), default="psm")
    sub.add_argument("--name", default="ast_fim")
    sub = commands.add_parser("chatml")
    sub.add_argument("--input", required=True)
    sub.add_argument("--output", required=True)
    sub.add_argument("--name", default=None)
    sub.add_argument("--shards", type=int, default=1)
    sub.add_argument("--fim_samples", default="", help="AST-FIM JSONL (ast-fim --output X.jsonl) to mix in")
    sub.add_argument("--fim_share", type=float, default=0.1, help="at most this share of records are FIM samples")
    sub = commands.add_parser("decontaminate")
    sub.add_argument("--input", required=True)
    sub.add_argument("--output", required=True)
    sub.add_argument("--benchmark", action="append", default=None, help="humaneval, math500 (default: both)")
    sub.add_argument("--extra_jsonl", action="append", default=[])
    args = parser.parse_args(argv)
    tally = Tally()

    if args.command in ("langid-train", "langid-eval"):
        # fastText only for these commands
        from data_pipelines.sft import code_langid

        config = code_langid.LangIdConfig(files_per_language=args.files_per_language)
        data = code_langid.build_dataset(config, args.root)
        if args.command == "langid-train":
            identifier = code_langid.CodeLanguageIdentifier.train(data.train, config)
            identifier.save(args.output)
            print(f"langid-train: {len(data.files)} languages, {len(data.train)} training snippets -> {args.output}")
        else:
            identifier = code_langid.CodeLanguageIdentifier.load(args.model, config)
        accuracy = code_langid.accuracy_per_language(identifier, data.held_out)
        for language, (value, count) in accuracy.items():
            print(f"  {language:20s} {value:6.3f}  ({count} held-out snippets)")
        return 0
    if args.command == "synthesize":
        # jax or an HTTP client: only for synthesis
        from data_pipelines.languages import language_for_path
        from data_pipelines.sft import models, synthesis

        instruction_model = models.model_from_spec(args.model)
        response_model = models.model_from_spec(args.response_model) if args.response_model else None
        snippets = synthesis.snippets_from_files(_expand(args.files), language_for_path)
        records = synthesis.synthesize(snippets, instruction_model, response_model, tally)
        chatml.write_jsonl(args.output, records)
    elif args.command == "judge":
        # jax or an HTTP client: only for judging
        from data_pipelines.sft import judge, models

        config = judge.JudgeConfig.from_json(args.checklist) if args.checklist else judge.JudgeConfig()
        read_tally = Tally()
        kept, below = judge.judge(_records(args.input, read_tally), models.model_from_spec(args.model), tally, config)
        tally.rejected.update(read_tally.rejected)
        chatml.write_jsonl(args.output, kept)
        chatml.write_jsonl(args.output + ".below_threshold.jsonl", below)
    elif args.command == "validate":
        # the sandbox only for validation
        from data_pipelines.sft import execution

        records = _records(args.input, tally)
        chatml.write_jsonl(args.output, execution.validate(records, tally, workers=args.workers))
    elif args.command == "ast-fim":
        # tree-sitter only for AST-FIM
        from data_pipelines.sft import ast_fim

        samples = list(ast_fim.samples_from_files(_expand(args.files), tally))
        if args.output.endswith(".jsonl"):
            rows = [ast_fim.to_chatml(s) if args.format == "chatml" else json.loads(ast_fim.to_json(s))
                    for s in samples]
            chatml.write_jsonl(args.output, rows)
        else:
            write_tally = Tally()  # counts records written; `tally` counts files
            write_tally.rejected.update(tally.rejected)
            writer = chatml.DatasetWriter(args.name, write_tally)
            if args.format == "chatml":
                for sample in samples:
                    writer.add_conversation(ast_fim.to_chatml(sample))
            else:
                # the Qwen vocabulary loads seqio and TensorFlow: only for shards
                from qwencoder_jax.data.vocabulary import QwenVocabulary

                vocabulary = QwenVocabulary()
                for sample in samples:
                    writer.add_tokens(sample.key, *ast_fim.psm_ids(sample, vocabulary))
            writer.write(args.output, stages=("ast_fim",))
    elif args.command == "chatml":
        manifest, tally = chatml.jsonl_to_shards(args.input, args.output, args.name or os.path.basename(
            os.path.normpath(args.output)), args.shards, args.fim_samples, args.fim_share)
    elif args.command == "decontaminate":
        # only for decontamination
        from data_pipelines.decontaminate import DecontaminationConfig
        from data_pipelines.sft import decontam

        config = DecontaminationConfig(benchmarks=tuple(args.benchmark or ("humaneval", "math500")),
                                       extra_jsonl=tuple(args.extra_jsonl))
        records = _records(args.input, tally)
        chatml.write_jsonl(args.output, decontam.decontaminate(records, tally, config=config))
    _report(tally, args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
