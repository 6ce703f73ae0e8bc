"""tcmalloc for the processes that train: `use_tcmalloc()` first thing in an entry point.

It re-executes the command once with libtcmalloc_minimal preloaded; QWENCODER_TCMALLOC=0 turns that off (the one
environment switch of the library, because it acts before any flag is parsed).

Design notes: docs/TRAINING.md, section `qwencoder_jax/allocator.py`.
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
