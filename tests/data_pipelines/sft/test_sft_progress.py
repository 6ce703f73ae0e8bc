"""SFT synthesis shows a progress bar on a terminal and prints nothing of it when stderr is a pipe (a log file)."""

import fcntl
import os
import pty
import struct
import termios
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROGRAM = """
from data_pipelines.sft import synthesis
from data_pipelines.sft.tally import Tally
snippets = [synthesis.Snippet(f"lib/m{i}.py", "Python", "def area(w, h):\\n    return w * h\\n" * 3) for i in range(3)]
answer = lambda messages, temperature: "Write a function."  # the model interface: messages -> text
tally = Tally()
print(len(synthesis.synthesize(snippets, answer, None, tally)), "records")
"""


def _env():
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_progress_on_a_terminal_only():
    piped = subprocess.run([sys.executable, "-c", PROGRAM], env=_env(), capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert "3 records" in piped.stdout and "synthesize" not in piped.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    with os.fdopen(master, "rb", buffering=0) as terminal:
        process = subprocess.Popen([sys.executable, "-c", PROGRAM], env=_env(), stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        stdout, _ = process.communicate(timeout=120)
        chunks = []
        while True:
            try:
                data = terminal.read(4096)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
    output = b"".join(chunks).decode("utf-8", "replace")
    assert process.returncode == 0 and b"3 records" in stdout, output
    assert "synthesize" in output and "3/3" in output, output
