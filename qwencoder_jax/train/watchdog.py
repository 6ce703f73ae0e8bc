"""A stalled multi-process run ends with a clear error instead of hanging.

A dead peer is caught by jax.distributed's heartbeat, but a collective that never completes while every process
is alive (XLA:CPU can run two independent collectives in a different order in different processes, see
docs/reliability.md) blocks the main thread inside XLA forever. The watchdog thread notices that no step has
finished for `timeout_seconds` (counted from the first finished step, so compilation is not timed), prints
which step stalled, and ends the process with status 3; launch/local.py then stops the others, and a rerun
resumes from the last complete checkpoint.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

import jax


def _exit(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(3)  # the main thread is blocked inside XLA: a Python exception could not reach it


class Watchdog:
    def __init__(self, timeout_seconds: float, on_stall: Callable[[str], None] = _exit, poll_seconds: float = 1.0):
        self.timeout_seconds = timeout_seconds
        self._on_stall = on_stall
        self._poll_seconds = poll_seconds
        self._last: float | None = None
        self._step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="qwencoder-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def progress(self, step: int) -> None:
        """Step `step` finished (its metrics were read)."""
        self._step, self._last = step, time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            if self._last is not None and time.monotonic() - self._last > self.timeout_seconds:
                self._on_stall(f"[trainer] error: no step finished for {self.timeout_seconds:.0f} s after step "
                               f"{self._step} (process {_process_index()}): a collective is stuck; stopping. "
                               "Rerun to resume from the last complete checkpoint")
                return


def _process_index() -> int:
    return jax.process_index()
