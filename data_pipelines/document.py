"""The unit of data that flows through every stage: a Document, or a Rejection that says why one was dropped.

Every input item (a file, an archive member, a JSONL line) becomes exactly one Document or one Rejection, so
`read == kept + sum(rejected)` can be checked at the end of any pipeline.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Iterable, Iterator


def document_id(source: str, key: str) -> str:
    """Stable id: sha256 of source and path/key (FORMAT.md)."""
    return hashlib.sha256(f"{source}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    source: str
    kind: str  # code_file | code_repo | text | math | sft
    text: str = ""
    language: str = ""
    repo_name: str = ""
    path: str = ""
    size_bytes: int = 0
    license_path: str = ""
    quality: float | None = None
    paths: tuple[str, ...] = ()
    contents: tuple[str, ...] = ()
    messages: str = ""

    def replace(self, **changes) -> "Document":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Rejection:
    id: str
    source: str
    reason: str  # "<stage>:<rule>", e.g. "rule:max_line_length", "ingest:binary"
    detail: str = ""
    key: str = ""  # path or file:line, for humans reading the rejects file
    sample: str = ""  # the first characters of the rejected content, if any

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)


def reject(document: Document, reason: str, detail: str = "", sample_chars: int = 300) -> Rejection:
    key = f"{document.repo_name}/{document.path}" if document.path else document.repo_name
    return Rejection(document.id, document.source, reason, detail, key, document.text[:sample_chars])


class Counters:
    """Counts of read / kept / rejected-by-reason, per source; mergeable across workers and stages."""

    def __init__(self):
        self.rejected: collections.Counter = collections.Counter()
        self.kept = 0
        self.per_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def count_rejection(self, rejection: Rejection) -> None:
        self.rejected[rejection.reason] += 1
        self.per_source[rejection.source]["read"] += 1

    def count_kept(self, document: Document) -> None:
        self.kept += 1
        self.per_source[document.source]["read"] += 1
        self.per_source[document.source]["kept"] += 1

    @property
    def read(self) -> int:
        return self.kept + sum(self.rejected.values())

    def merge(self, other: "Counters") -> "Counters":
        self.rejected.update(other.rejected)
        self.kept += other.kept
        for source, counts in other.per_source.items():
            self.per_source[source].update(counts)
        return self

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "rejected": dict(sorted(self.rejected.items())),
                "per_source": {source: {"read": counts["read"], "kept": counts["kept"]}
                               for source, counts in sorted(self.per_source.items())}}


def split_outcomes(items: Iterable[Document | Rejection]) -> tuple[list[Document], list[Rejection]]:
    documents, rejections = [], []
    for item in items:
        (rejections if isinstance(item, Rejection) else documents).append(item)
    return documents, rejections


def only_documents(items: Iterable[Document | Rejection], rejections: list[Rejection]) -> Iterator[Document]:
    for item in items:
        if isinstance(item, Rejection):
            rejections.append(item)
        else:
            yield item
