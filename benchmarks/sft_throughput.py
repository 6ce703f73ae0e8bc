"""SFT data tools: language-ID accuracy per language on held-out real files, AST-FIM samples/s against plain
character-level FIM (qwencoder_jax/data/fim.py) on the same files, and sandboxed runs/s per language against the
same compile-and-run script in a plain subprocess, all measured in this run.

    python benchmarks/sft_throughput.py [--files_per_language 300] [--runs 3] [--skip_langid]
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import subprocess
import sysconfig
import tempfile
import time
import zipfile

from data_pipelines.sft import ast_fim, code_langid, execution
from qwencoder_jax import cli_flags
from qwencoder_jax.data import fim


def language_id(files_per_language: int) -> None:
    config = code_langid.LangIdConfig(files_per_language=files_per_language)
    start = time.perf_counter()
    data = code_langid.build_dataset(config)
    built = time.perf_counter() - start
    start = time.perf_counter()
    identifier = code_langid.CodeLanguageIdentifier.train(data.train, config)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = code_langid.accuracy_per_language(identifier, data.held_out)
    predicted = time.perf_counter() - start
    counts = {}
    for language, _ in data.held_out:
        counts[language] = counts.get(language, 0) + 1
    majority = max(counts.values()) / len(data.held_out)
    print(f"\n## language ID: {len(data.files)} languages, {len(data.train)} training snippets from "
          f"{sum(t for t, _ in data.files.values())} files; held out {len(data.held_out)} snippets from "
          f"{sum(h for _, h in data.files.values())} other files")
    print(f"(corpus {built:.0f} s, training {trained:.1f} s, prediction {len(data.held_out) / predicted:,.0f} "
          f"snippets/s)")
    print(f"{'language':20s} {'accuracy':>8s} {'snippets':>8s}  train/held-out files")
    for language, (value, count) in accuracy.items():
        files = data.files.get(language, ("", ""))
        print(f"{language:20s} {value:8.3f} {count:8d}  {files[0]}/{files[1]}")
    print(f"reference (majority class share): {majority:.3f}; accuracy / reference = "
          f"{accuracy['all'][0] / majority:.1f}x")


def real_files() -> list[tuple[str, str, str]]:
    """(key, language, text) of real files for the AST-FIM measurement (up to 150 per language)."""
    rng = random.Random(0)
    go_src = (sorted(glob.glob("/usr/share/go-*/src")) or [""])[0]
    roots = {"Python": (sysconfig.get_paths()["stdlib"], ".py"), "Go": (go_src, ".go"),
             "JavaScript": ("/usr/lib/node_modules" if os.path.isdir("/usr/lib/node_modules") else "/usr/share/nodejs",
                            ".js"),
             "Rust": ("/usr/lib/rustlib/src", ".rs"), "C": (go_src, ".c")}
    out = []
    for language, (root, extension) in roots.items():
        paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root, followlinks=True) for f in fs
                       if f.endswith(extension))
        for path in rng.sample(paths, min(150, len(paths))):
            with open(path, encoding="utf-8", errors="replace") as handle:
                out.append((path, language, handle.read()))
    for archive_path in sorted(glob.glob("/usr/lib/jvm/*/lib/src.zip"))[:1]:
        with zipfile.ZipFile(archive_path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".java")]
            for name in rng.sample(names, min(150, len(names))):
                out.append((name, "Java", archive.read(name).decode("utf-8", "replace")))
    limit = ast_fim.AstFimConfig().max_file_chars
    return [item for item in out if len(item[2]) <= limit]


def fim_throughput(repeats: int = 3) -> None:
    files = real_files()
    characters = sum(len(text) for _, _, text in files)
    best_ast, best_char, made = float("inf"), float("inf"), 0
    config = fim.FimConfig(fim_rate=1.0)
    for _ in range(repeats):
        start = time.perf_counter()
        made = sum(ast_fim.make_sample(text, language, key)[0] is not None for key, language, text in files)
        best_ast = min(best_ast, time.perf_counter() - start)
        start = time.perf_counter()
        for key, _, text in files:
            fim.fim_text(fim.plan_fim(text, key, config))
        best_char = min(best_char, time.perf_counter() - start)
    print(f"\n## FIM sample construction: {len(files)} real files ({characters / 1e6:.1f} M characters), "
          f"best of {repeats}")
    print(f"AST-FIM (tree-sitter parse + node choice): {len(files) / best_ast:,.0f} files/s "
          f"({made} samples; the rest rejected: parse errors, no eligible node)")
    print(f"reference, character-level FIM (fim.py):  {len(files) / best_char:,.0f} files/s")
    print(f"AST-FIM / character FIM = {best_char / best_ast:.3f}x")


def plain_run(language: str, program: str) -> float:
    """The same compile-and-run script in a plain subprocess (no sandbox): the reference."""
    toolchain = execution.TOOLCHAINS[language]
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, toolchain.file_name), "w") as handle:
            handle.write(program)
        with open(os.path.join(directory, "run.sh"), "w") as handle:
            handle.write(execution.script_for(toolchain))
        start = time.perf_counter()
        result = subprocess.run(["/bin/sh", "run.sh"], cwd=directory, capture_output=True,
                                env={"PATH": "/usr/bin:/bin", "HOME": directory, "LANG": "C.UTF-8"}, timeout=120)
        elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{language} hello world failed outside the sandbox: {result.stderr[-300:]!r}")
    return elapsed


def sandbox_throughput(runs: int) -> None:
    print(f"\n## sandboxed compile + run of hello world, {runs} runs each, one at a time")
    print(f"{'language':12s} {'sandbox runs/s':>14s} {'plain runs/s':>13s} {'sandbox / plain':>16s}")
    for language, program in execution.HELLO_WORLD.items():
        sandboxed, plain = [], []
        for _ in range(runs):
            outcome = execution.run_program(language, program)
            if not outcome.passed:
                raise RuntimeError(f"{language} hello world failed in the sandbox: {outcome}")
            sandboxed.append(outcome.wall_seconds)
            plain.append(plain_run(language, program))
        sandbox_rate, plain_rate = runs / sum(sandboxed), runs / sum(plain)
        print(f"{language:12s} {sandbox_rate:14.2f} {plain_rate:13.2f} {sandbox_rate / plain_rate:15.2f}x")


def main() -> None:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files_per_language", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip_langid", action="store_true")
    args = parser.parse_args()
    print(f"# SFT data tools throughput ({os.cpu_count()} CPUs)")
    if not args.skip_langid:
        language_id(args.files_per_language)
    fim_throughput()
    sandbox_throughput(args.runs)


if __name__ == "__main__":
    main()
