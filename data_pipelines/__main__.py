"""Command line: python -m data_pipelines <command> ...

  run       the composed pipeline -> shards + manifest   (--runner multiprocessing | beam; Beam flags after --)
  count     ingest (+ rule filters) only and print the counters, writing nothing
  langid    language of each line of a text file or of JSONL `text` fields
  assemble  repository-level records (code_repo) from a source
  quality   coarse-to-fine fastText stages: seed source (good examples) + pool source -> id, stage JSONL
  edu-score educational value 0-5 from an OpenAI-compatible endpoint -> id, score JSONL
Sources: `stdlib`, `site_packages`, or NAME=PATH[:FORMAT[:KIND]] with FORMAT one of directory, repository,
archive, stack_jsonl, jsonl, parquet, plain (default directory) and KIND code_file, text or math.
"""

from __future__ import annotations

import argparse
import json
import sys

from data_pipelines import ingest
from data_pipelines.decontaminate import DecontaminationConfig
from data_pipelines.dedup import MinHashConfig
from data_pipelines.document import Counters, Rejection
from data_pipelines.filters import CodeFilterConfig, apply_code_filters
from qwencoder_jax import cli_flags


def parse_source(text: str) -> ingest.Source:
    if text == "stdlib":
        return ingest.stdlib_source()
    if text == "site_packages":
        return ingest.site_packages_source()
    if "=" not in text:
        raise SystemExit(f"source {text!r}: write stdlib, site_packages or NAME=PATH[:FORMAT[:KIND]]")
    name, rest = text.split("=", 1)
    parts = rest.split(":")
    return ingest.Source(name, parts[0], parts[1] if len(parts) > 1 else "directory",
                         parts[2] if len(parts) > 2 else "code_file")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_arguments = []
    if "--" in argv:
        beam_arguments = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    parser = cli_flags.ArgumentParser(prog="python -m data_pipelines", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the composed pipeline")
    run.add_argument("--source", action="append", required=True)
    run.add_argument("--output", required=True)
    run.add_argument("--name", default=None)
    run.add_argument("--kind", default="code_file", help="code_file, text, math, or code_repo (files are "
                     "deduplicated and decontaminated, then assembled into repository records)")
    run.add_argument("--repo_max_chars", type=int, default=200_000, help="code_repo: characters per record")
    run.add_argument("--runner", default="multiprocessing",
                     help="multiprocessing, or beam / DirectRunner / DataflowRunner / FlinkRunner / SparkRunner")
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--shards", type=int, default=4)
    run.add_argument("--no_validation", action="store_true",
                     help="keep every shard in `train` (by default the last shard is held out as `validation`)")
    run.add_argument("--threshold", type=float, default=0.7)
    run.add_argument("--no_near_dedup", action="store_true")
    run.add_argument("--no_exact_dedup", action="store_true")
    run.add_argument("--no_decontaminate", action="store_true")
    run.add_argument("--no_rule_filters", action="store_true")
    run.add_argument("--language_id", action="store_true", help="fastText language id for text documents")
    run.add_argument("--benchmark_jsonl", action="append", default=[], help="extra benchmark PATH[:fields]")
    run.add_argument("--quiet", action="store_true")
    count = commands.add_parser("count", help="ingest + rule filters, print counters")
    count.add_argument("--source", action="append", required=True)
    count.add_argument("--no_rule_filters", action="store_true")
    langid = commands.add_parser("langid", help="language of each line / JSONL text")
    langid.add_argument("path")
    assemble = commands.add_parser("assemble", help="code_repo records from a source")
    assemble.add_argument("--source", action="append", required=True)
    assemble.add_argument("--output", required=True)
    assemble.add_argument("--max_chars", type=int, default=200_000)
    assemble.add_argument("--shards", type=int, default=2)
    quality = commands.add_parser("quality", help="coarse-to-fine quality stages")
    quality.add_argument("--seed", action="append", required=True, help="source of good examples")
    quality.add_argument("--pool", action="append", required=True)
    quality.add_argument("--thresholds", default="0.5,0.7,0.9")
    quality.add_argument("--output", required=True, help="JSONL of {id, stage}")
    edu = commands.add_parser("edu-score", help="LLM educational value")
    edu.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    edu.add_argument("--model", default="scorer")
    edu.add_argument("--source", action="append", required=True)
    edu.add_argument("--limit", type=int, default=100)
    edu.add_argument("--output", required=True, help="JSONL of {id, path, score}")
    arguments = parser.parse_args(argv)

    if arguments.command == "run":
        # per command: --help and the light commands start without the heavy stages
        from data_pipelines.pipeline import PipelineConfig, run_local
        from data_pipelines.repo_assembly import RepoAssemblyConfig
        sources = tuple(parse_source(s) for s in arguments.source)
        config = PipelineConfig(
            name=arguments.name or sources[0].name, sources=sources, output_directory=arguments.output,
            kind=arguments.kind, num_shards=arguments.shards, workers=arguments.workers,
            minhash=MinHashConfig(threshold=arguments.threshold),
            decontamination=DecontaminationConfig(extra_jsonl=tuple(arguments.benchmark_jsonl)),
            run_near_dedup=not arguments.no_near_dedup, run_exact_dedup=not arguments.no_exact_dedup,
            run_decontamination=not arguments.no_decontaminate, run_rule_filters=not arguments.no_rule_filters,
            language_id_for_text=arguments.language_id, progress=not arguments.quiet,
            repo_assembly=RepoAssemblyConfig(max_chars=arguments.repo_max_chars))
        if arguments.runner == "multiprocessing":
            manifest = run_local(config)
        else:
            # Beam only for the Beam runners
            from data_pipelines.beam_runner import run_beam
            runner = "DirectRunner" if arguments.runner == "beam" else arguments.runner
            manifest = run_beam(config, [f"--runner={runner}"] + beam_arguments)
        if not arguments.no_validation:
            # per command: --help and the light commands start without the heavy stages
            from data_pipelines.output import hold_out_last_shard
            try:
                manifest = hold_out_last_shard(arguments.output)
            except ValueError as error:
                raise SystemExit(f"error: {error} (or pass --no_validation)")
        print(json.dumps({"counts": manifest["counts"], "splits": {k: v["records"] for k, v in
                                                                    manifest["splits"].items()},
                          "token_estimate": manifest["token_estimate"]}, indent=1))
        return 0
    if arguments.command == "count":
        counters = Counters()
        for source in (parse_source(s) for s in arguments.source):
            for item in ingest.read_source(source):
                if not isinstance(item, Rejection) and not arguments.no_rule_filters:
                    item = apply_code_filters(item, CodeFilterConfig())
                if isinstance(item, Rejection):
                    counters.count_rejection(item)
                else:
                    counters.count_kept(item)
        print(json.dumps(counters.as_dict(), indent=1))
        return 0
    if arguments.command == "langid":
        # fastText only for this command
        from data_pipelines.langid import LanguageIdentifier
        identifier = LanguageIdentifier()
        with open(arguments.path) as handle:
            for line in handle:
                text = json.loads(line).get("text", "") if arguments.path.endswith(".jsonl") else line
                if text.strip():
                    language, probability = identifier.predict(text)
                    print(f"{language}\t{probability:.3f}\t{text.strip()[:60]}")
        return 0
    if arguments.command == "assemble":
        # per command: --help and the light commands start without the heavy stages
        from data_pipelines.repo_assembly import RepoAssemblyConfig, assemble_to_shards
        sources = tuple(parse_source(s) for s in arguments.source)
        manifest = assemble_to_shards(sources, arguments.output, RepoAssemblyConfig(max_chars=arguments.max_chars),
                                      arguments.shards)
        print(json.dumps(manifest["counts"], indent=1))
        return 0
    if arguments.command in ("quality", "edu-score"):
        # per command: --help and the light commands start without the heavy stages
        from data_pipelines import quality as quality_module

        def documents(specs):
            return [item for spec in specs for item in ingest.read_source(parse_source(spec))
                    if not isinstance(item, Rejection)]

        rows = []
        if arguments.command == "quality":
            thresholds = tuple(float(t) for t in arguments.thresholds.split(","))
            pool = documents(arguments.pool)
            result = quality_module.coarse_to_fine(documents(arguments.seed), pool,
                                                   quality_module.CoarseToFineConfig(stage_thresholds=thresholds))
            rows = [{"id": doc.id, "path": f"{doc.repo_name}/{doc.path}", "stage": result.stage_of[doc.id]}
                    for doc in pool]
            print(json.dumps({"recalled_per_stage": result.recalled_per_stage, "pool": len(pool)}))
        else:
            scorer = quality_module.OpenAICompatibleScorer(
                quality_module.EndpointConfig(base_url=arguments.endpoint, model=arguments.model))
            docs = documents(arguments.source)[: arguments.limit]
            failures: dict[str, int] = {}
            scores = quality_module.educational_scores(docs, scorer, failures)
            rows = [{"id": d.id, "path": f"{d.repo_name}/{d.path}", "score": s} for d, s in zip(docs, scores)]
            scored = sum(s is not None for s in scores)
            print(json.dumps({"scored": scored, "failed": scores.count(None), "failure_reasons": failures}))
            if docs and not scored:
                with open(arguments.output, "w") as handle:
                    handle.writelines(json.dumps(row) + "\n" for row in rows)
                reason = max(failures, key=failures.get)
                print(f"error: no document was scored ({len(docs)} failed; {reason})", file=sys.stderr)
                return 1
        with open(arguments.output, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
