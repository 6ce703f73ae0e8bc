"""tcmalloc for the processes that train: `use_tcmalloc()` first thing in an entry point.

Why. XLA's CPU runtime allocates each step's large temporaries (logits blocks, gradients the size of the
embedding, optimizer outputs) with the C allocator. glibc serves blocks above its mmap threshold (at most 32 MiB)
with fresh mmap'd pages and unmaps them on free, so every step faults in and zeroes those pages again: on the
reference CPU configuration (benchmarks/train_throughput.py) that was 38,000-70,000 page faults and about a third
of the step's time. tcmalloc keeps freed spans for reuse (0 faults per step in steady state). TPU VM images
preload tcmalloc for the same reason.

How. The allocator must be chosen before the process starts, so `use_tcmalloc()` re-executes the same command
line once with LD_PRELOAD naming libtcmalloc_minimal (Debian's libtcmalloc-minimal4, installed by
scripts/apt-packages.txt). It does nothing when tcmalloc is already preloaded, when the library is not installed,
or when QWENCODER_TCMALLOC=0 (the way to measure with the system allocator).
"""

from __future__ import annotations

import glob
import os
import sys

ENV_SWITCH = "QWENCODER_TCMALLOC"
_PATTERNS = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4",
             "/usr/lib64/libtcmalloc_minimal.so.4")


def tcmalloc_library() -> str | None:
    """The installed libtcmalloc_minimal, or None."""
    for pattern in _PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def active() -> str:
    """'tcmalloc' when this process runs with tcmalloc preloaded, else 'system'."""
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def use_tcmalloc() -> None:
    """Re-execute this process with tcmalloc preloaded, if it is installed, wanted and not loaded yet. Call it
    before anything else starts (threads, JAX): the process image is replaced."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or active() == "tcmalloc":
        return
    library = tcmalloc_library()
    if library is None:
        return
    preload = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD", "")]))
    env = dict(os.environ, LD_PRELOAD=preload)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
