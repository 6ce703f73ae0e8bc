"""Repository assembly: dependency-aware order where Python imports resolve, stable path order otherwise,
length limits, and code_repo shards that hold every kept file."""

import json

from data_pipelines.document import Document
from data_pipelines.ingest import Source
from data_pipelines.output import read_tfrecord
from data_pipelines.repo_assembly import (RepoAssemblyConfig, assemble, assemble_repository, assemble_to_shards,
                                          dependency_order, imported_names)


def _file(path, text, repo="proj"):
    return Document(f"{repo}/{path}", "test", "code_file", text, "Python" if path.endswith(".py") else "Text",
                    repo, path)


FILES = {
    "proj/__init__.py": "from .api import run\n",
    "proj/api.py": "from proj.core import engine\nfrom . import util\n",
    "proj/core/__init__.py": "",
    "proj/core/engine.py": "import proj.util\nimport os\n",
    "proj/util.py": "import json\n",
    "README.md": "# proj\n",
    "setup.py": "import setuptools\n",
    "tests/test_api.py": "from proj.api import run\n",
}


def test_dependencies_come_first_with_stable_ties():
    paths = list(FILES)
    order = [paths[i] for i in dependency_order(paths, list(FILES.values()))]
    position = {path: order.index(path) for path in paths}
    assert position["proj/util.py"] < position["proj/core/engine.py"] < position["proj/api.py"]
    assert position["proj/api.py"] < position["proj/__init__.py"] and position["proj/api.py"] < position[
        "tests/test_api.py"]
    assert order[-1] == "README.md"  # non-Python files follow, by path
    reversed_input = list(reversed(paths))
    assert [reversed_input[i] for i in dependency_order(reversed_input, [FILES[p] for p in reversed_input])] == order


def test_cycles_are_broken_deterministically():
    paths, contents = ["b.py", "a.py", "c.py"], ["import a\n", "import b\n", "import a\n"]
    assert [paths[i] for i in dependency_order(paths, contents)] == ["a.py", "b.py", "c.py"]


def test_relative_imports_and_python2_fallback():
    assert imported_names("from ..x import y\n", "p.q.r", False) == [["p.x.y", "p.x"]]
    assert imported_names("print 'py2'\nimport os, sys\n", "m", False) == [["os"], ["sys"]]


def test_length_limit_splits_and_drops_oversized_files():
    files = [_file(f"m{i}.py", "x = 1\n" * 50) for i in range(6)] + [_file("big.py", "y = 2\n" * 500)]
    records, rejected = assemble_repository(files, RepoAssemblyConfig(max_chars=700))
    assert [len(r.paths) for r in records] == [2, 2, 2]
    assert all(sum(map(len, r.contents)) <= 700 for r in records)
    assert [r.reason for r in rejected] == ["repo:file_longer_than_limit"]
    assert len({r.id for r in records}) == 3 and all(r.kind == "code_repo" for r in records)


def test_assemble_groups_by_repository():
    docs = [_file(path, text) for path, text in FILES.items()] + [_file("x.py", "", repo="other")]
    records, _ = assemble(docs)
    assert sorted(r.repo_name for r in records) == ["other", "proj"]
    assert sorted(next(r for r in records if r.repo_name == "proj").paths) == sorted(FILES)


def test_assemble_to_shards(tmp_path):
    root = tmp_path / "proj"
    for path, text in FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text + "# padding so files pass the size rule\n")
    manifest = assemble_to_shards([Source("local", str(root), "repository")], str(tmp_path / "out"),
                                  num_shards=2)
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + sum(counts["rejected"].values()) == len(FILES)
    assert manifest["kind"] == "code_repo" and manifest["splits"]["train"]["records"] == 1
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    shard = next(s for s in on_disk["splits"]["train"]["shards"] if s["records"])
    raw = list(read_tfrecord(str(tmp_path / "out" / shard["file"])))
    assert len(raw) == 1 and b"proj/util.py" in raw[0] and b"code_repo" in raw[0]
