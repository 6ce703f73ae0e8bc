"""XLA TPU flags for the ahead-of-time compile: profiles and flags resolved to one LIBTPU_INIT_ARGS string, a flag
libtpu does not know refused in one line (libtpu would end the process), and the flags reaching the compiler."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwencoder_jax.aot import libtpu_flags, topology

ROOT = Path(__file__).resolve().parents[2]
TINY_ON_TILES = ['--gin.MODEL_OVERRIDES={"hidden_size": 512, "num_heads": 8, "num_kv_heads": 8, "head_dim": 128, '
                 '"intermediate_size": 512, "num_layers": 2}', '--gin.ATTENTION_BACKEND="splash"',
                 "--gin.SEQUENCE_LENGTH=256", "--gin.BATCH_SIZE=4"]


def _libtpu_or_skip():
    try:
        topology.libtpu_path()
    except topology.LibtpuMissing as error:
        pytest.skip(f"{error} (scripts/setup.sh installs it on x86-64 Linux)")


def _aot(*args):
    env = {name: value for name, value in os.environ.items() if name != "LIBTPU_INIT_ARGS"}
    return subprocess.run([sys.executable, "-m", "qwencoder_apps.aot", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def test_profiles_and_flags_resolve_in_order():
    profile = libtpu_flags.PROFILES["async_collectives"]
    assert libtpu_flags.resolve("async_collectives") == " ".join(profile)
    assert libtpu_flags.resolve("--xla_a=1 async_collectives --xla_b") == " ".join(("--xla_a=1", *profile,
                                                                                   "--xla_b"))
    assert libtpu_flags.resolve("") == libtpu_flags.resolve(libtpu_flags.resolve("")) == ""
    assert libtpu_flags.resolve(libtpu_flags.resolve("async_collectives")) == " ".join(profile)  # idempotent
    assert libtpu_flags.combined(" --xla_env=1 ", "--xla_b=2") == "--xla_env=1 --xla_b=2"
    for spec in ("async_collective", "xla_a=1", "--", "'--xla_a=1 --xla_b=2'"):
        with pytest.raises(ValueError, match="neither a profile"):
            libtpu_flags.resolve(spec)


def test_libtpu_reads_flags_once_per_process_so_another_set_is_refused(monkeypatch):
    monkeypatch.setattr(topology, "_loaded_with", "--xla_a=1")
    monkeypatch.delenv("LIBTPU_INIT_ARGS", raising=False)
    with pytest.raises(ValueError, match="needs a new process"):
        topology.compile_devices(topology.parse("v5p-8"), 1, "--xla_b=2")


def test_a_flag_libtpu_does_not_know_exits_2_naming_it():
    """libtpu ends the process with status 1 on an unknown flag, which a launcher reads as "does not fit": the CLI
    asks libtpu in a child process first and answers exit 2 with libtpu's own line."""
    _libtpu_or_skip()
    result = _aot("--topology", "v5p-8", "--gin_file=gin/stages/stage1_file_level.gin",
                  "--gin_file=gin/models/tiny.gin", "--libtpu_flags=--xla_tpu_no_such_flag=true")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: libtpu refuses the flags '--xla_tpu_no_such_flag=true': ERROR: Unknown command line flag "
        "'xla_tpu_no_such_flag'"]
    assert "fits=" not in result.stdout
    bad = _aot("--topology", "v5p-8", "--gin_file=gin/stages/stage1_file_level.gin", "--libtpu_flags=fast")
    assert bad.returncode == 2 and "'fast' is neither a profile (async_collectives)" in bad.stderr


@pytest.mark.slow  # two compiles for a 64-chip torus: about 30 s
def test_async_collectives_keep_the_weight_gathers_all_gathers_on_a_64_chip_torus(tmp_path):
    """fsdp over v5p-128 (a 4x4x4 torus): as shipped XLA TPU gathers the weights with all-reduces; the profile
    gives all-gathers, and the report records the flags it compiled with."""
    _libtpu_or_skip()
    reports = {}
    for spec in ("", "async_collectives"):
        path = tmp_path / f"report{spec}.json"
        result = _aot("--topology", "v5p-128", "--gin_file=gin/stages/stage1_file_level.gin",
                      "--gin_file=gin/models/tiny.gin", *TINY_ON_TILES, f"--libtpu_flags={spec}", "--json", str(path))
        assert result.returncode == 0, result.stderr[-2000:]
        reports[spec] = json.loads(path.read_text())
    plain, tuned = reports[""], reports["async_collectives"]
    assert plain["libtpu_flags"] == "" and tuned["libtpu_flags"] == libtpu_flags.resolve("async_collectives")
    assert plain["collectives"]["all-gather"]["count"] == 0 and plain["collectives"]["all-reduce"]["count"] > 0
    assert tuned["collectives"]["all-gather"]["count"] > 0
    assert tuned["collectives"]["all-reduce"]["bytes"] < plain["collectives"]["all-reduce"]["bytes"]
    assert plain["fits"] and tuned["fits"] and tuned["mosaic_kernels"] == plain["mosaic_kernels"] > 0
