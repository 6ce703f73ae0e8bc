"""The composed pipeline: ingest -> rule filters -> (language id) -> decontaminate -> exact dedup -> near dedup
-> shards + manifest, on plain multiprocessing (this module) or Apache Beam (beam_runner.py).

Both runners call the same per-unit function (`process_unit`: everything that looks at one document) and the
same resolution rules for the global steps (smallest id wins in exact and near-duplicate groups; union-find
over verified LSH candidate edges), and both shard by id with records sorted by id, so they write
byte-identical shards from the same input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import time
from typing import Iterable

import numpy as np

from data_pipelines import dedup, output
from data_pipelines.decontaminate import DecontaminationConfig, Decontaminator
from data_pipelines.document import Counters, Document, Rejection, reject
from data_pipelines.filters import CodeFilterConfig, apply_code_filters
from data_pipelines.ingest import IngestConfig, Source, WorkUnit, read_unit, work_units
from data_pipelines.langid import LanguageIdConfig
from data_pipelines.repo_assembly import RepoAssemblyConfig, assemble


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str
    sources: tuple[Source, ...]
    output_directory: str
    kind: str = "code_file"
    num_shards: int = 4
    workers: int = 2
    ingest: IngestConfig = IngestConfig()
    code_filters: CodeFilterConfig = CodeFilterConfig()
    minhash: dedup.MinHashConfig = dedup.MinHashConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    run_rule_filters: bool = True
    run_decontamination: bool = True
    run_exact_dedup: bool = True
    run_near_dedup: bool = True
    language_id_for_text: bool = False  # fastText lid.176 on kind=text documents (langid.py)
    language_id: LanguageIdConfig = LanguageIdConfig()
    repo_assembly: RepoAssemblyConfig = RepoAssemblyConfig()  # used when kind == "code_repo"
    rejects_per_reason: int = 20  # rejected documents sampled (smallest ids) per reason into rejects.jsonl
    progress: bool = True

    def stages(self) -> list[str]:
        flags = [("rule_filter", self.run_rule_filters), ("language_id", self.language_id_for_text),
                 ("decontaminate", self.run_decontamination), ("exact_dedup", self.run_exact_dedup),
                 ("near_dedup", self.run_near_dedup)]
        flags.append(("repo_assembly", self.kind == "code_repo"))
        return ["ingest"] + [name for name, enabled in flags if enabled]

    def as_json(self) -> dict:
        config = dataclasses.asdict(self)
        for key in ("output_directory", "workers", "progress"):
            config.pop(key)  # where and how fast it ran does not change what it produces
        return config

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass
class UnitResult:
    """What the per-document work of one unit leaves for the global steps."""
    documents: list[Document]
    content_hashes: list[str]
    signatures: np.ndarray  # (len(documents), num_permutations) uint32
    rejections: list[Rejection]


class UnitProcessor:
    """Per-document stages; built once per worker (the benchmark index and the fastText model load here)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.decontaminator = Decontaminator(config.decontamination) if config.run_decontamination else None
        self.language_identifier = None
        if config.language_id_for_text:
            # fastText only when text language id is on
            from data_pipelines.langid import LanguageIdentifier
            self.language_identifier = LanguageIdentifier(config.language_id)

    def process_document(self, doc: Document) -> Document | Rejection:
        if self.config.run_rule_filters and doc.kind == "code_file":
            result = apply_code_filters(doc, self.config.code_filters)
            if isinstance(result, Rejection):
                return result
        if self.language_identifier is not None and doc.kind == "text":
            doc = self.language_identifier.apply(doc)
            if isinstance(doc, Rejection):
                return doc
        if self.decontaminator is not None:
            return self.decontaminator.apply(doc)
        return doc

    def process(self, items: Iterable[Document | Rejection]) -> UnitResult:
        documents, rejections = [], []
        for item in items:
            result = item if isinstance(item, Rejection) else self.process_document(item)
            (rejections if isinstance(result, Rejection) else documents).append(result)
        hashes = [dedup.content_hash(doc.text) for doc in documents] if self.config.run_exact_dedup else \
            [doc.id for doc in documents]
        if self.config.run_near_dedup and documents:
            signatures = dedup.minhash_signatures([doc.text for doc in documents], self.config.minhash)
        else:
            signatures = np.zeros((len(documents), self.config.minhash.num_permutations), dtype=np.uint32)
        return UnitResult(documents, hashes, signatures, rejections)

    def process_unit(self, unit: WorkUnit) -> UnitResult:
        return self.process(read_unit(unit, self.config.ingest))


