"""Small real datasets in the FORMAT.md layout for the data tests: Python stdlib files, docs text, SFT chats."""

import json
import pathlib
import sysconfig

from qwencoder_jax.data import shards

STDLIB = pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(pattern="*.py", limit=40, max_chars=6000):
    files = sorted(STDLIB.glob(pattern))[:limit]
    return [(f.relative_to(STDLIB).as_posix(), f.read_text(encoding="utf-8")[:max_chars]) for f in files]


def write_code_files(directory, limit=40):
    examples = [{"id": f"stdlib:{path}", "source": "stdlib", "kind": "code_file", "text": text, "language": "python",
                 "repo_name": "cpython", "path": path} for path, text in stdlib_files(limit=limit)]
    shards.write_dataset(directory, "stdlib_code", "code_file", examples)
    return examples


def write_code_repos(directory):
    packages = ["email", "json", "http", "urllib", "xml/dom", "concurrent/futures"]
    examples = []
    for package in packages:
        files = stdlib_files(f"{package}/*.py", limit=6, max_chars=3000)
        examples.append({"id": f"repo:{package}", "kind": "code_repo", "repo_name": f"cpython/{package}",
                         "paths": [p for p, _ in files], "contents": [c for _, c in files]})
    shards.write_dataset(directory, "stdlib_repos", "code_repo", examples)
    return examples


def write_text(directory, kind="text", limit=30):
    # Docstrings of stdlib modules are real English prose.
    import ast
    examples = []
    for path, source in stdlib_files(limit=200, max_chars=200_000):
        try:
            doc = ast.get_docstring(ast.parse(source))
        except SyntaxError:
            continue
        if doc and len(doc) > 80:
            examples.append({"id": f"{kind}:{path}", "kind": kind, "text": doc, "language": "en"})
        if len(examples) == limit:
            break
    shards.write_dataset(directory, f"stdlib_{kind}", kind, examples)
    return examples


SFT_CHATS = [
    [{"role": "system", "content": "You are a helpful coding assistant."},
     {"role": "user", "content": "Write a function that reverses a string."},
     {"role": "assistant", "content": "def reverse(s: str) -> str:\n    return s[::-1]\n"}],
    [{"role": "user", "content": "What does `len([])` return?"},
     {"role": "assistant", "content": "It returns `0`: the list is empty."},
     {"role": "user", "content": "And `len('héllo')`?"},
     {"role": "assistant", "content": "5 — characters, not bytes!"}],
]


def write_sft(directory):
    examples = [{"id": f"sft:{i}", "kind": "sft", "messages": json.dumps(chat)} for i, chat in enumerate(SFT_CHATS)]
    shards.write_dataset(directory, "sft", "sft", examples, num_shards=1)
    return examples


def write_pretokenized(directory, name, lengths, first_id):
    """Documents of given lengths whose ids encode (document number, position): easy to trace through packing."""
    examples = []
    for number, length in enumerate(lengths):
        ids = [first_id + (number * 1000 + position) % 150_000 for position in range(length)]
        examples.append({"id": f"{name}:{number}", "kind": "text", "token_ids": ids})
    shards.write_dataset(directory, name, "text", examples)
    return examples
