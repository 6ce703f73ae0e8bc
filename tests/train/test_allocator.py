"""The trainer's entry points re-execute themselves once with tcmalloc preloaded (qwencoder_jax/allocator.py)."""

import os
import subprocess
import sys

import pytest

from qwencoder_jax import allocator

PROBE = ("from qwencoder_jax import allocator; allocator.use_tcmalloc(); "
         "maps = open('/proc/self/maps').read(); "
         "print(allocator.active(), 'libtcmalloc' in maps, flush=True)")


def _probe(**env):
    environment = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV_SWITCH)}
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True,
                            timeout=60, check=True)
    return result.stdout.split()


@pytest.mark.skipif(allocator.tcmalloc_library() is None, reason="libtcmalloc-minimal4 is not installed "
                    "(scripts/apt-packages.txt)")
def test_use_tcmalloc_reexecutes_with_tcmalloc_mapped():
    assert _probe() == ["tcmalloc", "True"]  # printed once: the re-executed process ran the rest


def test_the_switch_keeps_the_system_allocator():
    assert _probe(**{allocator.ENV_SWITCH: "0"}) == ["system", "False"]
