"""Rule-filter throughput: docs/s and MB/s per core of the filter chain on the CPython standard library,
with 1 and 2 worker processes. Reference, measured in the same run on the same documents: the floor cost of
touching every document once (UTF-8 encode + splitlines), so the ratio says how many such passes the whole
chain costs; the 2-worker figure is also printed as a ratio to the 1-worker figure (scaling).

    python benchmarks/filter_throughput.py [--repeat N]
"""

from __future__ import annotations

import os
import collections
import multiprocessing
import time

from data_pipelines import ingest
from data_pipelines.document import Rejection
from data_pipelines.filters import CodeFilterConfig, apply_code_filters
from qwencoder_jax import cli_flags

_DOCUMENTS = []


def _filter_range(bounds):
    low, high = bounds
    reasons = collections.Counter()
    for doc in _DOCUMENTS[low:high]:
        result = apply_code_filters(doc, CodeFilterConfig())
        reasons[result.reason if isinstance(result, Rejection) else "kept"] += 1
    return reasons


def _timed(workers: int, repeat: int) -> tuple[float, collections.Counter]:
    step = max(1, len(_DOCUMENTS) // (workers * 16))
    ranges = [(i, i + step) for i in range(0, len(_DOCUMENTS), step)] * repeat
    totals = collections.Counter()
    if workers == 1:
        started = time.perf_counter()
        for bounds in ranges:
            totals.update(_filter_range(bounds))
        return time.perf_counter() - started, totals
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_filter_range, [(0, 0)] * workers)  # started outside the timing, as a pipeline's pool is
        started = time.perf_counter()
        for reasons in pool.imap_unordered(_filter_range, ranges):
            totals.update(reasons)
        return time.perf_counter() - started, totals


def main():
    parser = cli_flags.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1, help="passes over the corpus per timing")
    parser.add_argument("--best_of", type=int, default=2, help="timings per setting; the best is reported")
    arguments = parser.parse_args()
    _DOCUMENTS.extend(item for item in ingest.read_source(ingest.stdlib_source()) if not isinstance(item, Rejection))
    count = len(_DOCUMENTS) * arguments.repeat
    megabytes = sum(len(d.text.encode()) for d in _DOCUMENTS) * arguments.repeat / 1e6
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (other users' work shares them)")
    print(f"input: {len(_DOCUMENTS)} documents, {megabytes / arguments.repeat:.1f} MB (CPython stdlib files) "
          f"x {arguments.repeat}")
    started = time.perf_counter()
    for _ in range(arguments.repeat):
        for doc in _DOCUMENTS:
            doc.text.encode("utf-8", "surrogatepass")
            doc.text.splitlines()
    floor = time.perf_counter() - started
    print(f"reference (encode + splitlines): {count / floor:,.0f} docs/s, {megabytes / floor:.1f} MB/s per core")
    one, reasons = min(_timed(1, arguments.repeat) for _ in range(arguments.best_of))
    print(f"filter chain, 1 worker: {count / one:,.0f} docs/s, {megabytes / one:.2f} MB/s per core; "
          f"ratio to reference {floor / one:.3f} (chain costs {one / floor:.1f} reference passes)")
    two, reasons_two = min(_timed(2, arguments.repeat) for _ in range(arguments.best_of))
    assert reasons == reasons_two, "workers changed the filter outcome"
    print(f"filter chain, 2 workers: {count / two:,.0f} docs/s, {megabytes / two:.2f} MB/s "
          f"({count / two / 2:,.0f} docs/s, {megabytes / two / 2:.2f} MB/s per core); "
          f"scaling 1 -> 2 workers: {one / two:.2f}x")
    print("outcome:", dict(sorted(reasons.items())))


if __name__ == "__main__":
    main()
