"""The ablation runner: sweep specs parse (and bad ones fail naming the problem), every variant is bound before any
training, three tiny variants train on real local data into a table with one row per variant (a failing variant
keeps its row), and the collector reads per-source losses and evaluation results."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import data_helpers
from qwencoder_apps import ablate
from qwencoder_apps.ablation import collect, runner
from qwencoder_apps.ablation.spec import SweepError, build_sweep, load_sweep_file, parse_variant_flag

REPOSITORY = Path(__file__).resolve().parents[2]
TABLE3 = str(REPOSITORY / "gin/ablations/table3_mixtures.sweep")
TINY = str(REPOSITORY / "gin/cpu/tiny.gin")
VARIANTS = ["mixture_100_0_0", "mixture_85_10_5", "mixture_70_20_10"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ablation_data")
    data_helpers.write_code_files(root / "code", limit=30)
    data_helpers.write_text(root / "text")
    data_helpers.write_text(root / "math", kind="math", limit=10)
    return {"CODE_DIR": root / "code", "TEXT_DIR": root / "text", "MATH_DIR": root / "math"}


def data_bindings(data) -> list[str]:
    return [f'{macro} = "{path}"' for macro, path in data.items()]


# -- specs ------------------------------------------------------------------------------------------------------

def test_table3_sweep_and_command_line_variants():
    sweep = build_sweep([TABLE3], ["lr_high=ablations/mixture_70_20_10.gin;PEAK_LEARNING_RATE=1e-2"],
                        overlays=[TINY], extra_bindings=["TOTAL_STEPS = 7"])
    assert [v.name for v in sweep.variants] == VARIANTS + ["lr_high"]
    arguments = sweep.train_arguments(sweep.variant("lr_high"), "/w/lr_high")
    # variant files, then the overlay; bindings after every file, the command line's last
    assert arguments == [f"--gin_file={REPOSITORY / 'gin/ablations/mixture_70_20_10.gin'}", f"--gin_file={TINY}",
                         "--gin_bindings=PEAK_LEARNING_RATE = 1e-2", "--gin_bindings=TOTAL_STEPS = 7",
                         "--workdir=/w/lr_high"]
    one = load_sweep_file(REPOSITORY / "gin/ablations/mixture_85_10_5.gin")
    assert [v.name for v in one.variants] == ["mixture_85_10_5"]


@pytest.mark.parametrize("text, message", [
    ("", "no \\[variants.NAME\\] tables"),
    ("[variants.a]\ngin_files = ['ablations/no_such.gin']", "variant 'a': gin file 'ablations/no_such.gin' not found"),
    ("[variants.a]\nbindings = ['TOTAL_STEPS 3']", "not of the form 'KEY = VALUE'"),
    ("[variants.a]\n", "variant 'a' has neither gin files nor bindings"),
    ("[variants.a]\ngin_file = ['x.gin']", "variants.a has unknown keys \\['gin_file'\\]"),
    ("overlay = ['cpu/tiny.gin']\n[variants.a]\nbindings = ['A = 1']", "unknown keys \\['overlay'\\]"),
    ("[variants.'a b']\nbindings = ['A = 1']", "'a b' is not usable as a directory name"),
    ("[variants.a\nbindings = 1", "is not valid TOML"),
    ("[variants.a]\nbindings = 'A = 1'\ngin_files = [1]", "variants.a.gin_files must be a list of strings"),
])
def test_bad_sweep_files_fail_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.sweep"
    path.write_text(text)
    with pytest.raises(SweepError, match=message):
        load_sweep_file(path)


def test_bad_variant_flags_and_duplicates_fail():
    with pytest.raises(SweepError, match="write NAME=FILE.gin"):
        parse_variant_flag("just_a_name")
    with pytest.raises(SweepError, match="neither a .gin file nor a binding"):
        parse_variant_flag("a=cpu/tiny")
    with pytest.raises(SweepError, match="appear more than once"):
        build_sweep([TABLE3], ["mixture_85_10_5=PEAK_LEARNING_RATE=1.0"])
    with pytest.raises(SweepError, match="no variants"):
        build_sweep([], [])
    with pytest.raises(SweepError, match="sweep file .* not found"):
        build_sweep(["gin/ablations/nothing.sweep"])


def test_every_variant_is_bound_before_training(tmp_path, data):
    typo = build_sweep([], ["ok=ablations/mixture_85_10_5.gin", "typo=ablations/mixture_85_10_5.gin;"
                            "optimizer_config.peak_learnin_rate=1.0"], overlays=[TINY],
                       extra_bindings=data_bindings(data))
    with pytest.raises(SweepError, match="variant 'typo' does not bind.*peak_learnin_rate"):
        runner.check(typo, tmp_path)
    missing = build_sweep([TABLE3], overlays=[TINY])  # no data directories given
    with pytest.raises(SweepError, match="variant 'mixture_100_0_0' does not bind.*CODE_DIR"):
        runner.check(missing, tmp_path)
    # The overlay comes after the variants' files: a SEQUENCE_LENGTH set in a variant's file is overridden,
    # so both variants are the same run. Refused, with the way out.
    (tmp_path / "long.gin").write_text("include 'ablations/mixture_85_10_5.gin'\nSEQUENCE_LENGTH = 256\n")
    same = build_sweep([], ["short=ablations/mixture_85_10_5.gin", f"long={tmp_path / 'long.gin'}"],
                       overlays=[TINY], extra_bindings=data_bindings(data))
    with pytest.raises(SweepError, match="'short' and 'long' bind the same configuration.*bindings"):
        runner.check(same, tmp_path)
    assert not any(tmp_path.glob("*/metrics.jsonl"))


def test_dry_runs_print_one_trainer_or_pod_command_per_variant(tmp_path, data, capsys):
    gin_flags = [f"--gin.{macro}='{path}'" for macro, path in data.items()]
    assert ablate.main([f"--sweep={TABLE3}", f"--gin_file={TINY}", *gin_flags, f"--workdir={tmp_path}",
                        "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("-m qwencoder_apps.train" in line for line in lines)
    assert [line.rsplit("--workdir=", 1)[1] for line in lines] == [str(tmp_path / v) for v in VARIANTS]
    assert ablate.main([f"--sweep={TABLE3}", f"--gin_file={TINY}", *gin_flags, "--gin.MESH_SHAPE=(1,-1,1,1)",
                        f"--workdir={tmp_path}", "--processes=2", "--devices_per_process=2", "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("launch/local.py --num_processes 2 --devices_per_process 2 -- " in line
                                   and "-m qwencoder_apps.train" in line for line in lines)
    assert ablate.main([f"--sweep={TABLE3}", f"--gin_file={TINY}", *gin_flags, f"--workdir={tmp_path}",
                        "--launcher=pod", "--pod_name=t3", "--pod_flags=--project p --zone z --accelerator v5p-64",
                        "--pod_workdir=/mnt/runs/t3", "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("launch/tpu_vm.py --name t3-mixture-" in line for line in lines)
    assert "--stage gin/ablations/mixture_100_0_0.gin --gin_file gin/cpu/tiny.gin" in lines[0]
    assert lines[0].endswith("--workdir /mnt/runs/t3/mixture_100_0_0 --dry_run")
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_bad_command_line_exits_with_a_message(capsys):
    assert ablate.main(["--variant", "x"]) == 2
    assert "write NAME=FILE.gin" in capsys.readouterr().err


# -- the real thing: three tiny variants --------------------------------------------------------------------------

def test_three_tiny_variants_give_one_row_each(tmp_path, data):
    sweep = build_sweep([TABLE3], ["broken=ablations/mixture_85_10_5.gin;MIXTURE=\"no_such_mixture\""],
                        overlays=[TINY], extra_bindings=data_bindings(data) + [
                            "TOTAL_STEPS = 3", "SEQUENCE_LENGTH = 64", "CHECKPOINT_EVERY = 100"])
    rows, paths = ablate.run(sweep, tmp_path, launcher="inprocess", log=lambda message: None)
    assert [row["variant"] for row in rows] == VARIANTS + ["broken"]
    assert [row["status"] for row in rows] == ["completed"] * 3 + ["failed"]
    for row in rows[:3]:
        assert row["steps"] == 3 and math.isfinite(row["final_loss"]) and row["tokens_per_second"] > 0
        assert (tmp_path / row["variant"] / "checkpoints" / "3").is_dir()
    assert "no_such_mixture" in (tmp_path / "broken" / "train.log").read_text()  # why it failed is kept
    markdown = paths["markdown"].read_text().splitlines()
    assert markdown[0].startswith("| variant | status | steps | final_loss") and len(markdown) == 2 + 4
    with open(paths["csv"]) as handle:
        assert [row["variant"] for row in csv.DictReader(handle)] == VARIANTS + ["broken"]
    assert [row["variant"] for row in json.loads(paths["json"].read_text())] == VARIANTS + ["broken"]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second run keeps the completed variants (their records say so) and retries only the failed one.
    messages = []
    ablate.run(sweep, tmp_path, launcher="inprocess", log=messages.append)
    assert sum("already completed" in m for m in messages) == 3 and any("broken: training" in m for m in messages)


@pytest.mark.slow
def test_command_line_local_launcher_end_to_end(tmp_path, data):
    """`python -m qwencoder_apps.ablate` with child trainer processes (the default launcher)."""
    gin_flags = [f"--gin.{macro}='{path}'" for macro, path in data.items()]
    run = subprocess.run([sys.executable, "-m", "qwencoder_apps.ablate", f"--sweep={TABLE3}", f"--gin_file={TINY}",
                          *gin_flags, "--gin.TOTAL_STEPS=3", "--gin.SEQUENCE_LENGTH=64", f"--workdir={tmp_path}"],
                         capture_output=True, text=True, timeout=900, cwd=REPOSITORY)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [row["status"] for row in json.loads((tmp_path / "ablation.json").read_text())] == ["completed"] * 3
    assert all((tmp_path / v / "train.log").is_file() for v in VARIANTS)


# -- collecting ---------------------------------------------------------------------------------------------------

def test_collector_reads_per_source_losses_resumed_steps_and_eval_results(tmp_path):
    variant = tmp_path / "a"
    variant.mkdir()
    records = [{"step": s, "loss": 10.0 - s, "tokens": 100, "tokens_per_second": 50.0 * s, "tokens/code": 60,
                "tokens/math": 40, "loss/code": 9.0 - s, "loss/math": 11.0 - s} for s in (1, 2, 3)]
    records.append({"step": 3, "loss": 6.0, "tokens": 100, "tokens_per_second": 200.0, "loss/code": 5.0,
                    "tokens/code": 100})  # the step rewritten after a resume (no math token): the last counts
    (variant / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')
    (variant / "eval").mkdir()
    (variant / "eval" / "results.json").write_text(json.dumps(
        {"humaneval": {"pass@1": 0.25, "problems": 4, "samples": ["x"]}, "math": {"accuracy": 0.5}}))
    row = collect.summarize(variant, tail=2)
    assert row["steps"] == 3 and row["final_loss"] == pytest.approx((8.0 + 6.0) / 2)
    assert row["loss/code"] == pytest.approx((7.0 + 5.0) / 2) and row["loss/math"] == pytest.approx((10 + 9) / 2)
    assert row["tokens/code"] == 220 and row["tokens/math"] == 80
    assert row["tokens_per_second"] == pytest.approx(150.0) and row["tokens"] == 300
    assert row["eval/humaneval/pass@1"] == 0.25 and row["eval/math/accuracy"] == 0.5
    assert "eval/humaneval/samples" not in row
    columns = collect.columns_of([row])
    assert columns.index("loss/code") < columns.index("eval/humaneval/pass@1")
    (variant / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\nnot json\n{"step": 2, "loss": 1.0}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2 is not JSON"):
        collect.read_metrics(variant)
