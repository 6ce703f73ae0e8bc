"""Every gin file parses and binds; the CLI fails on a mistyped binding with gin's message before any work, and
runs a stage end to end from the command line (writing operative_config.gin)."""

import subprocess
import sys
from pathlib import Path

import gin
import pytest

from qwencoder_apps import train as cli

GIN_DIR = Path(__file__).resolve().parents[2] / "gin"
DATA = {"CODE_DIR": "/data/code", "TEXT_DIR": "/data/text", "MATH_DIR": "/data/math", "REPO_DIR": "/data/repo",
        "SFT_DIR": "/data/sft", "STAGE1_WORKDIR": "/runs/stage1", "STAGE2_WORKDIR": "/runs/stage2",
        "SFT_COARSE_WORKDIR": "/runs/stage3_coarse"}


def bindings_for(path: Path) -> list[str]:
    """The REQUIRED data macros the file's stage needs (only those it declares, or gin rejects the binding)."""
    text = path.read_text()
    if "include 'stages/stage1_file_level.gin'" in text:
        text += (GIN_DIR / "stages/stage1_file_level.gin").read_text()
    return [f'{name} = "{value}"' for name, value in DATA.items() if f"{name} = %gin.REQUIRED" in text]


def all_gin_files() -> list[Path]:
    return sorted(p for p in GIN_DIR.rglob("*.gin"))


@pytest.mark.parametrize("path", all_gin_files(), ids=lambda p: str(p.relative_to(GIN_DIR)))
def test_every_gin_file_parses_and_binds(path, tmp_path):
    relative = path.relative_to(GIN_DIR).as_posix()
    if relative.startswith(("stages/", "ablations/")):
        files = [str(path), str(GIN_DIR / "models/small.gin")]
    elif relative.startswith(("models/", "cpu/")):  # value files: bind them over a stage
        files = [str(GIN_DIR / "stages/stage1_file_level.gin"), str(path)]
    else:  # base.gin, mesh.gin: with the minimum a run must choose
        files = [str(path), str(GIN_DIR / "stages/stage1_file_level.gin"), str(GIN_DIR / "models/small.gin")]
    stage_file = path if relative.startswith(("stages/", "ablations/")) else GIN_DIR / "stages/stage1_file_level.gin"
    bindings = bindings_for(stage_file) + ["BATCH_SIZE = 2", "TOTAL_STEPS = 1000"]
    cli.parse(files, bindings)
    config, inference = cli.build(str(tmp_path))
    assert config.total_steps in (1000, 20, 200) and config.loader.sequence_length > 0
    if relative == "stages/stage1_file_level.gin":
        assert config.loader.sequence_length == 8192 and config.model.rope_theta == 1e4
        assert config.mixture == "stage1_70_20_10" and config.data_sources[0].fim_rate == 0.5
    if relative == "stages/stage2_repo_level.gin":
        assert config.loader.sequence_length == 32768 and config.model.rope_theta == 1e6
        assert config.mixture == "stage2_repo" and config.init_from == "/runs/stage1"
        assert config.model.replace(**inference).yarn.factor == 4.0
    if relative == "stages/stage3_sft.gin":
        assert config.data_sources[0].kind == "sft" and config.init_from == "/runs/stage2"
    if relative.startswith("ablations/"):
        assert config.mixture in ("ablation_100_0_0", "ablation_85_10_5", "stage1_70_20_10")
    if relative.startswith("models/"):
        assert config.model.num_layers > 0
    gin.clear_config()


def test_missing_required_macro_is_named_at_parse_time():
    with pytest.raises(ValueError, match="CODE_DIR.*gin.REQUIRED"):
        cli.parse([str(GIN_DIR / "stages/stage1_file_level.gin"), str(GIN_DIR / "models/small.gin")],
                  ["BATCH_SIZE = 2", "TOTAL_STEPS = 1000", 'TEXT_DIR = "/t"', 'MATH_DIR = "/m"'])
    gin.clear_config()


def test_mistyped_binding_fails_with_gins_message_before_any_work(tmp_path):
    workdir = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "qwencoder_apps.train", "--gin_file=stages/stage1_file_level.gin",
                          "--gin_file=models/tiny.gin", "--gin.optimizer_config.peak_learnin_rate=1.0",
                          f"--workdir={workdir}"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "peak_learnin_rate" in run.stderr
    assert not workdir.exists()  # nothing was written: the error came first
