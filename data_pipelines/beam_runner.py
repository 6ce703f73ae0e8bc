"""The same pipeline on Apache Beam (DirectRunner locally; `--runner` and other Beam flags pass through to
Dataflow/Flink/Spark). Output matches pipeline.run_local byte for byte.

Distributed steps: reading units, filters, language id, decontamination, MinHash signatures and band keys (Map);
exact dedup (GroupByKey on the content hash); LSH bucketing (GroupByKey on (band, key)) and candidate
verification inside each bucket; shard writing (GroupByKey on the shard index).
Global steps: the union-find over verified candidate edges (CombineGlobally to one list: edges exist only
between near duplicates, so the list is small next to the corpus), and the final counts for the manifest.
The shard writer and the manifest use local file paths: on a cluster, output_directory must be a filesystem
all workers mount (e.g. GCS FUSE, NFS).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipelines import dedup, output
from data_pipelines.document import Counters, Document, Rejection, reject
from data_pipelines.ingest import work_units
from data_pipelines.pipeline import PipelineConfig, UnitProcessor, finish
from data_pipelines.repo_assembly import assemble_repository


class ProcessUnits(beam.DoFn):
    """Per-document stages; emits ("doc", (doc, content hash, signature)) and ("rejected", rejection)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.units_done = Metrics.counter("data_pipelines", "units")
        self.documents = Metrics.counter("data_pipelines", "documents_after_map")
        self.rejected = Metrics.counter("data_pipelines", "rejected_in_map")

    def setup(self):
        self.processor = UnitProcessor(self.config)

    def process(self, unit):
        result = self.processor.process_unit(unit)
        self.units_done.inc()
        self.documents.inc(len(result.documents))
        self.rejected.inc(len(result.rejections))
        for rejection in result.rejections:
            yield beam.pvalue.TaggedOutput("rejected", rejection)
        for index, doc in enumerate(result.documents):
            yield doc, result.content_hashes[index], result.signatures[index]


def _exact_groups(element):
    """One content hash group: the smallest id stays, the others become exact_duplicate rejections."""
    _, members = element
    members = sorted(members, key=lambda m: m[0].id)
    yield members[0]
    for doc, _, _ in members[1:]:
        yield beam.pvalue.TaggedOutput("rejected", reject(doc, "exact_duplicate", members[0][0].id))


def _band_entries(element, bands: int, rows: int):
    doc, _, signature = element
    if signature[0] == dedup.EMPTY:
        return
    keys = dedup.band_keys(signature[None, :], bands, rows)[0]
    for band, key in enumerate(keys.tolist()):
        yield (band, key), (doc.id, signature)


def _bucket_edges(element, config: PipelineConfig):
    _, members = element
    if len(members) < 2:
        return
    ids = [doc_id for doc_id, _ in members]
    signatures = [signature for _, signature in members] if config.minhash.verify_candidates else None
    yield from dedup.candidate_pairs_in_bucket(ids, signatures, config.minhash.threshold)


def _clusters_from_edges(edges):
    union_find = dedup.UnionFind()
    for first, second in edges:
        union_find.union(first, second)
    return union_find.clusters()


class DropNearDuplicates(beam.DoFn):
    """Removes every non-representative cluster member; the id -> representative map is built once per
    side-input value rather than once per element."""

    def setup(self):
        self._clusters, self._removed = None, {}

    def process(self, element, clusters):
        if clusters is not self._clusters:
            self._clusters, self._removed = clusters, dedup.representatives(clusters)
        doc = element[0]
        if doc.id in self._removed:
            yield beam.pvalue.TaggedOutput("rejected", reject(doc, "near_duplicate", self._removed[doc.id]))
        else:
            yield doc


def _assemble_repository(element, config: PipelineConfig):
    """One repository's kept files -> code_repo records; "files" reports each file placed in a record."""
    _, files = element
    records, too_long = assemble_repository(list(files), config.repo_assembly)
    left_out = {r.id for r in too_long}
    for rejection in too_long:
        yield beam.pvalue.TaggedOutput("rejected", rejection)
    for doc in files:
        if doc.id not in left_out:
            yield beam.pvalue.TaggedOutput("files", doc)
    yield from records


def _write_shard(element, config: PipelineConfig):
    index, docs = element
    return output.write_shard(config.output_directory, "train", index, config.num_shards, list(docs),
                              config.fingerprint())


def _dump(path):
    def write(value):
        with open(path, "w") as handle:
            json.dump(value, handle)
    return write


