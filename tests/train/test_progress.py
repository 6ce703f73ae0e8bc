"""The trainer's progress: a tqdm bar on a terminal, plain lines in a log file (never a log full of bar redraws)."""

import sys
import types

from qwencoder_jax.train import trainer


def test_log_file_progress_is_a_line_about_every_five_percent(capsys):
    progress = trainer._ProgressLines(total=40, start=0)
    for step in range(1, 41):
        progress.update(1)
        progress.set_postfix(loss=f"{10 - step / 10:.4f}", tok_s="100")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[train] step 2/40 loss=9.8000 tok_s=100"
    assert len(lines) == 20 and lines[-1] == "[train] step 40/40 loss=6.0000 tok_s=100"


def test_log_file_progress_of_a_resumed_run_ends_with_the_last_step(capsys):
    progress = trainer._ProgressLines(total=7, start=5)
    for _ in range(2):
        progress.update(1)
        progress.set_postfix(loss="1.0")
    assert capsys.readouterr().err.splitlines() == ["[train] step 6/7 loss=1.0", "[train] step 7/7 loss=1.0"]


def test_a_pipe_gets_lines_not_a_bar(monkeypatch):
    config = types.SimpleNamespace(total_steps=10, progress_bar=True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert isinstance(trainer._progress_bar(config, 0), trainer._ProgressLines)
