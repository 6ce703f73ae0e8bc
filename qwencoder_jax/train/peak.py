"""The MFU denominator: the peak FLOP/s of every device a step runs on.

TPUs and GPUs: the chip's dense bf16 peak from the vendors' data sheets (a TPU v5p chip is one JAX device);
CPUs: this device's measured float32 matmul peak. Either way times the number of devices, because the MFU
numerator counts the FLOPs of the global batch.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

# (substring of jax's device_kind, dense bf16 TFLOP/s per device); first match wins, so longer names come first
PEAK_BF16_TFLOPS = (
    ("TPU v6", 918.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0),
    ("TPU v4", 275.0), ("TPU v3", 123.0),
    ("B200", 2250.0), ("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L4", 121.0),
)


def table_peak_flops(device_kind: str) -> float | None:
    """The data-sheet bf16 peak of one device of this kind, or None if the table does not know it."""
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def measure_peak_flops(size: int = 1024, repeats: int = 4, device: Any = None) -> float:
    """Best float32 matmul FLOP/s of one device (as in benchmarks/common.py)."""
    a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def mesh_peak_flops(devices: Sequence[Any], per_device: float | None = None) -> float:
    """Peak FLOP/s of all `devices` together: per_device (if given), else the table's figure for accelerators,
    else the measured matmul peak of the first device, times the device count."""
    if per_device is None and devices[0].platform != "cpu":
        per_device = table_peak_flops(devices[0].device_kind)
    if per_device is None:
        per_device = measure_peak_flops(device=devices[0])
    return per_device * len(devices)
