"""Output: sharded TFRecord files of tf.train.Example protos plus manifest.json, exactly as FORMAT.md says.

The Example proto and the TFRecord framing are written by hand (both are small, stable wire formats): worker
processes need no TensorFlow import (3 s and 1 GB each), and map entries are written in sorted key order so
the same documents always give the same bytes. tests/ checks the bytes against TensorFlow's own parser.

Sharding: shard = first 8 hex digits of the document id modulo the shard count, records inside a shard sorted
by id. Every runner computes the same assignment without a global sort, so shards are byte-identical.
A shard is written to a temporary name, renamed, then marked by `<file>.done` holding its sha256 and a
fingerprint of its ids; a re-run finding a matching marker skips the shard.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterable

import google_crc32c

from data_pipelines.document import Document

SHARD_NAME = "{split}-{index:05d}-of-{count:05d}.tfrecord"
TOKEN_BYTES = 3.6


# ---------------------------------------------------------------- protobuf wire format

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited field (wire type 2)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: Iterable[bytes]) -> bytes:
    bytes_list = b"".join(_field(1, value) for value in values)  # BytesList.value = 1
    return _field(1, bytes_list)  # Feature.bytes_list = 1


def _float_feature(values: Iterable[float]) -> bytes:
    values = list(values)
    packed = struct.pack(f"<{len(values)}f", *values)
    return _field(2, _field(1, packed))  # Feature.float_list = 2, FloatList.value = 1 (packed)


def serialize_example(features: dict[str, bytes]) -> bytes:
    """features: name -> serialized Feature. Example.features = 1, Features.feature = 1 (map entries)."""
    entries = b"".join(_field(1, _field(1, name.encode()) + _field(2, feature))
                       for name, feature in sorted(features.items()))
    return _field(1, entries)


def document_to_example(doc: Document) -> bytes:
    def text(value: str) -> bytes:
        return _bytes_feature([value.encode("utf-8", "surrogatepass")])

    features = {"id": text(doc.id), "source": text(doc.source), "kind": text(doc.kind)}
    if doc.kind in ("code_file", "text", "math"):
        features["text"] = text(doc.text)
    if doc.kind in ("code_file", "code_repo", "text") and doc.language:
        features["language"] = text(doc.language)
    if doc.kind in ("code_file", "code_repo"):
        features["repo_name"] = text(doc.repo_name)
    if doc.kind == "code_file":
        features["path"] = text(doc.path)
    if doc.kind == "code_repo":
        features["paths"] = _bytes_feature(p.encode("utf-8", "surrogatepass") for p in doc.paths)
        features["contents"] = _bytes_feature(c.encode("utf-8", "surrogatepass") for c in doc.contents)
    if doc.kind == "sft":
        features["messages"] = text(doc.messages)
    if doc.quality is not None:
        features["quality"] = _float_feature([doc.quality])
    return serialize_example(features)


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord_frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return length + _masked_crc(length) + record + _masked_crc(record)


def read_tfrecord(path: str) -> Iterable[bytes]:
    """Plain reader (with CRC checks) for tests and tools that should not import TensorFlow."""
    with open(path, "rb") as handle:
        while header := handle.read(12):
            if len(header) < 12 or _masked_crc(header[:8]) != header[8:]:
                raise ValueError(f"{path}: corrupt TFRecord length header; delete the shard and its .done marker")
            (length,) = struct.unpack("<Q", header[:8])
            record, crc = handle.read(length), handle.read(4)
            if _masked_crc(record) != crc:
                raise ValueError(f"{path}: corrupt TFRecord data; delete the shard and its .done marker")
            yield record


# ---------------------------------------------------------------- shards and manifest

def shard_of(doc_id: str, num_shards: int) -> int:
    return int(doc_id[:8], 16) % num_shards


def shard_fingerprint(docs: list[Document], config_fingerprint: str) -> str:
    digest = hashlib.sha256(config_fingerprint.encode())
    for doc in docs:
        digest.update(doc.id.encode())
    return digest.hexdigest()


def write_shard(directory: str, split: str, index: int, count: int, docs: Iterable[Document],
                config_fingerprint: str = "") -> dict:
    """Write one shard (documents sorted by id); returns its manifest entry. Skips a shard already done."""
    docs = sorted(docs, key=lambda d: d.id)
    name = SHARD_NAME.format(split=split, index=index, count=count)
    path = os.path.join(directory, name)
    fingerprint = shard_fingerprint(docs, config_fingerprint)
    marker = path + ".done"
    if os.path.exists(marker) and os.path.exists(path):
        with open(marker) as handle:
            done = json.load(handle)
        if done.get("fingerprint") == fingerprint:
            return {key: done[key] for key in ("file", "records", "bytes", "sha256")} | {"skipped": True}
    os.makedirs(directory, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        for doc in docs:
            framed = tfrecord_frame(document_to_example(doc))
            handle.write(framed)
            digest.update(framed)
            size += len(framed)
    os.replace(temporary, path)
    entry = {"file": name, "records": len(docs), "bytes": size, "sha256": digest.hexdigest()}
    with open(marker, "w") as handle:
        json.dump(entry | {"fingerprint": fingerprint}, handle)
    return entry | {"skipped": False}


def write_manifest(directory: str, name: str, kind: str, stages: list[str], config: dict,
                   split_entries: dict[str, list[dict]], counts: dict, token_chars: int,
                   expected_records: int | None = None) -> dict:
    """expected_records: records the shards must hold when they are not the kept documents themselves (a
    code_repo record bundles many kept files); counts then stay in input documents (files)."""
    if counts["read"] != counts["kept"] + sum(counts["rejected"].values()):
        raise AssertionError(f"accounting broken: read {counts['read']} != kept {counts['kept']} + rejected "
                             f"{sum(counts['rejected'].values())}; a stage dropped documents without a reason")
    splits = {split: {"shards": [{k: e[k] for k in ("file", "records", "bytes", "sha256")} for e in entries],
                      "records": sum(e["records"] for e in entries)} for split, entries in split_entries.items()}
    written = sum(split["records"] for split in splits.values())
    expected = counts["kept"] if expected_records is None else expected_records
    if written != expected:
        raise AssertionError(f"shards hold {written} records but {expected} were expected")
    manifest = {
        "format": "tfrecord-example", "format_version": 1, "name": name, "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pipeline": {"stages": stages, "config": config},
        "splits": splits,
        "counts": {"read": counts["read"], "kept": counts["kept"], "rejected": counts["rejected"]},
        "per_source": counts["per_source"],
        **({"counts_unit": "input documents (files); records bundle them"} if expected_records is not None else {}),
        "token_estimate": {"method": f"bytes/{TOKEN_BYTES}", "tokens": int(token_chars / TOKEN_BYTES)},
    }
    with open(os.path.join(directory, "manifest.json.tmp"), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=False)
    os.replace(os.path.join(directory, "manifest.json.tmp"), os.path.join(directory, "manifest.json"))
    return manifest


VALIDATION = "validation"


def hold_out_last_shard(directory) -> dict:
    """Moves the last train shard into the `validation` split (file renamed as FORMAT.md names it). The manifest's
    counts are unchanged: the held-out records are kept documents, only in another split."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    train = manifest["splits"]["train"]["shards"]
    if VALIDATION in manifest["splits"]:
        return manifest
    if len(train) < 2:
        raise ValueError(f"{directory}: {len(train)} shard(s); holding one out as the validation split needs "
                         "at least 2 shards")
    last = train.pop()
    held_out_name = SHARD_NAME.format(split=VALIDATION, index=0, count=1)
    os.replace(directory / last["file"], directory / held_out_name)
    marker = directory / (last["file"] + ".done")
    if marker.exists():
        marker.unlink()  # the marker vouches for a train shard that is no longer there
    manifest["splits"] = {"train": {"shards": train, "records": sum(s["records"] for s in train)},
                          VALIDATION: {"shards": [{**last, "file": held_out_name}], "records": last["records"]}}
    if manifest["splits"]["train"]["records"] == 0 or last["records"] == 0:
        raise ValueError(f"{directory}: an empty train or validation split ({manifest['splits']}); give the "
                         "dataset more documents or fewer shards")
    (directory / "manifest.json.tmp").write_text(json.dumps(manifest, indent=1))
    os.replace(directory / "manifest.json.tmp", directory / "manifest.json")
    return manifest
