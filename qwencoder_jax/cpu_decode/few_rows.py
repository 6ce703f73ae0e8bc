"""Matmuls of a few rows on CPU: the weight-streaming kernel a decode step uses (few_rows_matmul.cc).

    with few_rows.enabled():          # trace-time switch, set by the KV-cache decoder around a decode step
        y = few_rows.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))

`dot_general` has `jax.lax.dot_general`'s signature; the model's projections (flax DenseGeneral's
`dot_general`) and output heads call it. It routes to the kernel only when all of these hold, else it is
`lax.dot_general` itself: the switch is on; the computation lowers for CPU (`lax.platform_dependent`, so the same
code runs on TPU/GPU unchanged); x and w are float32 with no batch dimensions; the product of x's free dimensions
is at most MAX_ROWS; w's contracted dimensions lead (row-major [k, n]) or trail ([n, k], a tied embedding table
used as the head); and the kernel library could be built. The kernel has no gradient and no sharding rule, so the
decoder turns the switch on only for unsharded decoding (never under a mesh, never under jax.grad).

Why a kernel: a decode step reads every weight once and XLA's CPU dot, with 8 rows, streams a weight at about
half the machine's read bandwidth (benchmarks/decode_throughput.py measures both sides). The library is compiled
on first use with the system C++ compiler (g++, scripts/apt-packages.txt) against jaxlib's XLA FFI headers, for
this machine's instruction set, into a cache directory keyed by source, jaxlib version and CPU flags
($QWENCODER_KERNEL_CACHE, default ~/.cache/qwencoder_jax/kernels). If it cannot be built, decoding falls back to
XLA's dot after one warning that says why; QWENCODER_FEW_ROWS=0 turns the kernel off.
The same library holds the packed-weight matmul of qwencoder_jax.cpu_decode.packed (HANDLERS).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import threading
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

_state = threading.local()


@contextlib.contextmanager
def enabled(on: bool = True):
    """Within this block (at trace time), `dot_general` may route few-row float32 matmuls to the kernel.

    Enter it inside the function being traced (as the decoder does): the switch is read while tracing and is not
    part of jit's cache key, so a function traced once with it off keeps XLA's dots."""
    previous = getattr(_state, "on", False)
    _state.on = bool(on) and os.environ.get("QWENCODER_FEW_ROWS", "1") != "0"
    try:
        yield
    finally:
        _state.on = previous


def is_enabled() -> bool:
    return getattr(_state, "on", False)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwencoder_jax" / "kernels"
    return Path(os.environ.get("QWENCODER_KERNEL_CACHE", default))


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

    transposed_w = _kernel_layout(lhs, rhs, dimension_numbers) if is_enabled() else None
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
