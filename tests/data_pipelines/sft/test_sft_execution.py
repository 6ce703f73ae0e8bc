"""The multilingual sandbox runner: each language's hello world passes and a failing program fails, compile errors
are failures carrying the compiler's message, and validation keeps only samples whose code passes its tests."""

import pytest

from data_pipelines.sft import chatml, execution
from qwencoder_jax.eval import sandbox

try:
    sandbox.check_available()
except sandbox.SandboxUnavailable as error:  # the module is still collected; the reason is shown
    pytestmark = pytest.mark.skip(reason=f"sandbox unavailable: {error}")

HELLO = execution.HELLO_WORLD
FAILING = {
    "Python": "assert 1 + 1 == 3",
    "JavaScript": 'throw new Error("boom")',
    "Go": 'package main\nimport "os"\nfunc main() { os.Exit(2) }\n',
    "Rust": 'fn main() { assert_eq!(1 + 1, 3); }\n',
    "Java": 'public class Main { public static void main(String[] a) { System.exit(1); } }\n',
    "C": "int main(void) { return 1; }\n",
    "C++": "int main() { return 3; }\n",
    "Shell": "false",
}
BROKEN = {  # does not compile (or, interpreted, fails the syntax check)
    "Python": "def f(:\n", "JavaScript": "function (", "Go": "package main\nfunc main() { x := }\n",
    "Rust": 'fn main() { let x: i32 = "s"; }\n', "Java": "public class Main { int x = ; }\n",
    "C": "int main(void) { return missing; }\n", "C++": "int main() { std::string s; }\n", "Shell": "if then fi",
}
INTERPRETED = ("Python", "JavaScript", "Shell")


def test_hello_world_passes_and_failing_programs_fail_in_every_language():
    # one compile per compiled language here; their failing and broken programs run in the slow test below
    jobs = [(lang, program) for lang, program in HELLO.items()]
    jobs += [(lang, FAILING[lang]) for lang in INTERPRETED] + [(lang, BROKEN[lang]) for lang in INTERPRETED]
    jobs += [("C", BROKEN["C"])]
    outcomes = execution.run_programs(jobs, workers=2)
    by_job = dict(zip([(lang, program) for lang, program in jobs], outcomes))
    for lang, program in HELLO.items():
        assert by_job[lang, program].passed, (lang, by_job[lang, program])
    for lang in INTERPRETED:
        assert by_job[lang, FAILING[lang]].reason == "test_failed"
        assert by_job[lang, BROKEN[lang]].reason == "compile_error"
    broken_c = by_job["C", BROKEN["C"]]
    assert broken_c.reason == "compile_error" and "missing" in broken_c.detail and "undeclared" in broken_c.detail


@pytest.mark.slow
@pytest.mark.parametrize("language", sorted(set(HELLO) - set(INTERPRETED)))
def test_compiled_languages_fail_and_report_compiler_messages(language):
    failing, broken = execution.run_programs([(language, FAILING[language]), (language, BROKEN[language])])
    assert not failing.passed and failing.reason in ("test_failed", "killed")
    assert broken.reason == "compile_error" and "error" in broken.detail.lower()


def test_validation_keeps_only_samples_whose_code_passes_its_tests():
    def record(answer, tests, language="Python"):
        return {"id": answer[:12], "language": language, "tests": tests, "messages": [
            {"role": "user", "content": "Write add(a, b)."}, {"role": "assistant", "content": answer}]}

    right = record("Here:\n```python\ndef add(a, b):\n    return a + b\n```", "assert add(2, 3) == 5")
    wrong = record("```python\ndef add(a, b):\n    return a - b\n```", "assert add(2, 3) == 5")
    prose = record("Just add them.", "assert add(2, 3) == 5")
    looping = record("```python\ndef add(a, b):\n    while True: pass\n```", "add(1, 2)")
    cobol = record("```cobol\nADD A TO B\n```", "x", language="COBOL")
    tally = chatml.Tally()
    kept = execution.validate([right, wrong, prose, looping, cobol], tally, wall_seconds=3, cpu_seconds=2)
    assert [r["id"] for r in kept] == [right["id"]] and "execution" in kept[0]
    assert tally.as_dict() == {"read": 5, "kept": 1, "rejected": {
        "execution:no_code": 1, "execution:test_failed": 1, "execution:unsupported_language": 1,
        "execution:timeout" if tally.rejected["execution:timeout"] else "execution:killed": 1}}
    assert "AssertionError" in next(p.detail for p in tally.problems if p.reason == "execution:test_failed")


def test_cli_validate_writes_the_passing_records(tmp_path, capsys):
    import json

    from data_pipelines.sft.__main__ import main

    records = [{"language": "Python", "tests": "assert double(4) == 8", "messages": [
        {"role": "user", "content": "double(x)?"}, {"role": "assistant", "content": f"```python\n{body}\n```"}]}
        for body in ("def double(x):\n    return 2 * x", "def double(x):\n    return x + 2")]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert main(["validate", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")]) == 0
    assert "read 2, kept 1, rejected 1 (execution:test_failed 1)" in capsys.readouterr().out
    (kept,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert "2 * x" in kept["messages"][1]["content"]
