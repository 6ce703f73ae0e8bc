"""Ahead-of-time TPU compilation (qwencoder_jax.aot) on this CPU host, through libtpu's topology descriptions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwencoder_jax.aot import topology

ROOT = Path(__file__).resolve().parents[2]
STAGE1 = str(ROOT / "gin/stages/stage1_file_level.gin")
STAGE2 = str(ROOT / "gin/stages/stage2_repo_level.gin")
TINY = str(ROOT / "gin/models/tiny.gin")
# The tiny preset widened so every sharded parameter fills whole TPU tiles (8 x 128): the compiled argument bytes
# then equal the sharding table's bytes up to the padding of biases and norms (tiny's 16-wide heads would be
# padded eightfold, which is TPU layout, not sharding).
WIDE_TINY = ('MODEL_OVERRIDES = {"hidden_size": 512, "num_heads": 8, "num_kv_heads": 8, "head_dim": 128, '
             '"intermediate_size": 512}')
SPLASH = ['ATTENTION_BACKEND = "splash"', 'REMAT_POLICY = "full"', "SEQUENCE_LENGTH = 256", "BATCH_SIZE = 4"]


def _libtpu_or_skip():
    try:
        topology.libtpu_path()
    except topology.LibtpuMissing as error:
        pytest.skip(f"{error} (scripts/setup.sh installs it on x86-64 Linux)")


@pytest.fixture(scope="module")
def compile_tiny():
    _libtpu_or_skip()
    from qwencoder_jax.aot import compile as compile_lib

    reports = {}

    def run(mode, layers=2):
        if (mode, layers) not in reports:
            overrides = WIDE_TINY[:-1] + f', "num_layers": {layers}}}'
            reports[mode, layers] = compile_lib.compile_stage([STAGE1, TINY], SPLASH + [overrides],
                                                              topology.parse("v5litepod-4"), mode=mode, new_tokens=128)
        return reports[mode, layers]

    return run


def test_train_step_compiles_with_the_mosaic_splash_kernel(compile_tiny):
    report = compile_tiny("train")
    assert report.devices == 4 and report.mesh["fsdp"] == 4
    assert report.mosaic_kernels >= 2  # splash forward, and its backward (dq, dkv) kernels
    for figure in (report.argument_bytes, report.output_bytes, report.temp_bytes, report.code_bytes):
        assert figure > 0
    assert report.fits
    expected = report.state_bytes + report.input_bytes
    assert abs(report.argument_bytes - expected) <= 0.05 * expected, (report.argument_bytes, expected)
    # the donated state comes back in place: every output byte but the replicated metrics is aliased
    assert report.alias_bytes >= report.state_bytes
    # fsdp: parameters are all-gathered for the layers
    assert report.collectives["all-gather"]["count"] > 0


def test_collectives_are_counted_per_layer_of_the_scanned_loop(compile_tiny):
    """One more layer adds one more pass of each scanned loop (forward, and backward with the recompute): each
    collective inside them once more; the reduce-scatter fusions of the gradients count as reduce-scatters."""
    two, three = compile_tiny("train"), compile_tiny("train", layers=3)
    assert two.loop_trip_counts == [2, 2] and three.loop_trip_counts == [3, 3]
    for kind in ("all-gather", "reduce-scatter"):
        per_layer = {figure: three.collectives[kind][figure] - two.collectives[kind][figure]
                     for figure in ("count", "bytes")}
        assert per_layer["count"] > 0 and per_layer["bytes"] > 0, kind
        for figure, value in per_layer.items():  # outside the loops: the two-layer step less its two passes
            assert two.collectives[kind][figure] - 2 * value >= 0, (kind, figure)
    assert two.program_fingerprint != three.program_fingerprint  # the stacked layer shapes differ


def test_state_bytes_match_the_parameter_count(compile_tiny):
    """The sharding table's state bytes against an independent count: float32 params + 2 Adam moments, split
    over the 4 fsdp devices except the replicated (unsharded) vectors."""
    from qwencoder_jax.model.config import get_preset

    report = compile_tiny("train")
    config = get_preset("tiny", hidden_size=512, num_heads=8, num_kv_heads=8, head_dim=128, intermediate_size=512)
    total = config.num_params()
    replicated = config.num_layers * (3 * 8 * 128 + 2 * 512) + 512  # q/k/v biases (heads over tensor=1), norms
    expected = 3 * 4 * ((total - replicated) / 4 + replicated)
    assert abs(report.state_bytes - expected) <= 1e-3 * expected


def test_prefill_and_decode_compile(compile_tiny):
    prefill, decode = compile_tiny("prefill"), compile_tiny("decode")
    assert prefill.mosaic_kernels >= 1  # the prompt attends through splash
    assert decode.mosaic_kernels == 0  # a decode step reads the cache with plain einsums
    for report in (prefill, decode):
        assert report.argument_bytes > 0 and report.output_bytes > 0 and report.fits
        assert report.argument_bytes >= report.state_bytes  # parameters (no optimizer state) + cache + tokens


def _aot(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qwencoder_apps.aot", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_a_config_that_cannot_fit_exits_1_with_the_numbers(tmp_path):
    """The command line end to end, in its own process: exit 1 with the figures, and libtpu's own log files in
    the project's cache folder (named in the output), not in /tmp/tpu_logs."""
    _libtpu_or_skip()
    # a 4M-token vocabulary at width 1024: 16 GiB of embedding, times three with Adam, on one 16 GiB v5e chip
    result = _aot("--topology", "v5litepod-1", f"--gin_file={STAGE1}", f"--gin_file={TINY}",
                  '--gin.MODEL_OVERRIDES={"vocab_size": 4194304, "hidden_size": 1024}', "--gin.SEQUENCE_LENGTH=128",
                  "--gin.BATCH_SIZE=1", "--json", str(tmp_path / "report.json"), "--hlo", str(tmp_path / "step.hlo"),
                  env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 1 and result.stdout.strip(), result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("fits=no per_device_gib=") and "hbm_gib=16.000" in last
    assert "does not fit" in result.stderr and "remat" in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fits"] is False and report["argument_bytes"] > 3 * 4194304 * 1024 * 4
    # the compiler itself refuses this program (its temporaries alone exceed the chip), so there is no HLO
    assert report["out_of_memory"].startswith("RESOURCE_EXHAUSTED") and not (tmp_path / "step.hlo").exists()
    assert "no HLO written to" in result.stderr
    if "TPU_LOG_DIR" not in os.environ:
        logs = tmp_path / "cache/qwencoder_jax/libtpu_logs"
        assert f"libtpu logs  {logs}" in result.stdout
        assert any(path.name.startswith("tpu_driver.") for path in logs.iterdir())


def test_any_other_error_exits_2_in_one_line(capsys):
    """An exception the tool has no special case for (here gin's OSError for a missing file) is still a one-line
    exit 2, never a traceback's exit 1, which would read as "does not fit"."""
    _libtpu_or_skip()
    from qwencoder_apps.aot import main

    assert main(["--topology", "v5litepod-4", "--gin_file=gin/stages/no_such_stage.gin"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: OSError: Unable to open file: gin/stages/no_such_stage.gin")


def test_unknown_topology_lists_the_known_ones(capsys):
    from qwencoder_apps.aot import main

    assert main(["--topology", "v5p-7", f"--gin_file={STAGE1}"]) == 2
    error = capsys.readouterr().err
    assert "unknown TPU topology 'v5p-7'" in error and "v5p-8" in error and "v5litepod-4" in error


def test_topology_names_map_to_chip_grids():
    assert topology.parse("v5p-8").description == "v5p:2x2x1"  # v5p counts TensorCores: 8 = 4 chips
    assert topology.parse("v4-2048").description == "v4:8x8x16"
    assert topology.parse("v5litepod-16").description == "v5e:4x4"
    assert topology.parse("v6e-256").description == "v6e:16x16"
    assert topology.parse("v5p-256").hosts == 32


def test_missing_libtpu_exits_2_with_the_install_hint(tmp_path, monkeypatch, capsys):
    from qwencoder_apps.aot import main

    monkeypatch.setenv("QWENCODER_LIBTPU_DIR", str(tmp_path))
    assert main(["--topology", "v5p-8", f"--gin_file={STAGE1}", f"--gin_file={TINY}"]) == 2
    error = capsys.readouterr().err
    assert "libtpu is not installed" in error and "pip install" in error and "Traceback" not in error


@pytest.mark.slow
def test_stage1_of_the_0_5b_preset_fits_a_v5p_8(tmp_path):
    _libtpu_or_skip()
    result = _aot("--topology", "v5p-8", f"--gin_file={STAGE1}",
                  f"--gin_file={ROOT / 'gin/models/qwen2.5-coder-0.5b.gin'}", "--gin.BATCH_SIZE=4",
                  "--json", str(tmp_path / "report.json"), "--hlo", str(tmp_path / "step.hlo"))
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("fits=yes") and "mosaic_kernels=0" not in last
    from qwencoder_jax.aot import hlo

    report = json.loads((tmp_path / "report.json").read_text())
    assert hlo.fingerprint((tmp_path / "step.hlo").read_text()) == report["program_fingerprint"]
    assert report["loop_trip_counts"] == [24, 24]  # the 0.5B preset's layers, forward and backward


@pytest.mark.slow
def test_context_parallel_stage2_compiles_with_a_sequence_axis():
    _libtpu_or_skip()
    from qwencoder_jax.aot import compile as compile_lib

    report = compile_lib.compile_stage([STAGE2, TINY], [WIDE_TINY, 'ATTENTION_BACKEND = "splash"',
                                                        "SEQUENCE_LENGTH = 4096", "BATCH_SIZE = 1",
                                                        "MESH_SHAPE = (1, 1, 4, 1)"], topology.parse("v5p-8"))
    assert report.mesh["sequence"] == 4 and report.mosaic_kernels >= 2
    assert report.collectives["collective-permute"]["count"] > 0  # the zig-zag exchange of query halves
    assert report.fits


@pytest.mark.slow  # two unrolled compiles: about a minute
def test_compiled_flops_match_the_model_flops_formula_on_the_dot_product_path():
    """XLA's FLOP count of the unscanned step (its cost analysis counts a loop body once) against 6N + attention:
    within 5% with no remat, and one more forward pass (8N, 4/3) with full remat -- no other recompute. The XLA
    path computes every score, masked or not, so attention counts the full T x T (the formula's causal half x 2)."""
    _libtpu_or_skip()
    from qwencoder_jax.aot import compile as compile_lib
    from qwencoder_jax.model.config import get_preset

    wide = dict(hidden_size=512, num_heads=8, num_kv_heads=8, head_dim=128, intermediate_size=512)
    config = get_preset("tiny", **wide)
    overrides = "MODEL_OVERRIDES = " + repr({**wide, "scan_layers": False})
    ratios = {}
    for remat in ("none", "full"):
        report = compile_lib.compile_stage([STAGE1, TINY], [overrides, 'ATTENTION_BACKEND = "xla"',
                                                            f'REMAT_POLICY = "{remat}"', "SEQUENCE_LENGTH = 256",
                                                            "BATCH_SIZE = 4"], topology.parse("v5litepod-4"))
        tokens_per_device = report.tokens_per_step / report.devices
        masked_half = 3 * config.num_layers * 2 * 2 * config.num_heads * config.head_dim * 256 / 2
        ratios[remat] = report.compiled_flops / (report.model_flops + masked_half * tokens_per_device)
    assert 1.0 <= ratios["none"] <= 1.05, ratios
    assert 4 / 3 * 0.97 <= ratios["full"] <= 4 / 3 * 1.05, ratios
