"""The training feed: a registered seqio task or mixture, read natively on grain, packed and batched.

Design notes: docs/DATA.md, section `qwencoder_jax/data/loader.py`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import grain
import numpy as np
import orbax.checkpoint as ocp
from absl import flags

from qwencoder_jax.data import fim, packing, samples, shards, tasks

BAD_INPUT_KEY = "bad_input_counts"


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    sequence_length: int = 8192
    batch_size: int = 8  # rows per batch for this process
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0  # grain worker processes; 0 = build batches in the calling thread
    per_worker_buffer_size: int = 2  # batches each worker prepares ahead
    read_threads: int = 1  # threads building documents inside each process (tokenising holds the GIL part-time)
    num_packing_bins: int = 16
    process_index: int | None = None  # None: jax.process_index() / jax.process_count()
    process_count: int | None = None

    def __post_init__(self):
        if self.batch_size < 1 or self.sequence_length < 1:
            raise ValueError(f"LoaderConfig needs positive batch_size and sequence_length, got {self}")
        if (self.process_index is None) != (self.process_count is None):
            raise ValueError("give both process_index and process_count, or neither (then jax's are used)")
        if self.process_count is not None and not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {self.process_index} is not in [0, {self.process_count})")


def _process_shard(config: LoaderConfig) -> tuple[int, int]:
    if config.process_count is not None:
        return config.process_index, config.process_count
    import jax  # only here: the data package must not initialise a backend for users who pass the shard

    return jax.process_index(), jax.process_count()


class BuildDocuments:
    """record bytes -> {"documents": [{ids, loss_mask, source, source_id}], "bad": {reason: count}}; picklable for
    workers. source_id: the source's 1-based index in its mixture (source_names), carried into the rows'
    `source_ids` for per-source losses."""

    def __init__(self, spec: samples.SourceSpec, vocabulary, source_id: int = 0):
        self.spec, self.vocabulary, self.source_id = spec, vocabulary, source_id

    def __call__(self, record: bytes) -> dict:
        counter = fim.BadInputCounter()
        documents = samples.build_documents(record, self.spec, self.vocabulary, counter)
        for document in documents:
            document["source"] = self.spec.name  # for statistics; the packer drops it
            document["source_id"] = self.source_id
        return {"documents": documents, "bad": counter.as_dict()}


class _FlattenIterator(grain.DatasetIterator):
    """Yields the documents of each record in turn; the state names the record (by the parent's state before
    it) and how many of its documents were emitted, so a restore re-reads that record and skips them."""

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._counts: dict[str, int] = {}
        self._pending: list = []
        self._emitted = 0
        self._record_state = self._parent.get_state()
        self._counts_before_record: dict[str, int] = {}

    def _read_record(self) -> None:
        self._record_state = self._parent.get_state()
        self._counts_before_record = dict(self._counts)
        element = next(self._parent)
        for reason, count in element["bad"].items():
            self._counts[reason] = self._counts.get(reason, 0) + count
        self._pending, self._emitted = element["documents"], 0

    def __next__(self) -> dict:
        while self._emitted >= len(self._pending):
            self._read_record()
        document = self._pending[self._emitted]
        self._emitted += 1
        return document

    def get_state(self) -> dict:
        if self._emitted >= len(self._pending):  # between records
            return {"parent": self._parent.get_state(), "emitted": 0, BAD_INPUT_KEY: dict(self._counts)}
        return {"parent": self._record_state, "emitted": self._emitted, BAD_INPUT_KEY: dict(self._counts_before_record)}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._counts = dict(state[BAD_INPUT_KEY])
        self._pending, self._emitted = [], 0
        self._record_state = state["parent"]
        if state["emitted"]:
            self._read_record()
            self._emitted = state["emitted"]


class CountBadInput(grain.IterDataset):
    """Flattens records into documents and keeps the per-reason bad-input counts in the iterator state, so they
    are checkpointed with it and visible from the main process whatever worker counted them."""

    def __iter__(self) -> grain.DatasetIterator:
        return _FlattenIterator(self._parent.__iter__())


def source_names(name: str) -> tuple[str, ...]:
    """The sources of a registered task or mixture in the order the loader numbers them: rows' `source_ids` hold
    1 + the index into this tuple (0 = padding)."""
    return tuple(spec.name for spec, _, _ in tasks.resolve(name))


def _source_dataset(spec: samples.SourceSpec, vocabulary, seed: int, config: LoaderConfig,
                    shard: tuple[int, int], source_id: int = 0) -> grain.MapDataset:
    records = grain.MapDataset.source(shards.RecordSource(shards.split_files(spec.dataset_dir, spec.split)))
    process_index, process_count = shard
    records = records[process_index::process_count]
    if len(records) == 0:
        raise ValueError(f"source {spec.name!r} has no records for process {process_index} of {process_count}; "
                         "give it more records (shards) than processes or leave it out of the mixture")
    if config.shuffle:
        records = records.shuffle(seed=seed)
    return records.repeat(None).map(BuildDocuments(spec, vocabulary, source_id))


def make_document_dataset(name: str, config: LoaderConfig, split: str | None = None,
                          only_sources: tuple[str, ...] | None = None) -> grain.IterDataset:
    """The mixed documents ({ids, loss_mask, source, source_id}) of a registered task or mixture, before packing.
    split: read this split instead of each task's own (e.g. "validation" for evaluation); only_sources: keep these
    tasks of the mixture (their rates renormalised), numbered as in the whole mixture."""
    resolved = [(spec if split is None else dataclasses.replace(spec, split=split), vocabulary, rate)
                for spec, vocabulary, rate in tasks.resolve(name)]
    shard = _process_shard(config)
    for spec, _, _ in resolved:
        if spec.max_tokens > config.sequence_length + 1:
            raise ValueError(f"source {spec.name!r} builds documents of up to {spec.max_tokens} tokens, longer than "
                             f"sequence_length + 1 = {config.sequence_length + 1}; register it with "
                             f"max_tokens={config.sequence_length + 1}")
    # Each source's seed differs (same seed would shuffle same-sized sources identically).
    kept = [index for index, (spec, _, _) in enumerate(resolved) if only_sources is None or spec.name in only_sources]
    if not kept:
        raise ValueError(f"{name!r} has none of the sources {only_sources}")
    sources = [_source_dataset(resolved[index][0], resolved[index][1], config.seed * 1_000_003 + index, config, shard,
                               index + 1) for index in kept]
    rates = [resolved[index][2] for index in kept]
    mixed = sources[0] if len(sources) == 1 else grain.MapDataset.mix(sources, weights=rates)
    return CountBadInput(mixed.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                                                 prefetch_buffer_size=8 * config.read_threads)))


def make_dataset(name: str, config: LoaderConfig, split: str | None = None,
                 only_sources: tuple[str, ...] | None = None) -> grain.IterDataset:
    """The batch stream of a registered task or mixture (see the module docstring); split and only_sources as in
    make_document_dataset."""
    documents = make_document_dataset(name, config, split, only_sources)
    length = config.sequence_length
    shifted = documents.map(lambda document: packing.shift_document(document, length))
    rows = packing.pack_dataset(shifted, packing.PackingConfig(
        sequence_length=length, num_packing_bins=config.num_packing_bins, seed=config.seed))
    batches = rows.batch(config.batch_size, drop_remainder=True)
    if config.num_workers > 0:
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=config.num_workers, per_worker_buffer_size=config.per_worker_buffer_size))
    return batches


def _mark_absl_flags_parsed() -> None:
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_iterator(name: str, config: LoaderConfig, state: Mapping | None = None) -> grain.DatasetIterator:
    """An iterator over make_dataset(name, config), optionally restored from a get_state() dict."""
    if config.num_workers > 0:
        _mark_absl_flags_parsed()
    iterator = iter(make_dataset(name, config))
    if state is not None:
        iterator.set_state(state)
    return iterator


def bad_input_counts(iterator: grain.DatasetIterator) -> dict[str, int]:
    """Per-reason counts of dropped or altered input seen so far, summed over worker processes.

    They come from the iterator state, which is saved with checkpoints and so lags the emitted batches by up to
    one packed group (num_packing_bins rows) per worker: the packer resumes from the start of its group.
    """
    totals: dict[str, int] = {}

    def walk(node):
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key == BAD_INPUT_KEY and isinstance(value, Mapping):
                    for reason, count in value.items():
                        totals[reason] = totals.get(reason, 0) + int(count)
                else:
                    walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(iterator.get_state())  # with worker processes: one sub-state per worker, plain dicts (grain 0.2.18)
    return dict(sorted(totals.items()))


# ---------------------------------------------------------------------------------------------------------------
# Checkpointing with orbax, beside the model.

def checkpoint_args(iterator: grain.DatasetIterator):
    """The orbax args that save this iterator; put them in the same `ocp.args.Composite` as the model state:
    `manager.save(step, args=ocp.args.Composite(state=..., data=checkpoint_args(iterator)))`."""
    return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator: grain.DatasetIterator):
    """The orbax args that restore into `iterator` (built with the same LoaderConfig and mixture)."""
    return grain.checkpoint.CheckpointRestore(iterator)


def save_state(directory: str | os.PathLike, step: int, iterator: grain.DatasetIterator, extra=None) -> None:
    """Saves the iterator (and `extra`, a pytree such as model params) as step `step` of an orbax manager."""
    items = {"data": checkpoint_args(iterator)}
    if extra is not None:
        items["state"] = ocp.args.StandardSave(extra)
    with ocp.CheckpointManager(os.fspath(directory)) as manager:
        manager.save(step, args=ocp.args.Composite(**items))
        manager.wait_until_finished()


def restore_state(directory: str | os.PathLike, iterator: grain.DatasetIterator, step: int | None = None):
    """Restores the iterator in place from the latest (or given) step; returns the step restored."""
    with ocp.CheckpointManager(os.fspath(directory)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no checkpoint to restore the data iterator from")
        manager.restore(step, args=ocp.args.Composite(data=restore_args(iterator)))
    return step


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(count)]
