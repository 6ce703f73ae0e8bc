"""Which shipped stages compile to the same TPU program: the three SFT stages differ only in learning-rate schedule
constants (so benchmarks/aot_table.py compiles one of them per preset), stage 1 differs in its program."""

from pathlib import Path

import pytest

from qwencoder_jax.aot import hlo, topology

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "gin/models/tiny.gin")
SPLASH = ['ATTENTION_BACKEND = "splash"', 'REMAT_POLICY = "full"', "SEQUENCE_LENGTH = 256", "BATCH_SIZE = 4"]


@pytest.fixture(scope="module")
def programs():
    try:
        topology.libtpu_path()
    except topology.LibtpuMissing as error:
        pytest.skip(f"{error} (scripts/setup.sh installs it on x86-64 Linux)")
    from qwencoder_jax.aot import compile as compile_lib

    lowered = {}
    for stage in ("stage3_sft", "stage3_sft_coarse", "stage3_sft_fine", "stage1_file_level"):
        lowered[stage] = compile_lib.lower_stage([str(ROOT / "gin/stages" / f"{stage}.gin"), TINY], SPLASH,
                                                 topology.parse("v5litepod-4"))[0]
    return lowered


def test_the_sft_stages_lower_to_one_program_apart_from_schedule_constants(programs):
    text = {stage: lowered.as_text() for stage, lowered in programs.items()}
    # coarse: 50 warmup steps (sft: 20), so 1000 - 50 cosine steps; fine: peak learning rate 7e-6 (sft: 2e-5)
    assert set(hlo.constant_differences(text["stage3_sft"], text["stage3_sft_coarse"])) == {
        ("20", "50"), ("2.000000e+01", "5.000000e+01"), ("9.800000e+02", "9.500000e+02")}
    assert set(hlo.constant_differences(text["stage3_sft"], text["stage3_sft_fine"])) == {
        ("2.000000e-05", "7.000000e-06"), ("-2.000000e-05", "-7.000000e-06")}
    # stage 1 reports three sources' losses (SFT: one), a structural difference, not only constants
    assert hlo.constant_differences(text["stage3_sft"], text["stage1_file_level"]) is None
    assert "tensor<4x256x4xf32>" in text["stage1_file_level"] and "tensor<4x256x2xf32>" in text["stage3_sft"]


@pytest.mark.slow  # two compiles: about 20 s on a loaded 2-core machine
def test_the_compiled_sft_programs_are_equal_apart_from_constants(programs):
    compiled = {stage: programs[stage].compile() for stage in ("stage3_sft", "stage3_sft_fine")}
    text = {stage: executable.as_text() for stage, executable in compiled.items()}
    assert hlo.fingerprint(text["stage3_sft"]) == hlo.fingerprint(text["stage3_sft_fine"])
    assert set(hlo.constant_differences(text["stage3_sft"], text["stage3_sft_fine"])) == {
        ("2e-05", "7e-06"), ("-2e-05", "-7e-06")}
    sizes = [(m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes)
             for m in (executable.memory_analysis() for executable in compiled.values())]
    assert sizes[0] == sizes[1]


def _aot_table():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import aot_table

    return aot_table


def test_the_table_compiles_one_sft_stage_per_preset_unless_told_to_compile_all():
    table = _aot_table()
    sft = ["stage3_sft", "stage3_sft_coarse", "stage3_sft_fine"]
    assert table.plan(sft, ["0.5b", "7b"]) == [
        ("stage3_sft", "0.5b", None), ("stage3_sft", "7b", None),
        ("stage3_sft_coarse", "0.5b", "stage3_sft"), ("stage3_sft_coarse", "7b", "stage3_sft"),
        ("stage3_sft_fine", "0.5b", "stage3_sft"), ("stage3_sft_fine", "7b", "stage3_sft")]
    assert all(source is None for *_, source in table.plan(sft, ["0.5b"], compile_all=True))
    # without stage3_sft among the stages asked for, each SFT stage is compiled itself
    assert table.plan(["stage3_sft_fine", "stage3_sft"], ["3b"]) == [("stage3_sft_fine", "3b", None),
                                                                     ("stage3_sft", "3b", None)]
    row = {"stage": "stage3_sft", "preset": "0.5b", "slice": "v5p-8", "bindings": ["BATCH_SIZE=4"],
           "mesh": {"data": 1, "fsdp": 4, "sequence": 1, "tensor": 1}, "per_device_bytes": 8.11 * 2**30,
           "temp_bytes": 6.68 * 2**30, "hbm_bytes": 95 * 2**30, "fits": True, "mosaic_kernels": 4,
           "compile_seconds": 82.0}
    lines = table.markdown([row, table.reused_row(row, "stage3_sft_fine")]).splitlines()
    assert lines[2].endswith("| 8.11 | 6.68 | 95 | yes | 4 | 82 |")
    assert lines[3].startswith("| stage3_sft_fine | 0.5b |") and lines[3].endswith("| yes | 4 | (= stage3_sft) |")


def test_the_table_refuses_an_unknown_stage(capsys):
    with pytest.raises(SystemExit) as exit_:
        _aot_table().main(["--stages", "stage9", "--presets", "0.5b"])
    assert exit_.value.code == 2 and "unknown stage or preset stage9" in capsys.readouterr().err
