"""Ingestion: local repository trees, tar/zip archives, The Stack-style JSONL dumps, and text/math from
JSONL/Parquet/plain files. Everything streams; each input item yields one Document or one Rejection.

A source is split into work units (one per repository directory, archive or data file) so that Beam and
multiprocessing can read units in parallel; `read_unit` is the only reader and both runners call it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import sysconfig
import tarfile
import zipfile
import zlib
from typing import Iterator

from data_pipelines.document import Document, Rejection, document_id
from data_pipelines.languages import language_for_path

SKIPPED_DIRECTORIES = frozenset({"__pycache__", ".git", ".hg", ".svn", "node_modules", ".tox", ".mypy_cache"})
LICENSE_NAME = re.compile(r"^(licen[cs]e|copying|notice)([._-].*)?$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    max_file_bytes: int = 1_000_000  # checked with stat/archive headers before any read
    binary_probe_bytes: int = 8192  # a NUL byte in this prefix marks a file binary
    keep_unknown_languages: bool = False  # files whose extension is not in languages.py
    text_field: str = "text"  # JSONL/Parquet field holding a text document
    math_fields: tuple[str, ...] = ("question", "problem", "answer", "solution")  # joined for kind=math


@dataclasses.dataclass(frozen=True)
class Source:
    """One named input. format: directory (each top-level package is a repository), repository (the path
    itself is one repository), archive (tar/zip = one repository), stack_jsonl, jsonl, parquet, plain."""

    name: str
    path: str
    format: str = "directory"
    kind: str = "code_file"


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    source: Source
    path: str  # the repository directory, archive or data file this unit reads
    repo_name: str = ""
    loose_files: tuple[str, ...] = ()  # for the repository made of a root's top-level modules


def stdlib_source(name: str = "stdlib") -> Source:
    return Source(name, sysconfig.get_paths()["stdlib"], "directory")


def site_packages_source(name: str = "site_packages") -> Source:
    return Source(name, sysconfig.get_paths()["purelib"], "directory")


def work_units(source: Source) -> list[WorkUnit]:
    """Split a source into independently readable units, in a deterministic order."""
    if not os.path.exists(source.path):
        raise FileNotFoundError(f"source {source.name!r}: {source.path} does not exist; fix the path")
    if source.format == "directory":
        units, loose = [], []
        for entry in sorted(os.listdir(source.path)):
            full = os.path.join(source.path, entry)
            if os.path.isdir(full) and not os.path.islink(full):
                # site-packages inside the stdlib tree is a separate source, not a stdlib repository
                if entry not in SKIPPED_DIRECTORIES | {"site-packages", "dist-packages"} and not entry.endswith(
                        (".dist-info", ".egg-info")):
                    units.append(WorkUnit(source, full, entry))
            elif os.path.isfile(full):
                loose.append(entry)
        if loose:  # top-level modules (os.py, json... in the stdlib) form one repository named after the root
            units.append(WorkUnit(source, source.path, os.path.basename(source.path.rstrip("/")), tuple(loose)))
        return units
    if source.format == "repository":
        return [WorkUnit(source, source.path, os.path.basename(source.path.rstrip("/")))]
    if os.path.isdir(source.path):  # a directory of data files or archives: one unit per file
        return [WorkUnit(source, os.path.join(root, f), _archive_repo_name(f))
                for root, dirs, files in sorted(os.walk(source.path)) for f in sorted(files)]
    return [WorkUnit(source, source.path, _archive_repo_name(source.path))]


def _archive_repo_name(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip", ".jsonl.gz", ".jsonl", ".parquet"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_unit(unit: WorkUnit, config: IngestConfig = IngestConfig()) -> Iterator[Document | Rejection]:
    readers = {"directory": _read_repository, "repository": _read_repository, "archive": _read_archive,
               "stack_jsonl": _read_jsonl, "jsonl": _read_jsonl, "parquet": _read_parquet, "plain": _read_plain}
    if unit.source.format not in readers:
        raise ValueError(f"source {unit.source.name!r}: unknown format {unit.source.format!r}; "
                         f"use one of {sorted(readers)}")
    yield from readers[unit.source.format](unit, config)


# ---------------------------------------------------------------- code files (directories and archives)

def _decode_code(unit: WorkUnit, relative_path: str, size: int, read_bytes, license_path: str,
                 config: IngestConfig) -> Document | Rejection:
    """Shared checks for one code file; `read_bytes(limit)` is only called once the size is known to be fine."""
    source = unit.source.name
    key = f"{unit.repo_name}/{relative_path}"
    doc_id = document_id(source, key)
    language = language_for_path(relative_path)
    if not language and not config.keep_unknown_languages:
        return Rejection(doc_id, source, "ingest:unknown_language", os.path.splitext(relative_path)[1], key)
    if size > config.max_file_bytes:
        return Rejection(doc_id, source, "ingest:too_large", f"{size} bytes > {config.max_file_bytes}", key)
    try:
        data = read_bytes(config.max_file_bytes + 1)
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as error:
        return Rejection(doc_id, source, "ingest:unreadable", f"{type(error).__name__}: {error}", key)
    if len(data) > config.max_file_bytes:  # the header lied or the file grew
        return Rejection(doc_id, source, "ingest:too_large", f"> {config.max_file_bytes} bytes", key)
    if b"\0" in data[: config.binary_probe_bytes]:
        return Rejection(doc_id, source, "ingest:binary", "NUL byte in the first bytes", key)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection(doc_id, source, "ingest:invalid_encoding", str(error)[:200], key)
    return Document(doc_id, source, "code_file", text, language, unit.repo_name, relative_path, len(data),
                    license_path)


def _read_repository(unit: WorkUnit, config: IngestConfig) -> Iterator[Document | Rejection]:
    if unit.loose_files:
        relative_paths = list(unit.loose_files)
    else:
        relative_paths = []
        for root, dirs, files in os.walk(unit.path):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRECTORIES)
            for name in sorted(files):
                relative_paths.append(os.path.relpath(os.path.join(root, name), unit.path))
    license_path = _license_path(unit, relative_paths)
    for relative in relative_paths:
        full = os.path.join(unit.path, relative)
        if os.path.islink(full) or not os.path.isfile(full):
            continue  # symlinks would double-count their targets; sockets and fifos are not files
        size = os.stat(full).st_size

        def read_bytes(limit, full=full):
            with open(full, "rb") as handle:
                return handle.read(limit)

        yield _decode_code(unit, relative.replace(os.sep, "/"), size, read_bytes, license_path, config)


def _license_path(unit: WorkUnit, relative_paths: list[str]) -> str:
    for relative in relative_paths:
        if "/" not in relative and LICENSE_NAME.match(relative):
            return relative
    # site-packages: the license sits in the sibling <package>-<version>.dist-info directory
    parent = os.path.dirname(unit.path.rstrip("/"))
    if not unit.loose_files and os.path.isdir(parent):
        prefix = unit.repo_name.lower().replace("-", "_") + "-"
        for entry in sorted(os.listdir(parent)):
            if entry.lower().replace("-", "_").startswith(prefix) and entry.endswith(".dist-info"):
                for root, _, files in os.walk(os.path.join(parent, entry)):
                    for name in sorted(files):
                        if LICENSE_NAME.match(name):
                            return os.path.relpath(os.path.join(root, name), parent)
    return ""


def _read_archive(unit: WorkUnit, config: IngestConfig) -> Iterator[Document | Rejection]:
    source, key = unit.source.name, unit.path
    if zipfile.is_zipfile(unit.path):
        try:
            archive = zipfile.ZipFile(unit.path)
            members = [m for m in archive.infolist() if not m.is_dir()]
        except (zipfile.BadZipFile, OSError) as error:
            yield Rejection(document_id(source, key), source, "ingest:corrupt_archive", str(error), key)
            return
        names = [m.filename for m in members]
        strip = _common_top_directory(names)
        license_path = next((n[len(strip):] for n in names if LICENSE_NAME.match(n[len(strip):])), "")
        for member in members:
            yield _decode_code(unit, member.filename[len(strip):], member.file_size,
                               lambda limit, m=member: archive.open(m).read(limit), license_path, config)
        return
    # Tar is streamed ("r|*"): members are read in order, never seeking, so a truncated file yields what it has.
    members_seen = 0
    try:
        with tarfile.open(unit.path, "r|*") as archive:
            for member in archive:
                members_seen += 1
                if not member.isfile():
                    continue
                relative = member.name.split("/", 1)[1] if "/" in member.name else member.name
                yield _decode_code(unit, relative, member.size,
                                   lambda limit, m=member: archive.extractfile(m).read(limit), "", config)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        reason = "ingest:truncated_archive" if members_seen else "ingest:corrupt_archive"
        yield Rejection(document_id(source, f"{key}#error"), source, reason,
                        f"after {members_seen} members: {type(error).__name__}: {error}", key)


def _common_top_directory(names: list[str]) -> str:
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return tops.pop() + "/"
    return ""


# ---------------------------------------------------------------- JSONL / Parquet / plain text

def _open_text_lines(path: str):
    raw = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    return raw


def _read_jsonl(unit: WorkUnit, config: IngestConfig) -> Iterator[Document | Rejection]:
    source = unit.source.name
    with _open_text_lines(unit.path) as handle:
        line_number = 0
        while True:
            line = handle.readline(config.max_file_bytes + 1)
            if not line:
                break
            line_number += 1
            key = f"{os.path.basename(unit.path)}:{line_number}"
            if len(line) > config.max_file_bytes and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # skip the rest of the oversized line in chunks
                    line = handle.readline(1 << 20)
                yield Rejection(document_id(source, key), source, "ingest:too_large",
                                f"JSONL line > {config.max_file_bytes} bytes", key)
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("a JSONL line must hold an object")
            except (ValueError, UnicodeDecodeError) as error:
                yield Rejection(document_id(source, key), source, "ingest:malformed_jsonl", str(error)[:200], key)
                continue
            yield _record_to_document(unit, record, key, config)


def _record_to_document(unit: WorkUnit, record: dict, key: str, config: IngestConfig) -> Document | Rejection:
    source, kind = unit.source.name, unit.source.kind
    if unit.source.format == "stack_jsonl" or "content" in record:
        repo = str(record.get("max_stars_repo_name") or record.get("repo_name") or unit.repo_name)
        path = str(record.get("max_stars_repo_path") or record.get("path") or key)
        content = record.get("content")
        doc_id = document_id(source, f"{repo}/{path}")
        if not isinstance(content, str):
            return Rejection(doc_id, source, "ingest:missing_field", "no string `content`", key)
        language = str(record.get("lang") or language_for_path(path))
        licenses = record.get("max_stars_repo_licenses") or record.get("license") or ""
        return Document(doc_id, source, "code_file", content, language, repo, path,
                        len(content.encode("utf-8", "surrogatepass")),
                        json.dumps(licenses) if not isinstance(licenses, str) else licenses)
    doc_id = document_id(source, str(record.get("id", key)))
    if kind == "math":
        parts = [str(record[f]) for f in config.math_fields if record.get(f) not in (None, "")]
        text = "\n\n".join(parts)
    else:
        text = record.get(config.text_field)
    if not isinstance(text, str) or not text:
        return Rejection(doc_id, source, "ingest:missing_field", f"no text in {config.text_field!r}", key)
    return Document(doc_id, source, kind, text, str(record.get("language", record.get("lang", ""))),
                    size_bytes=len(text.encode("utf-8", "surrogatepass")))


def _read_parquet(unit: WorkUnit, config: IngestConfig) -> Iterator[Document | Rejection]:
    import pyarrow.parquet as parquet  # optional dependency: only Parquet sources need it

    source, row = unit.source.name, 0
    try:
        table_file = parquet.ParquetFile(unit.path)
        for batch in table_file.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield _record_to_document(unit, record, f"{os.path.basename(unit.path)}:{row}", config)
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
        key = f"{unit.path}#error"
        yield Rejection(document_id(source, key), source, "ingest:corrupt_file", f"after {row} rows: {error}", key)


def _read_plain(unit: WorkUnit, config: IngestConfig) -> Iterator[Document | Rejection]:
    source, key = unit.source.name, os.path.basename(unit.path)
    doc_id = document_id(source, key)
    size = os.stat(unit.path).st_size
    if size > config.max_file_bytes:
        yield Rejection(doc_id, source, "ingest:too_large", f"{size} bytes > {config.max_file_bytes}", key)
        return
    with open(unit.path, "rb") as handle:
        data = handle.read(config.max_file_bytes + 1)
    if b"\0" in data[: config.binary_probe_bytes]:
        yield Rejection(doc_id, source, "ingest:binary", "NUL byte in the first bytes", key)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        yield Rejection(doc_id, source, "ingest:invalid_encoding", str(error)[:200], key)
        return
    yield Document(doc_id, source, unit.source.kind, text, path=key, size_bytes=len(data))


def read_source(source: Source, config: IngestConfig = IngestConfig()) -> Iterator[Document | Rejection]:
    for unit in work_units(source):
        yield from read_unit(unit, config)
