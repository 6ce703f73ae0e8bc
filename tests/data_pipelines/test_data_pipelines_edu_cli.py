"""`data_pipelines edu-score` against a dead endpoint: every failure counted with its reason, and a non-zero exit
when nothing was scored (a real refused TCP connection, no mock)."""

import json


def test_edu_score_with_nothing_scored_fails_naming_the_reason(tmp_path, capsys):
    from data_pipelines.__main__ import main

    output = tmp_path / "scores.jsonl"
    status = main(["edu-score", "--endpoint", "http://127.0.0.1:9/v1", "--source", "stdlib", "--limit", "2",
                   "--output", str(output)])
    captured = capsys.readouterr()
    assert status == 1
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["scored"] == 0 and summary["failed"] == 2
    (reason, count), = summary["failure_reasons"].items()
    assert count == 2 and "scoring endpoint http://127.0.0.1:9/v1/chat/completions failed" in reason
    assert captured.err.startswith("error: no document was scored (2 failed; scoring endpoint")
    assert [json.loads(line)["score"] for line in output.read_text().splitlines()] == [None, None]
