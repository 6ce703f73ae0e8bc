"""Validation by execution (report section 4.1, "A multilingual sandbox for code verification").

Design notes: docs/DATA.md, section `data_pipelines/sft/execution.py`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from data_pipelines.sft.tally import Problem, Tally
from qwencoder_jax.eval import sandbox  # the bubblewrap sandbox: standard library only

COMPILE_FAILED_STATUS = 97


@dataclasses.dataclass(frozen=True)
class Toolchain:
    language: str
    file_name: str
    compile: str  # shell command; for interpreted languages a syntax check (static checking, as the report does)
    execute: str
    fence_names: tuple[str, ...]  # ```name code-block tags taken as this language
    memory_bytes: int = 2 << 30
    max_processes: int = 64
    setup: str = ""  # environment for the toolchain: caches inside the working directory


TOOLCHAINS: dict[str, Toolchain] = {t.language: t for t in (
    Toolchain("Python", "main.py", "python3 -m py_compile main.py", "python3 main.py", ("python", "py", "python3")),
    Toolchain("JavaScript", "main.js", "node --check main.js", "node main.js", ("javascript", "js", "node")),
    Toolchain("Go", "main.go", "go build -o prog main.go", "./prog", ("go", "golang"), memory_bytes=16 << 30,
              max_processes=512, setup='export GOCACHE="$PWD/.cache/go-build" GOPATH="$PWD/go" GO111MODULE=off '
                                      'GOTOOLCHAIN=local GOFLAGS=-buildvcs=false'),
    Toolchain("Rust", "main.rs", "rustc --edition 2021 -o prog main.rs", "./prog", ("rust", "rs"),
              memory_bytes=8 << 30, max_processes=256),
    Toolchain("Java", "Main.java", "javac -J-Xmx512m Main.java", "java -Xmx256m -Xss8m Main", ("java",),
              memory_bytes=16 << 30, max_processes=512),
    Toolchain("C", "main.c", "gcc -O1 -std=c11 -o prog main.c -lm", "./prog", ("c",)),
    Toolchain("C++", "main.cpp", "g++ -O1 -std=c++17 -o prog main.cpp", "./prog", ("cpp", "c++", "cxx")),
    Toolchain("Shell", "main.sh", "bash -n main.sh", "bash main.sh", ("bash", "sh", "shell")),
)}


# One program per language that prints and exits 0: toolchain checks (tests) and throughput (benchmarks).
HELLO_WORLD = {
    "Python": 'print("hello")',
    "JavaScript": 'console.log("hello")',
    "Go": 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello") }\n',
    "Rust": 'fn main() { println!("hello"); }\n',
    "Java": 'public class Main { public static void main(String[] a) { System.out.println("hello"); } }\n',
    "C": '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n',
    "C++": '#include <iostream>\nint main() { std::cout << "hello" << std::endl; }\n',
    "Shell": "echo hello",
}


def script_for(toolchain: Toolchain) -> str:
    lines = ["set -u"]
    if toolchain.setup:
        lines.append(toolchain.setup)
    if toolchain.compile:
        lines.append(f"{toolchain.compile} 1>&2 || exit {COMPILE_FAILED_STATUS}")
    lines.append(f"exec {toolchain.execute}")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str  # "passed" or the rejection reason
    detail: str  # the compiler's or the program's stderr (cut)
    wall_seconds: float


def _outcome(result) -> Outcome:
    detail = (result.stderr or result.stdout)[-2000:]
    if result.status == "passed":
        return Outcome(True, "passed", "", result.wall_seconds)
    if result.status == "failed" and result.returncode == COMPILE_FAILED_STATUS:
        return Outcome(False, "compile_error", detail, result.wall_seconds)
    if result.status == "failed":
        return Outcome(False, "test_failed", detail, result.wall_seconds)
    return Outcome(False, result.status, detail, result.wall_seconds)  # timeout, killed


def job_for(language: str, program: str, wall_seconds: float = 60.0, cpu_seconds: float = 60.0,
            unsandboxed: bool = False) -> dict:
    """The keyword arguments of sandbox.run for one program (compile + run)."""
    if language not in TOOLCHAINS:
        raise ValueError(f"no toolchain for {language!r}; supported: {sorted(TOOLCHAINS)}")
    toolchain = TOOLCHAINS[language]
    limits = sandbox.Limits(cpu_seconds=cpu_seconds, wall_seconds=wall_seconds, memory_bytes=toolchain.memory_bytes,
                            max_processes=toolchain.max_processes)
    return {"argv": ["/bin/sh", "run.sh"], "files": {toolchain.file_name: program, "run.sh": script_for(toolchain)},
            "limits": limits, "unsandboxed": unsandboxed}


def run_program(language: str, program: str, **options) -> Outcome:
    return _outcome(sandbox.run(**job_for(language, program, **options)))


def run_programs(pairs: Sequence[tuple[str, str]], workers: int = 2, **options) -> list[Outcome]:
    results = sandbox.run_many([job_for(language, program, **options) for language, program in pairs], workers)
    return [_outcome(result) for result in results]


_FENCE = re.compile(r"```([A-Za-z0-9_+#-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str, language: str) -> str | None:
    """The longest fenced code block tagged with the language (or untagged), else None."""
    names = TOOLCHAINS[language].fence_names if language in TOOLCHAINS else (language.lower(),)
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in names or not tag]
    return max(blocks, key=len) if blocks else None


def program_of(record: Mapping) -> tuple[str, str] | tuple[None, str]:
    """(language, program) of a validation record, or (None, reason).

    A record is a conversation with `language` and `tests` keys: the program is the code of the last assistant
    turn followed by the tests (which, for compiled languages, hold the entry point: main, class Main)."""
    language = record.get("language")
    if language not in TOOLCHAINS:
        return None, "unsupported_language"
    if not isinstance(record.get("tests"), str) or not record["tests"].strip():
        return None, "no_tests"
    answers = [m["content"] for m in record.get("messages", []) if m.get("role") == "assistant"]
    code = extract_code(answers[-1], language) if answers else None
    if code is None:
        return None, "no_code"
    return language, code.rstrip() + "\n\n" + record["tests"].strip() + "\n"


def validate(records: Sequence[Mapping], tally: Tally, workers: int = 2, **options) -> list[dict]:
    """The records whose code passes its tests; each other record is counted as rejected with its reason.
    Kept records gain `execution: {"wall_seconds": ...}`."""
    runnable, kept = [], []
    for index, record in enumerate(records):
        language, program = program_of(record)
        if language is None:
            tally.reject(Problem(index + 1, "execution:" + program, str(record.get("id", ""))))
        else:
            runnable.append((index, record, language, program))
    outcomes = run_programs([(language, program) for _, _, language, program in runnable], workers, **options)
    for (index, record, _, _), outcome in zip(runnable, outcomes):
        if outcome.passed:
            tally.keep()
            kept.append(dict(record) | {"execution": {"wall_seconds": round(outcome.wall_seconds, 3)}})
        else:
            tally.reject(Problem(index + 1, "execution:" + outcome.reason, outcome.detail[:300]))
    return kept
