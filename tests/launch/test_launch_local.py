"""launch/local.py --dry_run prints, per process, the variables it would set and the command, and starts
nothing (launch/README.md promises --dry_run on every launcher)."""

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_local_dry_run_prints_one_line_per_process_and_starts_nothing(tmp_path):
    marker = tmp_path / "ran"
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "local.py"), "--num_processes", "3",
                             "--devices_per_process", "2", "--dry_run", "--", "touch", str(marker)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and not marker.exists()
    coordinators = set()
    for process_id, line in enumerate(lines):
        words = shlex.split(line)
        env = dict(word.split("=", 1) for word in words[:-2])
        assert words[-2:] == ["touch", str(marker)]
        assert env["QWENCODER_PROCESS_ID"] == str(process_id) and env["QWENCODER_NUM_PROCESSES"] == "3"
        assert env["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=2")
        coordinators.add(env["QWENCODER_COORDINATOR"])
    assert len(coordinators) == 1  # every process dials the same coordinator
