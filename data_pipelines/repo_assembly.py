"""Repository assembly for repo-level pretraining: the files of one repository in dependency order, as
`code_repo` records (FORMAT.md: parallel `paths` / `contents`).

Order: Python files whose imports resolve to other files of the repository come after those files
(topological order, ties broken by path so the result is stable); cycles are broken at the smallest path;
files of other languages follow in path order. A repository longer than max_chars is split into several
records, each a contiguous run of the order; a single file longer than max_chars is left out (counted).
"""

from __future__ import annotations

import ast
import dataclasses
import heapq
import os
import re
from typing import Iterable, Sequence

from data_pipelines import output
from data_pipelines.document import Counters, Document, Rejection, document_id, reject
from data_pipelines.filters import apply_code_filters
from data_pipelines.ingest import read_source


@dataclasses.dataclass(frozen=True)
class RepoAssemblyConfig:
    max_chars: int = 200_000  # about 55K tokens at 3.6 characters per token; a 32K-token window after FIM
    min_files: int = 1
    max_files: int = 10_000


def module_name(path: str) -> str | None:
    """a/b/c.py -> a.b.c; a/b/__init__.py -> a.b; the root __init__.py -> ""; None for non-Python files."""
    if not path.endswith((".py", ".pyi")):
        return None
    parts = path[: path.rindex(".")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


_IMPORT_LINE = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+import\s+([\w*, ]+)|import\s+([\w., ]+))", re.MULTILINE)


