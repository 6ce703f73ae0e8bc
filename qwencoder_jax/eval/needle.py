"""Needle in code: can the model find one small function hidden at a chosen depth of a long code context?

Haystack: real Python source, the standard library's modules (`sysconfig`'s stdlib directory, top-level *.py
files in sorted order), each introduced by a `# file: NAME` line and cut on line boundaries to a token budget.
Needle: `def needle_<8 hex>():\n    return <6-digit int>\n`, name and value drawn from a seeded RNG per cell, inserted
at the line boundary nearest to `depth` of the haystack (0 = first, 1 = last). The prompt ends with
`assert needle_<name>() == ` and the answer is correct if the completion's first line starts with the value.
Accuracy per (context length, depth) cell is drawn as a heat map.
"""

from __future__ import annotations

import os
import random
import re
import sysconfig
from typing import Any, Sequence

from qwencoder_jax.eval.options import EvalOptions, this_process

STOP = ("\n",)
ANSWER_TOKENS = 16


def stdlib_files() -> list[str]:
    directory = sysconfig.get_paths()["stdlib"]
    files = sorted(os.path.join(directory, name) for name in os.listdir(directory)
                   if name.endswith(".py") and not name.startswith(("test", "_")))
    if len(files) < 20:
        raise FileNotFoundError(f"{directory} holds {len(files)} Python modules; the needle haystack needs the "
                                "standard library's source (a Python installed without .py files will not do)")
    return files


def needle_of(rng: random.Random) -> tuple[str, int, str]:
    name = f"needle_{rng.getrandbits(32):08x}"
    value = rng.randrange(100_000, 1_000_000)
    return name, value, f"def {name}():\n    return {value}\n"


def build_case(tokenizer, context_tokens: int, depth: float, trial: int, seed: int = 0,
               files: Sequence[str] | None = None) -> dict:
    """One prompt of about `context_tokens` tokens with the needle at `depth`."""
    rng = random.Random(f"needle-{seed}-{context_tokens}-{depth}-{trial}")
    name, value, needle = needle_of(rng)
    question = f"\n\nassert {name}() == "
    budget = context_tokens - len(tokenizer.encode("\n" + needle + "\n" + question))
    if budget < 16:
        raise ValueError(f"needle context of {context_tokens} tokens leaves no room for a haystack; use >= 64")
    files = list(files or stdlib_files())
    start = rng.randrange(len(files))  # each trial reads the library from a different module onwards
    lines: list[str] = []
    used = 0
    for path in files[start:] + files[:start]:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = f"# file: {os.path.basename(path)}\n" + handle.read()
        for line in text.splitlines(keepends=True):
            cost = len(tokenizer.encode(line))
            if used + cost > budget:
                break
            lines.append(line)
            used += cost
        else:
            continue
        break
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    position = round(depth * len(lines))
    hidden = lines[:position] + ["\n", needle, "\n"] + lines[position:]
    prompt = "".join(hidden).rstrip("\n") + question
    return {"context_tokens": context_tokens, "depth": depth, "trial": trial, "name": name, "value": value,
            "prompt": prompt, "prompt_tokens": len(tokenizer.encode(prompt))}


def correct(completion: str, value: int) -> bool:
    return re.match(rf"\s*{value}(?!\d)", completion.split("\n", 1)[0]) is not None


def cells(options: EvalOptions) -> list[tuple[int, float, int]]:
    return [(length, depth, trial) for length in options.needle_context_tokens for depth in options.needle_depths
            for trial in range(options.needle_trials)]


def run(generator, options: EvalOptions, process_index: int = 0, process_count: int = 1) -> list[dict]:
    # eval.generate loads jax: only processes that generate need it
    from qwencoder_jax.eval.generate import SamplingConfig

    files = stdlib_files()
    records = []
    for index, (length, depth, trial) in this_process(cells(options), process_index, process_count):
        case = build_case(generator.tokenizer, length, depth, trial, options.seed, files)
        sampling = SamplingConfig(max_new_tokens=ANSWER_TOKENS, temperature=0.0, stop=STOP, seed=options.seed)
        completion = generator.generate([case["prompt"]], sampling)[0]
        records.append({"index": index, "context_tokens": length, "depth": depth, "trial": trial,
                        "prompt_tokens": case["prompt_tokens"], "expected": case["value"],
                        "completion": completion, "correct": correct(completion, case["value"])})
    return records


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    if not records:
        raise ValueError("needle summary needs at least one scored case")
    grid: dict[tuple[int, float], list[bool]] = {}
    for record in records:
        grid.setdefault((record["context_tokens"], record["depth"]), []).append(record["correct"])
    return {"cases": len(records), "accuracy": sum(r["correct"] for r in records) / len(records),
            "cells": [{"context_tokens": length, "depth": depth, "accuracy": sum(hits) / len(hits), "cases": len(hits)}
                      for (length, depth), hits in sorted(grid.items())]}


def plot(metrics: dict, path: str) -> str:
    """Heat map (depth rows x context-length columns) of accuracy, saved as PNG."""
    # matplotlib only for the figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend

    lengths = sorted({cell["context_tokens"] for cell in metrics["cells"]})
    depths = sorted({cell["depth"] for cell in metrics["cells"]})
    grid = [[float("nan")] * len(lengths) for _ in depths]
    for cell in metrics["cells"]:
        grid[depths.index(cell["depth"])][lengths.index(cell["context_tokens"])] = cell["accuracy"]
    figure, axes = plt.subplots(figsize=(1.2 * len(lengths) + 2.5, 0.6 * len(depths) + 1.8))
    image = axes.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    axes.set_xticks(range(len(lengths)), [str(length) for length in lengths])
    axes.set_yticks(range(len(depths)), [f"{depth:.0%}" for depth in depths])
    axes.set_xlabel("context length (tokens)")
    axes.set_ylabel("needle depth")
    axes.set_title("needle in code: accuracy")
    for row, depth in enumerate(depths):
        for column, length in enumerate(lengths):
            if grid[row][column] == grid[row][column]:
                axes.text(column, row, f"{grid[row][column]:.2f}", ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
