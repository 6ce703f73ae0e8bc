"""The comparison: every variant's metrics.jsonl (and eval results, if any) -> one table (markdown, CSV, JSON) and
one figure.

Design notes: docs/ABLATIONS.md, section `qwencoder_apps/ablation/collect.py`.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

RUN_RECORD = "ablation_run.json"
EVAL_RESULTS = ("results.json", "eval/results.json")
BASE_COLUMNS = ["variant", "status", "steps", "final_loss", "min_loss", "tokens_per_second", "tokens",
                "wall_seconds"]


def read_metrics(workdir: str | Path) -> list[dict]:
    """The last record of each step, in step order ([] when the file is missing)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:  # a run killed mid-write leaves a partial last line
            if number == len(lines):
                continue
            raise ValueError(f"{path}:{number} is not JSON ({error}); the metrics file is damaged") from error
        by_step[int(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]


def flatten_numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as {"a/b": x}; lists and strings are skipped (they are not table cells)."""
    if isinstance(value, bool):
        return {prefix: float(value)} if prefix else {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)} if prefix else {}
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(flatten_numbers(item, f"{prefix}/{key}" if prefix else str(key)))
        return flat
    return {}


def read_eval(workdir: str | Path) -> dict[str, float]:
    for relative in EVAL_RESULTS:
        path = Path(workdir) / relative
        if path.is_file():
            return {f"eval/{key}": value for key, value in flatten_numbers(json.loads(path.read_text())).items()}
    return {}


def summarize(workdir: str | Path, name: str | None = None, tail: int = 5) -> dict[str, Any]:
    """One row: the variant's final metrics, run record and eval results."""
    workdir = Path(workdir)
    run = json.loads((workdir / RUN_RECORD).read_text()) if (workdir / RUN_RECORD).is_file() else {}
    records = read_metrics(workdir)
    row: dict[str, Any] = {"variant": name or workdir.name, "status": run.get("status", "unknown"),
                           "wall_seconds": run.get("wall_seconds")}
    if not records:
        row["status"] = run.get("status", "missing") if run.get("status") != "completed" else "no metrics"
        row.update(read_eval(workdir))
        return row
    last = records[-tail:]
    row["steps"] = records[-1]["step"]
    row["final_loss"] = statistics.fmean(r["loss"] for r in last)
    row["min_loss"] = min(r["loss"] for r in records)
    speeds = [r["tokens_per_second"] for r in records[1:] if "tokens_per_second" in r] or \
        [r["tokens_per_second"] for r in records if "tokens_per_second" in r]
    row["tokens_per_second"] = statistics.median(speeds) if speeds else None
    row["tokens"] = sum(r.get("tokens", 0) for r in records)
    for key in sorted({k for r in records for k in r if k.startswith("loss/")}):
        # A step that drew no token of a source logs no loss for it: average its last `tail` logged values.
        values = [r[key] for r in records if r.get(key) is not None and math.isfinite(r[key])][-tail:]
        row[key] = statistics.fmean(values) if values else None
    for key in sorted({k for r in records for k in r if k.startswith("tokens/")}):
        row[key] = sum(r.get(key) or 0 for r in records)  # the tokens each source actually contributed
    row.update(read_eval(workdir))
    return row


def collect(workdir: str | Path, variant_names: Sequence[str] | None = None, tail: int = 5) -> list[dict]:
    """Rows for the named variants (default: every subdirectory holding metrics or a run record)."""
    workdir = Path(workdir)
    if variant_names is None:
        variant_names = sorted(p.name for p in workdir.iterdir() if p.is_dir() and (
            (p / "metrics.jsonl").is_file() or (p / RUN_RECORD).is_file()))
    return [summarize(workdir / name, name, tail) for name in variant_names]


def columns_of(rows: Iterable[dict]) -> list[str]:
    rows = list(rows)
    extra = sorted({key for row in rows for key in row} - set(BASE_COLUMNS))
    losses = [k for k in extra if k.startswith("loss/")]
    tokens = [k for k in extra if k.startswith("tokens/")]
    return BASE_COLUMNS + losses + tokens + [k for k in extra if k not in losses and k not in tokens]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    columns = columns_of(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict], output_dir: str | Path, stem: str = "ablation") -> dict[str, Path]:
    """stem.md, stem.csv, stem.json in output_dir; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    columns = columns_of(rows)
    paths = {"markdown": output_dir / f"{stem}.md", "csv": output_dir / f"{stem}.csv",
             "json": output_dir / f"{stem}.json"}
    paths["markdown"].write_text(markdown_table(rows))
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{c: row.get(c) for c in columns} for row in rows])
    paths["json"].write_text(json.dumps(list(rows), indent=1) + "\n")
    return paths


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over `window` points (the first points average what exists)."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def plot(workdir: str | Path, rows: Sequence[dict], output: str | Path, title: str = "ablation") -> Path:
    """Left: each variant's training loss over steps (smoothed); right: final loss per source (or overall)."""
    # A bare Figure renders with Agg and leaves pyplot's backend alone (a notebook calling this keeps its
    # inline figures).
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.2))
    curves, bars = figure.subplots(1, 2)
    for row in rows:
        records = read_metrics(Path(workdir) / row["variant"])
        if records:
            steps = [r["step"] for r in records]
            window = max(1, len(records) // 10)
            curves.plot(steps, smooth([r["loss"] for r in records], window), label=row["variant"])
    curves.set_xlabel("step")
    curves.set_ylabel("training loss (trailing mean)")
    curves.set_title(f"{title}: training loss")
    if curves.get_legend_handles_labels()[0]:
        curves.legend(fontsize=8)
    sources = sorted({k for row in rows for k in row if k.startswith("loss/")})
    groups = sources or ["final_loss"]
    width = 0.8 / max(1, len(rows))
    for number, row in enumerate(rows):
        values = [row.get(group) if row.get(group) is not None else float("nan") for group in groups]
        bars.bar([i + number * width for i in range(len(groups))], values, width, label=row["variant"])
    bars.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(groups))])
    bars.set_xticklabels([g.removeprefix("loss/") for g in groups])
    bars.set_ylabel("final loss" + (" per source" if sources else ""))
    bars.set_title(f"{title}: final loss" + (" per source" if sources else ""))
    finite = [row.get(g) for row in rows for g in groups if isinstance(row.get(g), float) and math.isfinite(row[g])]
    if finite:  # losses of similar runs differ in the second decimal: do not start the axis at zero
        low, high = min(finite), max(finite)
        margin = max(0.05, (high - low) * 0.5)
        bars.set_ylim(low - margin, high + margin)
    bars.legend(fontsize=8)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    return output
