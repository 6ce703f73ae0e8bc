"""Reading (and, for tests and pre-tokenising, writing) the TFRecord-of-tf.train.Example shards of FORMAT.md.

Design notes: docs/DATA.md, section `qwencoder_jax/data/shards.py`.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

MANIFEST = "manifest.json"
_HEADER_BYTES = 12  # uint64 length + uint32 masked crc of the length
_FOOTER_BYTES = 4  # uint32 masked crc of the data

# Reasons counted for records (documents are counted by fim.py's reasons).
MALFORMED_RECORD = "malformed_record"
TRUNCATED_FILE = "truncated_file"
MISSING_FEATURE = "missing_feature"


class MalformedRecord(ValueError):
    """A record that is not a readable tf.train.Example, or lacks a feature its kind needs."""


# ---------------------------------------------------------------------------------------------------------------
# Manifest.

def read_manifest(dataset_dir: str | os.PathLike) -> dict:
    path = pathlib.Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a dataset directory needs the manifest.json that "
                                "data_pipelines writes (see data_pipelines/FORMAT.md)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != "tfrecord-example":
        raise ValueError(f"{path}: format is {manifest.get('format')!r}; this reader handles 'tfrecord-example'")
    return manifest


def split_files(dataset_dir: str | os.PathLike, split: str) -> list[str]:
    """The shard paths of one split, in manifest order."""
    manifest = read_manifest(dataset_dir)
    splits = manifest.get("splits", {})
    if split not in splits:
        raise KeyError(f"{dataset_dir}: manifest has splits {sorted(splits)}, not {split!r}")
    files = [str(pathlib.Path(dataset_dir) / shard["file"]) for shard in splits[split]["shards"]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{dataset_dir}: manifest lists shards that do not exist: {missing[:3]}")
    return files


# ---------------------------------------------------------------------------------------------------------------
# Random-access reading.

def index_tfrecord(path: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(data offsets, data lengths, complete) of the records of one file; complete is False if the file ends
    inside a record (a torn write), whose rest is then ignored."""
    offsets, lengths = [], []
    size = os.path.getsize(path)
    position = 0
    with open(path, "rb") as f:
        while position < size:
            if position + _HEADER_BYTES > size:
                return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), False
            f.seek(position)
            (length,) = struct.unpack("<Q", f.read(8))
            end = position + _HEADER_BYTES + length + _FOOTER_BYTES
            if end > size:
                return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), False
            offsets.append(position + _HEADER_BYTES)
            lengths.append(length)
            position = end
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), True


class RecordSource:
    """Serialized records of several TFRecord files by global index: a grain random-access source."""

    def __init__(self, files: Sequence[str]):
        self.files = list(files)
        indexes = [index_tfrecord(f) for f in self.files]
        self.torn_files = [f for f, (_, _, complete) in zip(self.files, indexes) if not complete]
        self._file_of_record = np.concatenate(
            [np.full(len(o), i, np.int32) for i, (o, _, _) in enumerate(indexes)] or [np.zeros(0, np.int32)])
        self._offsets = np.concatenate([o for o, _, _ in indexes] or [np.zeros(0, np.int64)])
        self._lengths = np.concatenate([n for _, n, _ in indexes] or [np.zeros(0, np.int64)])
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}  # file handles do not travel to worker processes; each reopens its own
        return state

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> bytes:
        index = int(index)
        if os.getpid() != self._pid:  # forked: never share a file position with the parent
            self._handles, self._pid = {}, os.getpid()
        file_index = int(self._file_of_record[index])
        handle = self._handles.get(file_index)
        if handle is None:
            handle = self._handles[file_index] = open(self.files[file_index], "rb")
        handle.seek(int(self._offsets[index]))
        return handle.read(int(self._lengths[index]))

    def __repr__(self) -> str:
        return f"RecordSource({len(self.files)} files, {len(self)} records)"


# ---------------------------------------------------------------------------------------------------------------
# tf.train.Example wire format: Example{1: Features{1: map<string, Feature>}};
# Feature{1: BytesList{1: repeated bytes}, 2: FloatList{1: packed float}, 3: Int64List{1: packed int64}}.

def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(buffer):
            raise MalformedRecord("varint runs past the end of the record")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise MalformedRecord("varint longer than 10 bytes")


