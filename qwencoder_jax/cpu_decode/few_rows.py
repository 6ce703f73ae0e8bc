"""Matmuls of a few rows on CPU: the weight-streaming kernel of a decode step (few_rows_matmul.cc).

    y = few_rows.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))   # lax.dot_general's signature

It routes to the kernel only where it applies (CPU lowering via `lax.platform_dependent`, float32, no batch
dimensions, at most MAX_ROWS free rows of x, w's contracted dimensions leading or trailing, library built), else it
is `lax.dot_general`. Only the decode-step interceptor (packed_weights.use) calls it: the kernel has no gradient
and no sharding rule. The library is compiled on first use with g++ against jaxlib's FFI headers into
$XDG_CACHE_HOME/qwencoder_jax/kernels; if that fails, decoding falls back to XLA's dot after one warning.
Why a kernel, with figures: docs/CPU_DECODING.md. The same library holds packed.py's block-quantised matmul.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

SOURCE = Path(__file__).with_name("few_rows_matmul.cc")
TARGET = "qwencoder_few_rows_matmul"
SYMBOL = "QwencoderFewRowsMatmul"
# every handler the library exports, by custom-call target (qwencoder_jax.cpu_decode.packed uses the second)
HANDLERS = {TARGET: SYMBOL, "qwencoder_packed_matmul": "QwencoderPackedMatmul"}
MAX_ROWS = 16  # beyond this XLA's own dot is as good (rows reuse each loaded weight enough)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def packed_kernel_is_fast() -> bool:
    """Whether the packed-weight kernel has its vectorised unpacking here (AVX-512). Built for AVX2 it decodes slower
    than the float32 params do (docs/real_weights.md), so the Generator then defaults to the float path."""
    return "avx512f" in _cpu_flags().split()


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwencoder_jax" / "kernels"


def library_path() -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + jaxlib.__version__.encode() + _cpu_flags().encode()).hexdigest()[:16]
    return cache_dir() / f"few_rows_matmul-{key}.so"


def build(path: Path) -> Path:
    """Compiles the kernel library to `path` (atomically: concurrent builders each write a private file)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++) on PATH; scripts/setup.sh installs one")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        out = Path(scratch) / path.name
        command = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno",
                   f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(out)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
        os.replace(out, path)
    return path


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Builds (once per machine) and registers the kernel; False, after one warning, if that is impossible."""
    try:
        path = library_path()
        if not path.is_file():
            build(path)
        library = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in HANDLERS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
        return True
    except (OSError, RuntimeError) as error:
        warnings.warn(f"few-row matmul kernel unavailable, decoding uses XLA's dot: {error}", stacklevel=2)
        return False


def matmul(x_mk: jax.Array, w: jax.Array, transposed_w: bool = False) -> jax.Array:
    """x [m, k] @ w [k, n] (or @ w.T for w [n, k] when transposed_w), float32, by the kernel (CPU only)."""
    if not available():
        raise RuntimeError("the few-row matmul kernel could not be built (see the warning above)")
    n = w.shape[0] if transposed_w else w.shape[1]
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x_mk.shape[0], n), jnp.float32))
    return call(x_mk, w, transposed_w=transposed_w)


def _kernel_layout(lhs, rhs, dimension_numbers) -> bool | None:
    """transposed_w if this contraction is one the kernel computes (x's trailing dims against w's leading or
    trailing dims, no batch dims), else None."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if lhs_batch or rhs_batch or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return None
    count = len(lhs_contract)
    if tuple(lhs_contract) != tuple(range(lhs.ndim - count, lhs.ndim)):
        return None
    if math.prod(lhs.shape[:lhs.ndim - count]) > MAX_ROWS:
        return None
    if tuple(rhs_contract) == tuple(range(count)):
        return False
    if tuple(rhs_contract) == tuple(range(rhs.ndim - count, rhs.ndim)):
        return True
    return None


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """`lax.dot_general`, computed by the few-row kernel on CPU where it applies (see the module docstring)."""
    def xla(lhs, rhs):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type, **kwargs)

    transposed_w = _kernel_layout(lhs, rhs, dimension_numbers)
    if (transposed_w is None or preferred_element_type not in (None, jnp.float32)
            or jax.default_backend() != "cpu" or not available()):  # no compiler run on TPU/GPU hosts
        return xla(lhs, rhs)
    count = len(dimension_numbers[0][0])
    free_lhs = lhs.shape[:lhs.ndim - count]
    free_rhs = rhs.shape[:rhs.ndim - count] if transposed_w else rhs.shape[count:]
    contracted = math.prod(lhs.shape[lhs.ndim - count:])

    def kernel(lhs, rhs):
        w = rhs.reshape(-1, contracted) if transposed_w else rhs.reshape(contracted, -1)
        return matmul(lhs.reshape(-1, contracted), w, transposed_w).reshape(*free_lhs, *free_rhs)

    return jax.lax.platform_dependent(lhs, rhs, cpu=kernel, default=xla)
