"""Sandbox throughput: HumanEval's 164 canonical programs (all pass) run through the bubblewrap sandbox with 2 and
1 workers, against the same programs run as plain subprocesses (no namespaces, uid change or sweep; same rlimits,
2 workers) measured in the same run. Prints programs/s and the ratio sandboxed / unsandboxed wall time.

    python benchmarks/sandbox_throughput.py [--limit N] [--repeats R]

The unsandboxed reference is sandbox.run(unsandboxed=True), which prints a warning per program: stderr is
silenced for that pass.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

from qwencoder_jax import cli_flags
from qwencoder_jax.eval import humaneval, sandbox


def jobs(limit: int | None, unsandboxed: bool) -> list[dict]:
    return [humaneval.execution_job(humaneval.program(p, p["canonical_solution"]), unsandboxed)
            for p in humaneval.load_problems(limit)]


@contextlib.contextmanager
def quiet_stderr():
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def timed(job_list: list[dict], workers: int) -> float:
    start = time.perf_counter()
    results = sandbox.run_many(job_list, workers=workers)
    seconds = time.perf_counter() - start
    failed = [i for i, r in enumerate(results) if not r.passed]
    if failed:
        raise SystemExit(f"canonical programs {failed[:5]} did not pass: {results[failed[0]]}")
    return seconds


def main(argv=None) -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="first N HumanEval problems (default all 164)")
    parser.add_argument("--repeats", type=int, default=1, help="passes per setting; the median is printed")
    args = parser.parse_args(argv)
    sandbox.check_available()
    sandboxed, plain = jobs(args.limit, False), jobs(args.limit, True)
    figures: dict[str, list[float]] = {"sandbox, 2 workers": [], "sandbox, 1 worker": [], "unsandboxed, 2 workers": []}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every setting alike
        figures["sandbox, 2 workers"].append(timed(sandboxed, 2))
        figures["sandbox, 1 worker"].append(timed(sandboxed, 1))
        with quiet_stderr():
            figures["unsandboxed, 2 workers"].append(timed(plain, 2))
    count = len(sandboxed)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    reference = medians["unsandboxed, 2 workers"]
    for name, seconds in medians.items():
        print(f"{name:24s} {count} programs in {seconds:6.2f} s  ({count / seconds:6.1f} programs/s)  "
              f"x{seconds / reference:.2f} the unsandboxed time")
    print(f"sandbox overhead (2 workers): {medians['sandbox, 2 workers'] / reference:.2f}x; "
          f"2 workers vs 1: {medians['sandbox, 1 worker'] / medians['sandbox, 2 workers']:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
