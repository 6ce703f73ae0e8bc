"""Shared measurement helpers for benchmarks: the machine's matmul peak and robust step timing.

Every benchmark reports its figure beside a reference measured in the same run on the same machine (here: the
float32 matmul peak that MFU is computed against), because shared CPU machines drift from one run to the next.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp


def block(tree):
    return jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls after `warmup` calls (compilation happens in the warm-up)."""
    for _ in range(warmup):
        block(fn())
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        seconds.append(time.perf_counter() - start)
    return seconds


def matmul_peak_flops(size: int = 2048, dtype=jnp.float32, repeats: int = 8) -> float:
    """Best observed FLOP/s of a square matmul: the denominator of MFU on this machine."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    best = min(time_calls(lambda: matmul(a, b), repeats, warmup=2))
    return 2 * size**3 / best


def read_bandwidth(nbytes: int, repeats: int = 8) -> float:
    """Best observed bytes/s of summing a float32 buffer of `nbytes` (make it larger than the last-level cache
    to measure memory, not cache): the ceiling of any computation that must stream that many bytes."""
    buffer = jnp.ones((nbytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    best = min(time_calls(lambda: total(buffer), repeats, warmup=2))
    return buffer.size * 4 / best


def median(values: list[float]) -> float:
    return statistics.median(values)


def describe_device() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind} x{jax.device_count()}"
