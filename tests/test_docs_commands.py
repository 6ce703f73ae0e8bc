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
SHELL_FENCES = ("```", "```bash", "```sh", "```shell", "```console")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(opening fence, body) of every fenced block, read in order (a closing fence never opens the next block)."""
    blocks, opening, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if opening is None:
                opening, body = line.strip(), []
            else:
                blocks.append((opening, "\n".join(body) + "\n"))
                opening = None
        elif opening is not None:
            body.append(line)
    return blocks


def documented_commands() -> list[tuple[str, list[str]]]:
    """(doc, words) for every line of a fenced shell block that runs python."""
    commands = []
    for doc in DOCS:
        path = ROOT / doc
        if not path.exists():
            continue
        for fence, block in fenced_blocks(path.read_text()):
            if fence not in SHELL_FENCES:
                continue
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
    for word in (w.strip("[]|") for w in rest):  # `[--size demo|quick] [--a | --b]` optional-flag notation
        if word.startswith("--") and not word.startswith("--gin."):
            flag = word.split("=", 1)[0]
            assert re.search(rf"{re.escape(flag)}\b", text), \
                f"{doc}: `{' '.join(words)}` uses {flag}, which `python {' '.join(prefix)} --help` does not list"


DRY_RUNS = [(doc, words) for doc, words in COMMANDS if "--dry_run" in words and "..." not in words]


def test_the_docs_show_dry_runs():
    assert any(words[1] == "launch/tpu_vm.py" for _, words in DRY_RUNS), DRY_RUNS


@pytest.mark.parametrize("doc, words", DRY_RUNS, ids=[" ".join(w[:3]) for _, w in DRY_RUNS])
def test_documented_dry_run_runs_as_written(doc, words):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{doc}: `{' '.join(words)}` failed:\n{result.stderr[-2000:]}"
