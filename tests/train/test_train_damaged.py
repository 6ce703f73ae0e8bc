"""Damaged checkpoints and changed schedules on resume: nothing good to fall back on stops the run with a clear
error (step 0 again only on request, said in the log); one metrics record per step; a changed TOTAL_STEPS is
refused unless allowed; `checkpoints.load` names checkpoint, item, array and cause in one line."""

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_train import OPTIMIZER, TOTAL_STEPS, data_dir, trainer_config  # noqa: E402,F401  (fixture)

from qwencoder_jax import checkpoints  # noqa: E402
from qwencoder_jax.train.trainer import ResumeError, Trainer  # noqa: E402


def steps_logged(workdir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def truncate_arrays(step_dir: Path) -> None:
    """Cut every stored array file of the params item short (a copy interrupted mid-file)."""
    for path in (step_dir / "params").rglob("*"):
        if path.is_file() and path.parent.name == "d" and path.stat().st_size > 1000:
            path.write_bytes(path.read_bytes()[:1000])


@pytest.fixture(scope="module")
def one_checkpoint(tmp_path_factory, data_dir):  # noqa: F811
    """A 4-step run whose only checkpoint is step 4."""
    workdir = tmp_path_factory.mktemp("one")
    result = Trainer(trainer_config(workdir, data_dir, total_steps=4, checkpoint_every=4)).run()
    assert result.stop_reason == "completed" and sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4"]
    return workdir


def test_the_only_checkpoint_damaged_stops_with_a_clear_error(tmp_path, one_checkpoint, data_dir):  # noqa: F811
    workdir = tmp_path / "run"
    shutil.copytree(one_checkpoint, workdir)
    truncate_arrays(workdir / "checkpoints" / "4")
    config = trainer_config(workdir, data_dir, total_steps=4, checkpoint_every=4)
    with pytest.raises(ResumeError, match=r"no checkpoint in .* restores: step 4 \(array .*\).*restart_if_unrestorable"):
        Trainer(config).run()
    # a second try does not silently start over either (the damaged step now lies aside as 4.damaged)
    with pytest.raises(ResumeError, match=r"only damaged checkpoints \(4.damaged\)"):
        Trainer(config).run()
    assert steps_logged(workdir) == [1, 2, 3, 4]  # nothing trained, nothing logged twice

    # on request it starts again from step 0, says so, and metrics.jsonl holds each step once
    result = Trainer(trainer_config(workdir, data_dir, total_steps=4, checkpoint_every=4,
                                    restart_if_unrestorable=True)).run()
    assert result.stop_reason == "completed" and result.resumed_from is None
    assert any("starting again from step 0" in message for message in result.messages)
    assert steps_logged(workdir) == [1, 2, 3, 4]


def test_a_changed_schedule_is_refused_unless_allowed(tmp_path, one_checkpoint, data_dir):  # noqa: F811
    workdir = tmp_path / "run"
    shutil.copytree(one_checkpoint, workdir)
    longer = OPTIMIZER.__class__(**{**OPTIMIZER.__dict__, "total_steps": 30})
    with pytest.raises(ResumeError, match=r"another schedule \(optimizer.total_steps 20 -> 30\).*allow_schedule"):
        Trainer(trainer_config(workdir, data_dir, total_steps=6, optimizer=longer)).run()
    # more steps on the same schedule is a plain resume
    result = Trainer(trainer_config(workdir, data_dir, total_steps=5, checkpoint_every=4)).run()
    assert result.resumed_from == 4 and result.final_step == 5
    result = Trainer(trainer_config(workdir, data_dir, total_steps=6, optimizer=longer,
                                    allow_schedule_change=True)).run()
    assert result.resumed_from == 5 and any("changed schedule" in message for message in result.messages)
    assert steps_logged(workdir) == [1, 2, 3, 4, 5, 6]


def test_a_restart_after_a_crash_logs_each_step_once(tmp_path, one_checkpoint, data_dir):  # noqa: F811
    workdir = tmp_path / "run"
    shutil.copytree(one_checkpoint, workdir)
    with open(workdir / "metrics.jsonl", "a") as metrics:  # steps 5-6 logged by a run that died before saving
        for step in (5, 6):
            metrics.write(json.dumps({"step": step, "loss": 1.0}) + "\n")
    Trainer(trainer_config(workdir, data_dir, total_steps=6, checkpoint_every=4)).run()
    assert steps_logged(workdir) == [1, 2, 3, 4, 5, 6]
    assert all(json.loads(line)["loss"] != 1.0 for line in (workdir / "metrics.jsonl").read_text().splitlines())


def test_load_names_checkpoint_item_array_and_cause(tmp_path, one_checkpoint, capfd):
    shutil.copytree(one_checkpoint, tmp_path / "run")
    checkpoints.load(tmp_path / "run")  # the good one loads without warnings about the training items
    assert "could not be restored" not in capfd.readouterr().err
    truncate_arrays(tmp_path / "run" / "checkpoints" / "4")
    with pytest.raises(checkpoints.CheckpointError) as raised:
        checkpoints.load(tmp_path / "run")
    message = str(raised.value)
    assert message.count("\n") == 0 and len(message) < 500, message
    assert str(tmp_path / "run" / "checkpoints" / "4") in message and "item params" in message
    assert "array " in message and "not valid for value of size" in message, message
