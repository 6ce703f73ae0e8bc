"""The MFU denominator counts every device: the chip table on accelerators, the measured peak on CPU."""

import jax
import pytest

from qwencoder_jax.train import peak


def test_chip_table_knows_the_tpus_and_gpus_by_jax_device_kind():
    assert peak.table_peak_flops("TPU v5p") == pytest.approx(459e12)
    assert peak.table_peak_flops("TPU v5 lite") == pytest.approx(197e12)
    assert peak.table_peak_flops("TPU v4") == pytest.approx(275e12)
    assert peak.table_peak_flops("TPU v6 lite") == pytest.approx(918e12)
    assert peak.table_peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989e12)
    assert peak.table_peak_flops("cpu") is None


def test_mesh_peak_is_per_device_peak_times_devices():
    devices = jax.devices()[:8]
    assert peak.mesh_peak_flops(devices, per_device=2e9) == pytest.approx(8 * 2e9)
    one = peak.mesh_peak_flops(devices[:1])
    eight = peak.mesh_peak_flops(devices)
    # measured per device on CPU: eight devices report about eight times one device's peak (timing noise aside)
    assert 3 * one < eight < 24 * one


def test_gin_sets_the_per_device_peak(tmp_path):
    from qwencoder_apps import train as cli

    cli.parse([str(cli.GIN_DIR / "stages/stage1_file_level.gin"), str(cli.GIN_DIR / "cpu/tiny.gin")],
              ['CODE_DIR = "c"', 'TEXT_DIR = "t"', 'MATH_DIR = "m"', "PEAK_FLOPS_PER_DEVICE = 1.5e11"])
    config, _ = cli.build(str(tmp_path))
    assert config.peak_flops_per_device == 1.5e11
    assert (config.model.attention_backend, config.model.remat_policy) == ("xla", "none")  # the CPU overlay
