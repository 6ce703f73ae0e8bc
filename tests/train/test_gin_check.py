"""Every gin name is checked before any work: a misspelled macro, configurable or parameter is one line on stderr
naming it and the closest known names (no traceback unless --debug), for the train CLI and `ablate --dry_run`."""

import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from qwencoder_apps import train as cli
from qwencoder_jax.train import gin_check

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = ["--gin_file=gin/stages/stage1_file_level.gin", "--gin_file=gin/cpu/tiny.gin",
          "--gin.CODE_DIR='/d/c'", "--gin.TEXT_DIR='/d/t'", "--gin.MATH_DIR='/d/m'"]


def run(module: str, arguments: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.parametrize("binding, named, closest", [
    ("--gin.TOTAL_STEPZ=12", "'TOTAL_STEPZ'", "TOTAL_STEPS"),
    ("--gin.optimizer_config.peak_learnig_rate=1e-3", "optimizer_config.peak_learnig_rate", "peak_learning_rate"),
    ("--gin.loader_config.seqence_length=64", "loader_config.seqence_length", "sequence_length"),
    ("--gin.optimzer_config.peak_learning_rate=1e-3", "'optimzer_config'", "optimizer_config"),
])
def test_a_misspelled_name_is_one_line_with_the_closest_names(tmp_path, binding, named, closest, capsys,
                                                              monkeypatch):
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "run"
    assert cli.main([*STAGE1, binding, f"--workdir={workdir}"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error:"), stderr
    assert named in stderr and closest in stderr, stderr
    assert not workdir.exists()  # before any work


def test_the_command_line_prints_no_traceback(tmp_path):
    result = run("qwencoder_apps.train", [*STAGE1, "--gin.TOTAL_STEPZ=12", f"--workdir={tmp_path}/w"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "error: unknown gin macro 'TOTAL_STEPZ'" in result.stderr and "TOTAL_STEPS" in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run("qwencoder_apps.train", [*STAGE1, "--gin.TOTAL_STEPZ=12", "--debug", f"--workdir={tmp_path}/w"])
    assert result.returncode != 0 and "Traceback" in result.stderr and "GinConfigError" in result.stderr


def test_ablate_dry_run_refuses_a_misspelled_macro(tmp_path, capsys, monkeypatch):
    from qwencoder_apps import ablate

    monkeypatch.chdir(ROOT)
    status = ablate.main(["--sweep=gin/ablations/table3_mixtures.sweep", "--gin_file=gin/cpu/tiny.gin",
                                          "--gin.CODE_DIR='/d/c'", "--gin.TEXT_DIR='/d/t'", "--gin.MATH_DIR='/d/m'",
                                          "--gin.TOTAL_STEPZ=12", f"--workdir={tmp_path}", "--dry_run"])
    stderr = capsys.readouterr().err
    assert status != 0
    assert "unknown gin macro 'TOTAL_STEPZ'" in stderr and "TOTAL_STEPS" in stderr, stderr


def test_macros_used_by_the_files_and_macros_of_macros_are_accepted():
    files = [str(ROOT / "gin/stages/stage1_file_level.gin"), str(ROOT / "gin/cpu/tiny.gin")]
    data = ['CODE_DIR = "/c"', 'TEXT_DIR = "/t"', 'MATH_DIR = "/m"']
    cli.parse(files, [*data, "TOTAL_STEPS = 7", "WARMUP_STEPS = 1"])
    assert "TOTAL_STEPS" in gin_check.referenced_macros()
    with pytest.raises(gin_check.GinConfigError, match="'MY_STEPS'"):
        cli.parse(files, [*data, "MY_STEPS = 7"])
    cli.parse(files, [*data, "MY_STEPS = 7", "TOTAL_STEPS = %MY_STEPS"])  # now MY_STEPS is used
    assert cli.build("/tmp/unused")[0].total_steps == 7
    gin.clear_config()
