"""The data-pipeline benchmark scripts stay runnable (figures are printed by the scripts, never asserted)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import dedup_throughput  # noqa: E402
import filter_throughput  # noqa: E402
from data_pipelines import dedup  # noqa: E402


def test_dedup_benchmark_both_sides_on_a_small_input():
    pytest.importorskip("datasketch")
    texts = dedup_throughput.stdlib_documents(limit=150)
    texts += [texts[0], texts[1].replace("\n", " \n")]  # two planted duplicates
    config = dedup.MinHashConfig()
    _, ours_candidates, ours_verified, clusters = dedup_throughput.run_ours(texts, config)
    _, theirs, (bands, rows) = dedup_throughput.run_datasketch(texts, config)
    assert (bands, rows) == dedup.optimal_bands_rows(config.threshold, config.num_permutations)
    assert (0, 150) in ours_verified and (0, 150) in theirs and ours_verified <= ours_candidates
    assert "precision=" in dedup_throughput.quality(ours_verified, theirs, {})


def test_filter_benchmark_timing_function():
    filter_throughput._DOCUMENTS[:] = []
    from data_pipelines.document import Document
    filter_throughput._DOCUMENTS.extend(
        Document(str(i), "t", "code_file", "def f(x):\n    return x + %d\n" % i, "Python") for i in range(40))
    seconds, reasons = filter_throughput._timed(1, 1)
    assert seconds > 0 and reasons == {"kept": 40}