def imported_names(text: str, own_module: str, is_package: bool) -> list[list[str]]:
    """Per import statement, absolute dotted names in order of preference (relative imports resolved against
    the file's own module). `from pkg import mod` prefers pkg.mod and only falls back to pkg (its __init__):
    depending on the package for every submodule import would make most packages one big cycle."""
    names = []
    try:
        tree = ast.parse(text)
        statements = [(node.module or "", node.level, [a.name for a in node.names]) if isinstance(node, ast.ImportFrom)
                      else ("", -1, [a.name for a in node.names])
                      for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    except (SyntaxError, ValueError, RecursionError):  # Python 2 files and the like: fall back to a regex
        statements = []
        for match in _IMPORT_LINE.finditer(text):
            if match.group(1) is not None:
                module = match.group(1)
                level = len(module) - len(module.lstrip("."))
                statements.append((module.lstrip("."), level, [n.strip() for n in match.group(2).split(",")]))
            else:
                statements.append(("", -1, [n.strip().split(" ")[0] for n in match.group(3).split(",")]))
    package = own_module.split(".") if is_package else own_module.split(".")[:-1]
    for module, level, aliases in statements:
        if level == -1:
            names += [[alias] for alias in aliases if alias]
            continue
        base = package[: len(package) - (level - 1)] if level > 0 else []
        prefix = ".".join(base + ([module] if module else []))
        preferred = [f"{prefix}.{alias}" if prefix else alias for alias in aliases if alias != "*"]
        names.append([n for n in preferred + [prefix] if n])
    return [group for group in names if group]


def dependency_order(paths: Sequence[str], contents: Sequence[str], repo_name: str = "") -> list[int]:
    """Indices of the files in assembly order (dependencies first, ties by path)."""
    modules = {}
    for index, path in enumerate(paths):
        name = module_name(path)
        if name is not None:
            modules[name] = index
            if repo_name:  # the repository directory is the top-level package (site-packages/foo, stdlib json)
                modules[f"{repo_name}.{name}" if name else repo_name] = index
    # a repository such as site-packages/foo holds paths like "sub/x.py" for module "foo.sub.x": resolve both
    dependencies: dict[int, set[int]] = {i: set() for i in range(len(paths))}

    def resolve(name: str) -> int | None:
        target = modules.get(name)
        return target if target is not None else modules.get(name.split(".", 1)[1]) if "." in name else None

    for index, path in enumerate(paths):
        own = module_name(path)
        if own is None:
            continue
        own = f"{repo_name}.{own}" if repo_name and own else (own or repo_name)
        for group in imported_names(contents[index], own, path.endswith("__init__.py")):
            resolved = {t for t in map(resolve, group[:-1]) if t is not None and t != index}
            if not resolved:  # nothing preferred resolved: fall back to the last name (the module itself)
                resolved = {t for t in [resolve(group[-1])] if t is not None and t != index}
            dependencies[index] |= resolved
    dependents: dict[int, list[int]] = {i: [] for i in range(len(paths))}
    remaining = {i: len(deps) for i, deps in dependencies.items()}
    for index, deps in dependencies.items():
        for dep in deps:
            dependents[dep].append(index)
    python = [i for i in range(len(paths)) if module_name(paths[i]) is not None]
    others = sorted((i for i in range(len(paths)) if module_name(paths[i]) is None), key=lambda i: paths[i])
    ready = [(paths[i], i) for i in python if remaining[i] == 0]
    heapq.heapify(ready)
    order, placed = [], set()
    while len(order) < len(python):
        if not ready:  # a cycle: release its smallest path
            index = min((i for i in python if i not in placed), key=lambda i: paths[i])
            remaining[index] = 0
            heapq.heappush(ready, (paths[index], index))
        _, index = heapq.heappop(ready)
        if index in placed:
            continue
        placed.add(index)
        order.append(index)
        for dependent in dependents[index]:
            remaining[dependent] -= 1
            if remaining[dependent] == 0 and dependent not in placed:
                heapq.heappush(ready, (paths[dependent], dependent))
    return order + others


def assemble_repository(files: Sequence[Document], config: RepoAssemblyConfig = RepoAssemblyConfig()
                        ) -> tuple[list[Document], list[Rejection]]:
    """code_repo records for one repository's files, and the files left out (too long alone)."""
    files = sorted(files, key=lambda d: d.path)[: config.max_files]
    order = dependency_order([d.path for d in files], [d.text for d in files], files[0].repo_name if files else "")
    records, rejected, current, length = [], [], [], 0
    repo = files[0].repo_name if files else ""

    def flush():
        if len(current) >= config.min_files:
            part = len(records)
            records.append(Document(document_id(files[0].source, f"{repo}#part{part}"), files[0].source, "code_repo",
                                    language=files[current[0]].language, repo_name=repo,
                                    paths=tuple(files[i].path for i in current),
                                    contents=tuple(files[i].text for i in current)))

    for index in order:
        size = len(files[index].text)
        if size > config.max_chars:
            rejected.append(reject(files[index], "repo:file_longer_than_limit", f"{size} > {config.max_chars}"))
            continue
        if current and length + size > config.max_chars:
            flush()
            current, length = [], 0
        current.append(index)
        length += size
    if current:
        flush()
    return records, rejected


def assemble(documents: Iterable[Document], config: RepoAssemblyConfig = RepoAssemblyConfig()
             ) -> tuple[list[Document], list[Rejection]]:
    by_repo: dict[tuple[str, str], list[Document]] = {}
    for doc in documents:
        if doc.kind == "code_file":
            by_repo.setdefault((doc.source, doc.repo_name), []).append(doc)
    records, rejected = [], []
    for key in sorted(by_repo):
        repo_records, repo_rejected = assemble_repository(by_repo[key], config)
        records += repo_records
        rejected += repo_rejected
    return records, rejected


def assemble_to_shards(sources, output_directory: str, config: RepoAssemblyConfig = RepoAssemblyConfig(),
                       num_shards: int = 2) -> dict:
    """Ingest + rule filters + assembly -> code_repo shards and manifest. Counts are in files: read files are
    kept (inside some record) or rejected with a reason."""
    counters, documents, rejections = Counters(), [], []
    for source in sources:
        for item in read_source(source):
            item = item if isinstance(item, Rejection) else apply_code_filters(item)
            (rejections if isinstance(item, Rejection) else documents).append(item)
    records, too_long = assemble(documents, config)
    rejections += too_long
    left_out = {r.id for r in too_long}
    for rejection in rejections:
        counters.count_rejection(rejection)
    for doc in documents:
        if doc.id not in left_out:
            counters.count_kept(doc)
    os.makedirs(output_directory, exist_ok=True)
    shards = [[r for r in records if output.shard_of(r.id, num_shards) == i] for i in range(num_shards)]
    entries = [output.write_shard(output_directory, "train", i, num_shards, shard) for i, shard in enumerate(shards)]
    counts = counters.as_dict()
    manifest = output.write_manifest(output_directory, os.path.basename(output_directory.rstrip("/")), "code_repo",
                                     ["ingest", "rule_filter", "repo_assembly"],
                                     {"repo_assembly": dataclasses.asdict(config)},
                                     {"train": entries}, counts, sum(sum(map(len, r.contents)) for r in records),
                                     expected_records=len(records))
    return manifest
