"""Options shared by the evaluation tasks, and how problems are split between evaluation processes."""

from __future__ import annotations

import dataclasses
from typing import Sequence, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    limit: int | None = None               # first N problems of each task (None: all)
    num_samples: int = 1                   # completions per HumanEval problem (pass@k needs k <= this)
    chat: bool = False                     # HumanEval as an instruct model: chat template, code from the reply
    temperature: float = 0.0               # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    workers: int = 2                       # concurrent sandboxed programs
    unsandboxed: bool = False              # run model-written code without isolation (loud warning each run)
    execute_infilling: bool = False        # also run HumanEval's tests on the filled-in programs
    needle_context_tokens: tuple[int, ...] = (256, 512, 1024)
    needle_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    needle_trials: int = 1                 # needles per (depth, length) cell
    math_max_new_tokens: int = 512
    perplexity_documents: int = 64         # documents per data source
    perplexity_split: str = "validation"
    perplexity_max_tokens: int = 2048      # a longer document is scored in windows of this many tokens
    data_sources: tuple[tuple[str, str], ...] = ()  # (name, dataset directory) pairs for perplexity

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if any(not 0.0 <= depth <= 1.0 for depth in self.needle_depths):
            raise ValueError(f"needle depths are fractions in [0, 1], got {self.needle_depths}")


def limited(items: Sequence[T], limit: int | None) -> list[T]:
    return list(items if limit is None else items[:limit])


def this_process(items: Sequence[T], process_index: int, process_count: int,
                 block_size: int = 1) -> list[tuple[int, T]]:
    """(global index, item) pairs this process handles: blocks of `block_size` consecutive items dealt out in
    turn. Tasks generate one block per call, so a block's batch (and hence its numerics) is the same whatever the
    number of processes: 2 processes reproduce 1 process exactly."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
    return [(i, item) for i, item in enumerate(items) if (i // block_size) % process_count == process_index]


def blocks(indexed: Sequence[tuple[int, T]], block_size: int) -> list[list[tuple[int, T]]]:
    """Groups this process's (index, item) pairs into the global blocks of `block_size` they came from."""
    grouped: dict[int, list[tuple[int, T]]] = {}
    for index, item in indexed:
        grouped.setdefault(index // block_size, []).append((index, item))
    return [grouped[key] for key in sorted(grouped)]
