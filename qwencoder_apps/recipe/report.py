"""Phase 5: the final report, printed as plain tables and written as RUN/report.md (markdown tables)."""

from __future__ import annotations

from pathlib import Path

from qwencoder_apps.recipe import data, evaluate, mixtures, real_model, stages
from qwencoder_apps.recipe.markdown import markdown_table


def text_table(rows: list[list], header: list[str]) -> str:
    """A plain text table; every column but the first two is right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("-" * len(lines[0]))
    for row in cells:
        lines.append("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip())
    return "\n".join(lines)


def sections(state: dict) -> list[tuple[str, list[str], list[list]]]:
    """(title, header, rows) of every table the report holds, from the run's state (demo.json)."""
    run_dir = Path(state["run_dir"])
    out = [("Phases", ["phase", "status", "time"],
            [[name, phase.get("status", "-"), f"{phase.get('seconds', 0):.0f}s"]
             for name, phase in state.get("phases", {}).items()])]
    if state.get("data"):
        out.append(("Data (data_pipelines: kept / rejected with reasons; the last shard held out)",
                    data.DATA_HEADER, data.as_rows(state["data"])))
    if state.get("mixtures"):
        out.append(("Mixtures (record rates as registered for token shares; a record longer than a row gives several rows)",
                    mixtures.MIXTURE_HEADER,
                    mixtures.as_rows(state["mixtures"])))
    if state.get("stages"):
        out.append(("Training (loss: mean of the first / last 5 logged steps)", stages.STAGE_HEADER,
                    stages.as_rows(state["stages"])))
    if state.get("evaluation"):
        out.append(("Evaluation of the final model (stage 3)", evaluate.HEADER, evaluate.as_rows(state["evaluation"])))
    if state.get("real_model"):
        out.append(("The published Qwen2.5-Coder-0.5B-Instruct beside the demo model (same code paths)",
                    real_model.HEADER, real_model.as_rows(state["real_model"], state.get("evaluation"))))
    where = [["run directory", str(run_dir)], ["report", str(run_dir / "report.md")],
             ["datasets", str(run_dir / "data") + "/<code|repo|text|math|sft>/manifest.json"],
             ["checkpoints", str(run_dir) + "/stage{1,2,3}/checkpoints/<step>"],
             ["metrics", str(run_dir) + "/stage{1,2,3}/metrics.jsonl"],
             ["TensorBoard", f"tensorboard --logdir {run_dir}"],
             ["gin configs", str(run_dir) + "/stage{1,2,3}/operative_config.gin"],
             ["evaluation", str(run_dir / "eval")]]
    out.append(("Where things are", ["what", "path"], where))
    return out


def write(state: dict) -> str:
    """Prints the report and writes RUN/report.md; returns the printed text."""
    run_dir = Path(state["run_dir"])
    printed, markdown = [], [f"# Recipe demo report\n\n{state.get('headline', '')}\n"]
    for title, header, rows in sections(state):
        printed += [f"\n{title}", text_table(rows, header)]
        markdown += [f"## {title}\n", markdown_table(rows, header), ""]
    notes = (state.get("notes", []) + state.get("evaluation", {}).get("notes", [])
             + state.get("real_model", {}).get("notes", []))
    if notes:
        printed += ["\nNotes"] + [f"- {note}" for note in notes]
        markdown += ["## Notes\n"] + [f"- {note}" for note in notes] + [""]
    (run_dir / "report.md").write_text("\n".join(markdown) + "\n")
    text = "\n".join(printed)
    print(text, flush=True)
    return text
