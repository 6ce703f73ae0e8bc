"""Ingestion: every input item becomes one Document or one Rejection with a reason; bad input never crashes."""

import gzip
import io
import json
import tarfile
import zipfile

import pytest

from data_pipelines import ingest
from data_pipelines.document import Counters, Rejection
from data_pipelines.languages import LANGUAGES, language_for_path


def _count(items):
    counters = Counters()
    for item in items:
        counters.count_rejection(item) if isinstance(item, Rejection) else counters.count_kept(item)
    return counters


@pytest.fixture
def bad_repository(tmp_path):
    repo = tmp_path / "repos" / "project"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "good.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "pkg" / "binary.py").write_bytes(b"\x00\x01\x02ELF" * 100)
    (repo / "pkg" / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (repo / "image.png").write_bytes(b"\x89PNG\r\n")
    (repo / "LICENSE").write_text("MIT License\n")
    with open(repo / "pkg" / "huge.py", "wb") as handle:  # sparse: 200 MB on paper, no disk used
        handle.truncate(200 * 1024 * 1024)
    return tmp_path / "repos"


def test_bad_files_are_skipped_with_reasons_and_counted(bad_repository):
    source = ingest.Source("local", str(bad_repository), "directory")
    items = list(ingest.read_source(source))
    reasons = {item.key.split("/", 1)[1]: item.reason for item in items if isinstance(item, Rejection)}
    assert reasons == {"pkg/binary.py": "ingest:binary", "pkg/latin1.py": "ingest:invalid_encoding",
                       "image.png": "ingest:unknown_language", "pkg/huge.py": "ingest:too_large",
                       "LICENSE": "ingest:unknown_language"}
    documents = [item for item in items if not isinstance(item, Rejection)]
    assert [(d.repo_name, d.path, d.language, d.license_path) for d in documents] == [
        ("project", "pkg/good.py", "Python", "LICENSE")]
    counters = _count(items)
    assert counters.read == 6 == counters.kept + sum(counters.rejected.values())


def test_huge_file_is_never_read(bad_repository, monkeypatch):
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    list(ingest.read_source(ingest.Source("local", str(bad_repository), "directory")))
    assert not any(path.endswith("huge.py") for path in opened)


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_zip_and_truncated_archives(tmp_path):
    files = {f"repo-1.0/src/m{i}.go": f"package main\n// file {i}\n{'x' * 5000}\n".encode() for i in range(20)}
    data = _tar_bytes(files)
    (tmp_path / "whole.tar.gz").write_bytes(data)
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as archive:
        archive.writestr("z/LICENSE", "Apache")
        archive.writestr("z/a.rs", "fn main() {}\n")
        archive.writestr("z/b.rs", b"\xff\xfe bad")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 50)

    whole = list(ingest.read_source(ingest.Source("t", str(tmp_path / "whole.tar.gz"), "archive")))
    assert len(whole) == 20 and all(d.language == "Go" and d.repo_name == "whole" for d in whole)
    assert whole[0].path == "src/m0.go"
    cut = list(ingest.read_source(ingest.Source("t", str(tmp_path / "cut.tar.gz"), "archive")))
    assert cut[-1].reason == "ingest:truncated_archive"
    assert 0 < len(cut) - 1 < 20
    # the member cut in half is reported on its own; every member before it is intact
    assert {getattr(c, "reason", "kept") for c in cut[:-1]} <= {"kept", "ingest:unreadable"}
    assert all(c.text == files[f"repo-1.0/{c.path}"].decode() for c in cut[:-1] if not isinstance(c, Rejection))
    zipped = list(ingest.read_source(ingest.Source("t", str(tmp_path / "z.zip"), "archive")))
    outcome = {getattr(z, "path", "") or z.key: getattr(z, "reason", "kept") for z in zipped}
    assert outcome == {"a.rs": "kept", "z/b.rs": "ingest:invalid_encoding", "z/LICENSE": "ingest:unknown_language"}
    assert [z.license_path for z in zipped if not isinstance(z, Rejection)] == ["LICENSE"]
    broken = list(ingest.read_source(ingest.Source("t", str(tmp_path / "broken.zip"), "archive")))
    assert [b.reason for b in broken] == ["ingest:corrupt_archive"]


def test_stack_jsonl_with_malformed_and_oversized_lines(tmp_path):
    lines = [json.dumps({"content": "int main() { return 0; }\n", "max_stars_repo_name": "a/b",
                         "max_stars_repo_path": "src/main.c", "lang": "C"}),
             "{not json",
             json.dumps(["a list"]),
             json.dumps({"content": "x" * 3000, "max_stars_repo_name": "a/b", "max_stars_repo_path": "big.js"}),
             json.dumps({"content": 5, "max_stars_repo_name": "a/b", "max_stars_repo_path": "n.py"}),
             ""]
    path = tmp_path / "stack.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    items = list(ingest.read_source(ingest.Source("stack", str(path), "stack_jsonl"),
                                    ingest.IngestConfig(max_file_bytes=2000)))
    assert [getattr(i, "reason", "kept") for i in items] == [
        "kept", "ingest:malformed_jsonl", "ingest:malformed_jsonl", "ingest:too_large", "ingest:missing_field"]
    assert (items[0].repo_name, items[0].path, items[0].language) == ("a/b", "src/main.c", "C")


def test_text_and_math_sources(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "Hello world"}) + "\n" + json.dumps({"other": 1}) + "\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    (tmp_path / "doc.txt").write_text("plain text")
    texts = list(ingest.read_source(ingest.Source("t", str(tmp_path / "t.jsonl"), "jsonl", "text")))
    assert texts[0].kind == "text" and texts[1].reason == "ingest:missing_field"
    math = list(ingest.read_source(ingest.Source("m", str(tmp_path / "m.jsonl"), "jsonl", "math")))
    assert math[0].kind == "math" and math[0].text == "1+1?\n\n2"
    plain = list(ingest.read_source(ingest.Source("p", str(tmp_path / "doc.txt"), "plain", "text")))
    assert plain[0].text == "plain text"


def test_parquet_source(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet
    parquet.write_table(pyarrow.table({"text": ["a", "b", "c"]}), tmp_path / "x.parquet")
    items = list(ingest.read_source(ingest.Source("p", str(tmp_path / "x.parquet"), "parquet", "text")))
    assert [i.text for i in items] == ["a", "b", "c"]


def test_language_table_covers_the_common_languages():
    assert len(LANGUAGES) >= 92
    expected = {"x.py": "Python", "x.c": "C", "x.cpp": "C++", "X.java": "Java", "x.js": "JavaScript",
                "x.ts": "TypeScript", "x.go": "Go", "x.rs": "Rust", "Dockerfile": "Dockerfile",
                "Makefile": "Makefile", "x.rb": "Ruby", "x.php": "PHP", "x.cs": "C#", "x.swift": "Swift",
                "x.kt": "Kotlin", "x.scala": "Scala", "x.hs": "Haskell", "x.sql": "SQL", "x.sh": "Shell",
                "x.yaml": "YAML", "x.json": "JSON", "x.md": "Markdown", "CMakeLists.txt": "CMake"}
    assert {path: language_for_path(path) for path in expected} == expected


def test_stdlib_repositories():
    units = ingest.work_units(ingest.stdlib_source())
    names = {unit.repo_name for unit in units}
    assert {"json", "email", "asyncio"} <= names and "site-packages" not in names
    loose = [unit for unit in units if unit.loose_files]
    assert len(loose) == 1 and "os.py" in loose[0].loose_files
