"""The unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), per problem, then averaged.

Computed as a running product so that n in the hundreds does not overflow binomial coefficients.
"""

from __future__ import annotations

from typing import Sequence


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes."""
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"pass@k needs 0 <= correct ({num_correct}) <= samples ({num_samples})")
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass@{k} needs 1 <= k <= samples per problem ({num_samples}); draw more samples")
    if num_samples - num_correct < k:
        return 1.0
    all_fail = 1.0
    for drawn in range(num_samples - num_correct + 1, num_samples + 1):
        all_fail *= 1.0 - k / drawn
    return 1.0 - all_fail


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems (each problem may have its own sample count)."""
    if len(num_samples) != len(num_correct):
        raise ValueError(f"{len(num_samples)} sample counts but {len(num_correct)} correct counts")
    if not num_samples:
        raise ValueError("pass@k of zero problems is undefined")
    return sum(pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct)) / len(num_samples)


def reported_ks(num_samples: int, candidates: Sequence[int] = (1, 10, 100)) -> list[int]:
    """The conventional k values that n samples per problem support."""
    return [k for k in candidates if k <= num_samples]
