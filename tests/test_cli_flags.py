"""One flag style (qwencoder_jax/cli_flags.py): every program defines snake_case flags only, its --help shows only
those, and the kebab-case spelling of a multi-word flag still parses."""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qwencoder_jax import cli_flags

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("qwencoder_jax", "qwencoder_apps", "data_pipelines", "launch", "benchmarks", "tests")
PACKAGES = ("qwencoder_jax", "qwencoder_apps", "data_pipelines")
KEBAB_FLAG = re.compile(r"(?<![\w-])--[a-z0-9]+(?:-[a-z0-9]+)+")


def sample_parser() -> cli_flags.ArgumentParser:
    parser = cli_flags.ArgumentParser(prog="sample")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--dry_run", action="store_true")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reuse_data", action="store_true")
    group.add_argument("--resume", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def test_a_kebab_alias_parses_as_its_snake_case_flag():
    args = sample_parser().parse_args(["--num-processes", "3", "--dry-run", "--reuse-data"])
    assert (args.num_processes, args.dry_run, args.reuse_data) == (3, True, True)
    assert sample_parser().parse_args(["--num-processes=4"]).num_processes == 4


def test_abbreviations_match_a_flag_once_and_the_command_after_dashes_is_left_alone():
    args = sample_parser().parse_args(["--num-proc", "2", "--dry", "--", "python", "-m", "x", "--dry-run"])
    assert (args.num_processes, args.dry_run) == (2, True)
    assert args.command == ["--", "python", "-m", "x", "--dry-run"]


def test_help_usage_and_errors_show_only_snake_case(capsys):
    parser = sample_parser()
    text = parser.format_help()
    assert "--num_processes" in text and "--reuse_data" in text and not KEBAB_FLAG.search(text)
    with pytest.raises(SystemExit):
        parser.parse_args(["--reuse-data", "--resume"])
    error = capsys.readouterr().err
    assert "argument --resume: not allowed with argument --reuse_data" in error


def test_subcommand_parsers_take_the_aliases_too():
    parser = cli_flags.ArgumentParser(prog="sample")
    sub = parser.add_subparsers(dest="command", required=True).add_parser("run")
    sub.add_argument("--max_chars", type=int)
    assert parser.parse_args(["run", "--max-chars", "7"]).max_chars == 7


def test_a_kebab_case_definition_is_refused():
    parser = cli_flags.ArgumentParser(prog="sample")
    parser.add_argument("--dry-run", action="store_true")
    with pytest.raises(ValueError, match="--dry-run is kebab-case; define it as --dry_run"):
        parser.parse_args([])


def python_files() -> list[Path]:
    return [p for source in SOURCES for p in sorted((ROOT / source).rglob("*.py")) if p != Path(__file__)]


def parser_calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "ArgumentParser"]


def test_every_parser_is_the_shared_one_and_defines_snake_case_flags():
    offenders = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        for call in parser_calls(tree):
            if ast.unparse(call.func) != "cli_flags.ArgumentParser":
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno} builds {ast.unparse(call.func)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and KEBAB_FLAG.fullmatch(arg.value):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} defines {arg.value}")
    assert offenders == []


def programs() -> list[list[str]]:
    """The argv (after `python`) of every program and subcommand whose parser is a cli_flags.ArgumentParser."""
    found = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        if not any(ast.unparse(call.func) == "cli_flags.ArgumentParser" for call in parser_calls(tree)):
            continue
        relative = path.relative_to(ROOT)
        if relative.parts[0] in PACKAGES:
            module = ".".join(relative.with_suffix("").parts)
            if '__name__ == "__main__"' not in path.read_text():  # the glue of a package's __main__.py
                module = module.rpartition(".")[0]
            prefix = ["-m", module.removesuffix(".__main__")]
        else:
            prefix = [str(relative)]
        found.append(prefix)
        found += [prefix + [name] for name in subcommands(tree)]
    return found


def subcommands(tree: ast.AST) -> list[str]:
    """Names given to `add_parser`: string literals, or the literal tuple a `for` loop hands it."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_parser":
            if isinstance(node.args[0], ast.Constant):
                names.append(node.args[0].value)
        elif isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple) and "add_parser" in ast.unparse(node):
            names += [element.value for element in node.iter.elts if isinstance(element, ast.Constant)]
    return names


PROGRAMS = programs()


def test_the_programs_are_found():
    assert ["-m", "data_pipelines", "run"] in PROGRAMS and ["launch/local.py"] in PROGRAMS
    assert len(PROGRAMS) >= 40, PROGRAMS


@pytest.mark.slow
@pytest.mark.parametrize("argv", PROGRAMS, ids=[" ".join(argv) for argv in PROGRAMS])
def test_every_program_help_shows_only_snake_case_flags(argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    options = result.stdout.split("options:", 1)[-1]  # the description may quote other tools' flags
    assert KEBAB_FLAG.findall(options) == []


def test_a_real_program_still_parses_its_old_kebab_flags(tmp_path):
    marker = tmp_path / "ran"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "launch/local.py", "--num-processes", "2", "--devices-per-process", "3",
                             "--dry-run", "--", "touch", str(marker)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2 and "device_count=3" in result.stdout and not marker.exists()