# ---------------------------------------------------------------- global steps (shared rules)

def resolve_duplicates(ids: list[str], hashes: list[str], signatures: np.ndarray, config: PipelineConfig
                       ) -> tuple[dict[str, tuple[str, str]], list[list[str]]]:
    """id -> (reason, kept id) for every removed document, and the near-duplicate clusters."""
    removed: dict[str, tuple[str, str]] = {}
    if config.run_exact_dedup:
        removed.update({doc_id: ("exact_duplicate", keeper)
                        for doc_id, keeper in dedup.exact_duplicates(ids, hashes).items()})
    clusters: list[list[str]] = []
    if config.run_near_dedup:
        remaining = [i for i, doc_id in enumerate(ids) if doc_id not in removed]
        clusters, _ = dedup.near_duplicate_clusters([ids[i] for i in remaining], signatures[remaining],
                                                    config.minhash)
        removed.update({doc_id: ("near_duplicate", keeper)
                        for doc_id, keeper in dedup.representatives(clusters).items()})
    return removed, clusters


def sample_rejections(rejections: Iterable[Rejection], per_reason: int) -> list[Rejection]:
    by_reason: dict[str, list[Rejection]] = {}
    for rejection in rejections:
        by_reason.setdefault(rejection.reason, []).append(rejection)
    return [r for reason in sorted(by_reason) for r in sorted(by_reason[reason], key=lambda r: r.id)[:per_reason]]


def finish(config: PipelineConfig, counters: Counters, shard_entries: list[dict], rejections: list[Rejection],
           clusters: list[list[str]], token_chars: int, records: int | None = None) -> dict:
    """Writes rejects.jsonl (a sample per reason), decontaminated.jsonl (every document removed for benchmark
    overlap, with the benchmark, item id and matching n-gram), the cluster report and the manifest.
    records: for code_repo, how many repository records the shards hold (counts stay in files)."""
    directory = config.output_directory
    with open(os.path.join(directory, "rejects.jsonl"), "w") as handle:
        for rejection in sample_rejections(rejections, config.rejects_per_reason):
            handle.write(rejection.to_json() + "\n")
    with open(os.path.join(directory, "decontaminated.jsonl"), "w") as handle:
        for rejection in sorted(rejections, key=lambda r: r.id):
            if rejection.reason.startswith("decontaminate:"):
                handle.write(json.dumps({"id": rejection.id, "key": rejection.key, **json.loads(rejection.detail)})
                             + "\n")
    dedup.write_cluster_report(os.path.join(directory, "near_duplicate_clusters.jsonl"), clusters)
    return output.write_manifest(directory, config.name, config.kind, config.stages(), config.as_json(),
                                 {"train": sorted(shard_entries, key=lambda e: e["file"])}, counters.as_dict(),
                                 token_chars, expected_records=records)


# ---------------------------------------------------------------- multiprocessing runner

_WORKER: UnitProcessor | None = None


def _initialise_worker(config: PipelineConfig) -> None:
    global _WORKER
    _WORKER = UnitProcessor(config)


def _process_in_worker(unit: WorkUnit) -> UnitResult:
    return _WORKER.process_unit(unit)


def _write_in_worker(arguments) -> dict:
    return output.write_shard(*arguments)


def _progress(config: PipelineConfig, message: str) -> None:
    if config.progress:
        print(f"[{config.name}] {message}", file=sys.stderr, flush=True)


def _drop_duplicates(documents: list[Document], removed: dict, rejections: list[Rejection]) -> list[Document]:
    """The documents dedup keeps; each removed one is appended to `rejections` with its reason and keeper."""
    kept = []
    for doc in documents:
        if doc.id in removed:
            reason, keeper = removed[doc.id]
            rejections.append(reject(doc, reason, keeper))
        else:
            kept.append(doc)
    return kept


def _count(rejections: list[Rejection], kept: list[Document]) -> Counters:
    counters = Counters()
    for rejection in rejections:
        counters.count_rejection(rejection)
    for doc in kept:
        counters.count_kept(doc)
    return counters