def run_beam(config: PipelineConfig, beam_arguments: list[str] | None = None) -> dict:
    """Build and run the Beam pipeline; `beam_arguments` are Beam's own flags (--runner=..., --project=...)."""
    os.makedirs(config.output_directory, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="beam_results_", dir=config.output_directory)
    units = [unit for source in config.sources for unit in work_units(source)]
    bands, rows = dedup.optimal_bands_rows(config.minhash.threshold, config.minhash.num_permutations,
                                           config.minhash.false_positive_weight, config.minhash.false_negative_weight)
    options = PipelineOptions(beam_arguments or ["--runner=DirectRunner"])
    pipeline = beam.Pipeline(options=options)
    mapped = (pipeline | "Units" >> beam.Create(units, reshuffle=True)
              | "ProcessUnits" >> beam.ParDo(ProcessUnits(config)).with_outputs("rejected", main="docs"))
    documents, rejected_parts = mapped.docs, [mapped.rejected]
    if config.run_exact_dedup:
        exact = (documents | "KeyByHash" >> beam.Map(lambda e: (e[1], e))
                 | "GroupByHash" >> beam.GroupByKey()
                 | "ExactDedup" >> beam.FlatMap(_exact_groups).with_outputs("rejected", main="docs"))
        documents = exact.docs
        rejected_parts.append(exact.rejected)
    clusters = pipeline | "NoClusters" >> beam.Create([[]])
    if config.run_near_dedup:
        edges = (documents | "BandKeys" >> beam.FlatMap(_band_entries, bands, rows)
                 | "GroupByBand" >> beam.GroupByKey()
                 | "VerifyBuckets" >> beam.FlatMap(_bucket_edges, config))
        clusters = (edges | "AllEdges" >> beam.combiners.ToList()
                    | "UnionFind" >> beam.Map(_clusters_from_edges))
        near = (documents | "DropNearDuplicates" >> beam.ParDo(
            DropNearDuplicates(), beam.pvalue.AsSingleton(clusters)).with_outputs("rejected", main="docs"))
        kept = near.docs
        rejected_parts.append(near.rejected)
    else:
        kept = documents | "Documents" >> beam.Map(lambda e: e[0])
    records = kept
    if config.kind == "code_repo":
        assembled = (kept | "KeyByRepository" >> beam.Map(lambda d: ((d.source, d.repo_name), d))
                     | "GroupByRepository" >> beam.GroupByKey()
                     | "AssembleRepositories" >> beam.FlatMap(_assemble_repository, config).with_outputs(
                         "rejected", "files", main="records"))
        records, kept = assembled.records, assembled.files
        rejected_parts.append(assembled.rejected)
        (records | "CountRecords" >> beam.combiners.Count.Globally()
         | "SaveRecordCount" >> beam.Map(_dump(os.path.join(scratch, "records.json"))))
    rejected = rejected_parts | "AllRejected" >> beam.Flatten()
    entries = (records | "KeyByShard" >> beam.Map(lambda d: (output.shard_of(d.id, config.num_shards), d))
               | "GroupByShard" >> beam.GroupByKey()
               | "WriteShards" >> beam.Map(_write_shard, config))
    entries | "ShardEntries" >> beam.combiners.ToList() | "SaveEntries" >> beam.Map(
        _dump(os.path.join(scratch, "entries.json")))
    (kept | "KeptKeys" >> beam.Map(lambda d: ("kept", d.source, len(d.text) + sum(map(len, d.contents))))
     | "KeptList" >> beam.combiners.ToList() | "SaveKept" >> beam.Map(_dump(os.path.join(scratch, "kept.json"))))
    (rejected | "RejectedList" >> beam.Map(lambda r: r.__dict__) | "RejectedToList" >> beam.combiners.ToList()
     | "SaveRejected" >> beam.Map(_dump(os.path.join(scratch, "rejected.json"))))
    clusters | "SaveClusters" >> beam.Map(_dump(os.path.join(scratch, "clusters.json")))
    result = pipeline.run()
    result.wait_until_finish()
    if config.progress:  # Beam's own counters, as any runner reports them
        for counter in result.metrics().query()["counters"]:
            print(f"[{config.name}] beam counter {counter.key.metric.name}: {counter.committed}",
                  file=sys.stderr, flush=True)
    result_of = lambda name: json.load(open(os.path.join(scratch, name)))  # noqa: E731
    entries, kept, rejections = result_of("entries.json"), result_of("kept.json"), result_of("rejected.json")
    clusters = result_of("clusters.json") if os.path.exists(os.path.join(scratch, "clusters.json")) else []
    record_count = result_of("records.json") if config.kind == "code_repo" else None
    written = {entry["file"] for entry in entries}
    for index in range(config.num_shards):  # shards without documents are not produced by GroupByShard
        name = output.SHARD_NAME.format(split="train", index=index, count=config.num_shards)
        if name not in written:
            entries.append(output.write_shard(config.output_directory, "train", index, config.num_shards, [],
                                              config.fingerprint()))
    counters = Counters()
    rejection_objects = [Rejection(**r) for r in rejections]
    for rejection in rejection_objects:
        counters.count_rejection(rejection)
    for _, source, _ in kept:
        counters.count_kept(Document("", source, config.kind))
    for name in os.listdir(scratch):
        os.remove(os.path.join(scratch, name))
    os.rmdir(scratch)
    return finish(config, counters, entries, rejection_objects, clusters, sum(chars for _, _, chars in kept),
                  record_count)
