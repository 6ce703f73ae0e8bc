"""XLA TPU compiler flags, which libtpu reads from LIBTPU_INIT_ARGS once, when it loads.

    resolve("async_collectives")                        # a profile's flags
    resolve("async_collectives --xla_tpu_foo=true")     # a profile, then more flags as written

The launchers hand one resolved string to the ahead-of-time check and to every worker, so the check compiles the
program the pod will run. Figures for the profile: docs/tpu_aot.md (XLA TPU flags).
"""

from __future__ import annotations

import shlex

PROFILES = {
    # With fsdp over a 3-D torus of 64 chips or more (v5p-128 and up), XLA TPU otherwise turns the weights'
    # all-gathers into all-reduces of whole tensors; with these it keeps them all-gathers, run asynchronously.
    "async_collectives": (
        "--xla_tpu_enable_async_collective_fusion=true",
        "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
        "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
        "--xla_tpu_overlap_compute_collective_tc=true",
        "--xla_enable_async_all_gather=true",
        "--xla_tpu_prefer_async_allgather_to_allreduce=true",
    ),
}


def resolve(spec: str) -> str:
    """The flags a spec names: profile names and `--flag[=value]` words, in order; ValueError for anything else."""
    flags: list[str] = []
    try:
        words = shlex.split(spec or "")
    except ValueError as error:
        raise ValueError(f"libtpu flags {spec!r}: {error}") from None
    for word in words:
        if word in PROFILES:
            flags += PROFILES[word]
        elif word.startswith("--") and len(word) > 2 and " " not in word:
            flags.append(word)
        else:
            raise ValueError(f"libtpu flags: {word!r} is neither a profile ({', '.join(sorted(PROFILES))}) nor a "
                             f"--flag[=value]")
    return " ".join(flags)


def combined(environment: str | None, spec: str) -> str:
    """LIBTPU_INIT_ARGS as libtpu will see it: the environment's flags, then the spec's (later ones win)."""
    return " ".join(part for part in ((environment or "").strip(), resolve(spec)) if part)
