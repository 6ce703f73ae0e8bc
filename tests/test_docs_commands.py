"""Every `python ...` command in the fenced shell blocks of README.md, launch/README.md and data_pipelines/README.md
names a module or script that exists, and every flag it uses is one that command's `--help` lists: the commands
are read from the markdown at test time, so the docs cannot drift from the code. (A real run of each is out of
reach here: full training, cloud launchers; the commands' behaviour is covered by their own tests.)"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "launch/README.md", "data_pipelines/README.md")
FENCE = re.compile(r"^```(?:bash|sh|shell|console)?[ \t]*\n(.*?)^```", re.S | re.M)


def documented_commands() -> list[tuple[str, list[str]]]:
    """(doc, words) for every line of a fenced shell block that runs python."""
    commands = []
    for doc in DOCS:
        path = ROOT / doc
        if not path.exists():
            continue
        for block in FENCE.findall(path.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ", 1)[0].strip().lstrip("$ ").strip()
                if not line.startswith("python"):
                    continue
                try:
                    words = shlex.split(line)
                except ValueError:
                    continue
                commands.append((doc, words))
    return commands


def program(words: list[str]) -> tuple[list[str], list[str]]:
    """(the argv prefix naming the program and its subcommand, the rest)."""
    if words[1] == "-m":
        prefix, rest = words[1:3], words[3:]
    else:
        prefix, rest = words[1:2], words[2:]
    if rest and not rest[0].startswith("-") and "=" not in rest[0] and not rest[0].endswith((".txt", ".py")):
        prefix, rest = prefix + rest[:1], rest[1:]  # a subcommand (data_pipelines run, ...)
    if "--" in rest:  # what follows `--` belongs to another program (launch/local.py -- python -m ...)
        rest = rest[:rest.index("--")]
    return prefix, rest


@lru_cache(maxsize=None)
def help_text(prefix: tuple[str, ...]) -> str:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, *prefix, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"`python {' '.join(prefix)} --help` failed:\n{result.stderr[-2000:]}"
    return result.stdout


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 5, COMMANDS


@pytest.mark.parametrize("doc, words", COMMANDS, ids=[" ".join(w[:5]) for _, w in COMMANDS])
def test_documented_command_exists_and_its_flags_are_known(doc, words):
    prefix, rest = program(words)
    text = help_text(tuple(prefix))
    for word in rest:
        if word.startswith("--") and not word.startswith("--gin."):
            flag = word.split("=", 1)[0]
            assert re.search(rf"{re.escape(flag)}\b", text), \
                f"{doc}: `{' '.join(words)}` uses {flag}, which `python {' '.join(prefix)} --help` does not list"