def _fields(buffer: bytes) -> Iterable[tuple[int, int, object]]:
    """(field number, wire type, value) of one message; length-delimited values come as memoryview slices."""
    view = memoryview(buffer)
    position = 0
    while position < len(buffer):
        key, position = _varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(buffer, position)
        elif wire_type == 2:
            length, position = _varint(buffer, position)
            if position + length > len(buffer):
                raise MalformedRecord("length-delimited field runs past the end of the record")
            value = view[position:position + length]
            position += length
        elif wire_type == 5:
            value = view[position:position + 4]
            position += 4
        elif wire_type == 1:
            value = view[position:position + 8]
            position += 8
        else:
            raise MalformedRecord(f"unsupported protobuf wire type {wire_type}")
        if position > len(buffer):
            raise MalformedRecord("field runs past the end of the record")
        yield number, wire_type, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature_value(buffer: memoryview):
    for number, wire_type, value in _fields(bytes(buffer)):
        if wire_type != 2:
            raise MalformedRecord(f"Feature field {number} has wire type {wire_type}, expected a list message")
        items = list(_fields(bytes(value)))
        if number == 1:
            return [bytes(v) for n, w, v in items if n == 1 and w == 2]
        if number == 2:
            floats = []
            for n, w, v in items:
                floats.extend(np.frombuffer(bytes(v), "<f4").tolist() if w == 2 else struct.unpack("<f", v))
            return floats
        if number == 3:
            ints = []
            for n, w, v in items:
                if w == 0:
                    ints.append(_signed64(v))
                else:
                    raw, position = bytes(v), 0
                    while position < len(raw):
                        item, position = _varint(raw, position)
                        ints.append(_signed64(item))
            return ints
    return []  # an empty Feature: no list set


def parse_example(record: bytes) -> dict[str, list]:
    """feature name -> list of bytes / floats / ints. Raises MalformedRecord if `record` is not an Example."""
    features: dict[str, list] = {}
    try:
        for number, wire_type, value in _fields(record):
            if number != 1 or wire_type != 2:
                raise MalformedRecord(f"Example field {number} (wire type {wire_type}) is not `features`")
            for entry_number, entry_type, entry in _fields(bytes(value)):
                if entry_number != 1 or entry_type != 2:
                    raise MalformedRecord("Features holds something other than its feature map")
                name, feature = None, None
                for n, w, v in _fields(bytes(entry)):
                    if n == 1 and w == 2:
                        name = bytes(v).decode("utf-8")
                    elif n == 2 and w == 2:
                        feature = v
                if name is None:
                    raise MalformedRecord("feature map entry without a name")
                features[name] = _feature_value(feature) if feature is not None else []
    except UnicodeDecodeError:
        raise MalformedRecord("feature name is not UTF-8") from None
    return features


# ---------------------------------------------------------------------------------------------------------------
# Writing (tests, benchmarks, pre-tokenised copies). Uses TensorFlow, which only the writer needs.

def write_dataset(dataset_dir: str | os.PathLike, name: str, kind: str, examples: Sequence[Mapping[str, object]],
                  num_shards: int = 2, split: str = "train", extra_manifest: Mapping | None = None) -> dict:
    """Writes `examples` (feature name -> str | bytes | list of them | list of ints/floats) as FORMAT.md shards."""
    from qwencoder_jax.data.tensorflow_import import tensorflow as tf  # only the writer needs TensorFlow

    def feature(value) -> tf.train.Feature:
        values = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
        values = list(values)
        if values and all(isinstance(v, (int, np.integer)) for v in values):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
        if values and all(isinstance(v, (float, np.floating)) for v in values):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]))

    dataset_dir = pathlib.Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard in range(num_shards):
        file_name = f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        chunk = examples[shard::num_shards]
        with tf.io.TFRecordWriter(str(dataset_dir / file_name)) as writer:
            for example in chunk:
                proto = tf.train.Example(features=tf.train.Features(
                    feature={k: feature(v) for k, v in example.items()}))
                writer.write(proto.SerializeToString())
        shards.append({"file": file_name, "records": len(chunk),
                       "bytes": os.path.getsize(dataset_dir / file_name)})
    manifest = {"format": "tfrecord-example", "format_version": 1, "name": name, "kind": kind,
                "splits": {split: {"shards": shards, "records": len(examples)}},
                "counts": {"read": len(examples), "kept": len(examples), "rejected": {}}}
    manifest.update(extra_manifest or {})
    with open(dataset_dir / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return manifest
