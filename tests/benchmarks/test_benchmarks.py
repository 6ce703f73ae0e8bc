"""The benchmark scripts stay runnable: each measures a tiny preset end to end (figures are not asserted:
timing belongs to benchmarks/, never to tests; only that the numbers are well-formed and consistent)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import model_memory  # noqa: E402
import model_throughput  # noqa: E402


def test_throughput_benchmark_reports_tokens_and_mfu(capsys):
    peak = model_throughput.common.matmul_peak_flops(size=256, repeats=2)
    result = model_throughput.run("tiny", batch=2, sequence=32, steps=1, peak=peak)
    assert result["tokens_per_second"] > 0
    assert 0 < result["mfu"] < 1.5  # above 1 would mean the FLOP count or the peak is wrong
    assert "tiny: tokens_per_second=" in capsys.readouterr().out


def test_memory_benchmark_counts_at_least_the_train_state():
    result = model_memory.train_step_memory("tiny", batch=1, sequence=64, remat_policy="none")
    # params + two AdamW moments are arguments of the step; gradients live in temporaries or outputs
    assert result["argument_bytes"] >= 3 * result["state_bytes"] // 4
    assert result["peak_bytes"] >= result["state_bytes"]


@pytest.mark.parametrize("policy", ["full"])
def test_remat_lowers_peak_memory(policy):
    plain = model_memory.train_step_memory("tiny", batch=2, sequence=256, remat_policy="none")
    remat = model_memory.train_step_memory("tiny", batch=2, sequence=256, remat_policy=policy)
    assert remat["temp_bytes"] < plain["temp_bytes"]


def test_few_rows_benchmark_times_both_sides(capsys):
    import few_rows_matmul

    if not few_rows_matmul.few_rows.available():
        pytest.skip("the few-row kernel could not be built here")
    results = few_rows_matmul.main(["--rows", "2", "--shapes", "64x48,64x80t,48x16", "--megabytes", "1",
                                    "--repeats", "1"])
    assert [r["shape"] for r in results] == ["64x48", "64x80t", "48x16"]
    assert all(r["xla"] > 0 and r["kernel"] > 0 for r in results)
    assert all(r["packed4"] > 0 and r["packed8"] > 0 for r in results[:2]) and "packed4" not in results[2]
    out = capsys.readouterr().out
    assert "rows=2 64x80t: xla=" in out and "packed4=" in out
    with pytest.raises(ValueError, match="is not KxN"):
        few_rows_matmul.parse_shape("64by48")


def test_humaneval_instruct_resumes_from_its_results(tmp_path):
    """What a rerun skips: the problems already in RESULTS/<path>.jsonl (a torn last line dropped), in HumanEval's
    global blocks of 8; results made with another --max_new_tokens are refused with a one-line error."""
    import json

    import humaneval_instruct

    from qwencoder_jax.eval import humaneval

    problems = humaneval.load_problems(24)
    lines = [json.dumps({"task_id": f"HumanEval/{n}", "reply": "", "passed": n % 2 == 0, "seconds": 1.0,
                         "max_new_tokens": 512}) for n in list(range(8)) + [9]]
    results = tmp_path / "ours.jsonl"
    results.write_text("\n".join(lines) + '\n{"task_id": "HumanEval/10", "rep')
    done = humaneval_instruct.read_results(results, 512)
    assert sorted(done) == sorted(f"HumanEval/{n}" for n in list(range(8)) + [9])
    blocks = list(humaneval_instruct._blocks(problems, set(done)))
    assert [[p["task_id"] for p in block][0] for block in blocks] == ["HumanEval/8", "HumanEval/16"]
    assert len(blocks[0]) == 8  # the whole global block, as an uninterrupted run batches it
    assert "pass@1=44.4 (4/9 problems done)" in humaneval_instruct.summary("ours", done)
    with pytest.raises(humaneval_instruct.BenchmarkError, match="--max_new_tokens 512, not 256"):
        humaneval_instruct.read_results(results, 256)
    with pytest.raises(SystemExit) as exit_info:
        humaneval_instruct.main(["--results", str(tmp_path), "--paths", "ours,tf"])
    assert exit_info.value.code == 2
