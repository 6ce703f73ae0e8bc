"""Imports inside functions are the exception (issue 19): each one says why in a comment, on its own line, on
another line of the same group of imports, or on the line just above the group."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("qwencoder_jax", "qwencoder_apps", "data_pipelines", "launch", "benchmarks")


def function_level_imports(path: Path) -> list[ast.stmt]:
    found = {}
    for function in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found[node.lineno] = node
    return [found[line] for line in sorted(found)]


def explained(lines: list[str], node: ast.stmt) -> bool:
    """A comment on a line of the group (imports and blank lines around this one), or just above the group."""
    is_group_line = lambda text: not text.strip() or text.strip().startswith(("import ", "from "))  # noqa: E731
    first, last = node.lineno - 1, node.end_lineno - 1
    while first > 0 and is_group_line(lines[first - 1]):
        first -= 1
    while last + 1 < len(lines) and is_group_line(lines[last + 1]) and lines[last + 1].strip():
        last += 1
    above = lines[first - 1].strip() if first > 0 else ""
    return any("#" in line for line in lines[first:last + 1]) or above.startswith("#") or "  # " in above


def test_every_function_level_import_says_why():
    unexplained = []
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            lines = path.read_text().splitlines()
            unexplained += [f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
                            for node in function_level_imports(path) if not explained(lines, node)]
    assert unexplained == []


def test_the_check_finds_an_import_without_a_reason(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text("def f():\n    x = 1\n    import json\n\n    return json\n\n\ndef g():\n"
                    "    # tomllib only for config files\n    import tomllib\n    return tomllib\n")
    lines = path.read_text().splitlines()
    assert [explained(lines, node) for node in function_level_imports(path)] == [False, True]