def _shard_jobs(config: PipelineConfig, records: list[Document]) -> list[tuple]:
    """(output dir, split, index, shards, documents, fingerprint) per train shard, documents placed by id."""
    by_shard: list[list[Document]] = [[] for _ in range(config.num_shards)]
    for doc in records:
        by_shard[output.shard_of(doc.id, config.num_shards)].append(doc)
    return [(config.output_directory, "train", index, config.num_shards, shard_docs, config.fingerprint())
            for index, shard_docs in enumerate(by_shard)]


def run_items(config: PipelineConfig, items: list[Document | Rejection]) -> dict:
    """The pipeline on documents already read into memory (in this process, e.g. records a caller built itself):
    per-document filters and decontamination, exact + near dedup, shards, rejects and manifest, as run_local does
    them. Rejections among `items` (the caller's own reading failures) are counted like ingest's."""
    if config.kind == "code_repo":
        raise ValueError("run_items takes file-level kinds; repository records come from run_local's assembly")
    os.makedirs(config.output_directory, exist_ok=True)
    result = UnitProcessor(config).process(items)
    removed, clusters = resolve_duplicates([d.id for d in result.documents], result.content_hashes,
                                           result.signatures, config)
    rejections = list(result.rejections)
    kept = _drop_duplicates(result.documents, removed, rejections)
    entries = [_write_in_worker(job) for job in _shard_jobs(config, kept)]
    return finish(config, _count(rejections, kept), entries, rejections, clusters,
                  sum(len(doc.text) for doc in kept))


def run_local(config: PipelineConfig) -> dict:
    """Run the whole pipeline with a multiprocessing pool (workers=1: in this process). Returns the manifest."""
    started = time.time()
    units = [unit for source in config.sources for unit in work_units(source)]
    os.makedirs(config.output_directory, exist_ok=True)
    results: list[UnitResult] = []
    # forkserver, not fork: the caller may already run JAX (whose threads do not survive fork), and workers
    # compute MinHash signatures with JAX; forkserver children start from a clean single-threaded server.
    context = multiprocessing.get_context("forkserver")
    pool = context.Pool(config.workers, _initialise_worker, (config,)) if config.workers > 1 else None
    try:
        if pool is None:
            _initialise_worker(config)
            mapped = map(_process_in_worker, units)
        else:
            mapped = pool.imap(_process_in_worker, units, chunksize=1)
        for number, result in enumerate(mapped, 1):
            results.append(result)
            if number * 10 // len(units) != (number - 1) * 10 // len(units):  # about every 10%
                documents = sum(len(r.documents) + len(r.rejections) for r in results)
                _progress(config, f"map: {number}/{len(units)} units, {documents} items read, "
                                  f"{time.time() - started:.1f}s")
        documents = [doc for r in results for doc in r.documents]
        hashes = [h for r in results for h in r.content_hashes]
        signatures = np.concatenate([r.signatures for r in results]) if results else np.zeros((0, 0), np.uint32)
        rejections = [rejection for r in results for rejection in r.rejections]
        removed, clusters = resolve_duplicates([d.id for d in documents], hashes, signatures, config)
        _progress(config, f"dedup: {len(removed)} duplicates in {len(documents)} documents, "
                          f"{len(clusters)} near-duplicate clusters")
        kept = _drop_duplicates(documents, removed, rejections)
        records = kept
        if config.kind == "code_repo":  # deduplicated, decontaminated files -> repository records
            records, too_long = assemble(kept, config.repo_assembly)
            rejections += too_long
            left_out = {r.id for r in too_long}
            kept = [doc for doc in kept if doc.id not in left_out]
        counters = _count(rejections, kept)
        jobs = _shard_jobs(config, records)
        entries = list(pool.imap(_write_in_worker, jobs)) if pool is not None else list(map(_write_in_worker, jobs))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    skipped = sum(entry.get("skipped", False) for entry in entries)
    _progress(config, f"wrote {len(entries) - skipped} shards, skipped {skipped} already done; "
                      f"kept {counters.kept} of {counters.read}, {time.time() - started:.1f}s")
    token_chars = sum(len(doc.text) + sum(map(len, doc.contents)) for doc in kept)
    return finish(config, counters, entries, rejections, clusters, token_chars,
                  len(records) if config.kind == "code_repo" else None)
