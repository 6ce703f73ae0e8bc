"""Instruction-response pairs built without a model: documented functions of the standard library.

For each top-level function (or method) with a docstring of some substance, the instruction gives its signature
and its docstring and asks for the implementation; the response is the function's source. Written as ChatML JSONL
(`{"id", "messages": [system, user, assistant]}`), the input of the recipe's `sft` dataset, which then goes through
data_pipelines' decontamination (HumanEval) and dedup like every other source.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
import textwrap
from pathlib import Path
from typing import Iterator

SYSTEM = "You are a helpful coding assistant. Answer with Python code."
SKIPPED_PACKAGES = ("test", "idlelib", "turtledemo", "site-packages", "lib2to3", "__pycache__")


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield node
        elif isinstance(node, ast.ClassDef):
            yield from (child for child in node.body if isinstance(child, ast.FunctionDef))


def pair_for_function(node: ast.FunctionDef, lines: list[str], *, min_docstring_chars: int = 60,
                      max_lines: int = 40) -> dict | None:
    """The ChatML conversation for one function (`lines`: its module's source lines, ends kept), or None when it
    does not make a useful pair."""
    docstring = ast.get_docstring(node)
    if not docstring or len(docstring) < min_docstring_chars or node.name.startswith("_"):
        return None
    if node.end_lineno - node.lineno + 1 > max_lines or len(node.body) < 2:
        return None  # a body that is only the docstring (an abstract stub) teaches nothing
    # Slicing the lines once split, not ast.get_source_segment: that re-splits the whole module per call.
    code = textwrap.dedent("".join(lines[node.lineno - 1:node.end_lineno])).rstrip("\n")
    signature = f"def {node.name}({ast.unparse(node.args)})" + (f" -> {ast.unparse(node.returns)}"
                                                                 if node.returns else "")
    instruction = (f"Write a Python function `{signature}`.\n\nWhat it must do, in the words of its "
                   f"documentation:\n\n{docstring}")
    response = f"```python\n{code}\n```"
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": instruction},
                         {"role": "assistant", "content": response}]}


def stdlib_pairs(max_pairs: int) -> Iterator[dict]:
    """Pairs from the standard library's modules, in path order (deterministic), at most `max_pairs`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    produced = 0
    for directory, dirs, files in os.walk(root):
        relative_directory = Path(directory).relative_to(root)
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_PACKAGES and not (relative_directory == Path(".")
                                                                              and d.startswith("_")))
        for file_name in sorted(f for f in files if f.endswith(".py")):
            path = Path(directory) / file_name
            try:
                source = path.read_text(encoding="utf-8")
                tree = ast.parse(source)
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few stdlib files are deliberately broken (bad-syntax fixtures)
            lines = source.splitlines(keepends=True)
            for node in _functions(tree):
                pair = pair_for_function(node, lines)
                if pair is None:
                    continue
                yield {"id": f"{path.relative_to(root).as_posix()}:{node.lineno}:{node.name}", **pair}
                produced += 1
                if produced == max_pairs:
                    return


def write_sft_jsonl(path: str | os.PathLike, max_pairs: int) -> int:
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        for pair in stdlib_pairs(max_pairs):
            handle.write(json.dumps(pair, ensure_ascii=False) + "\n")
            written += 1
    if written == 0:
        raise ValueError("no documented standard-library function was found: is the standard library installed?")
    return written
