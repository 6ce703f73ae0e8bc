"""The synthesis and judge clients against a real local HTTP server (http.server in a thread) standing in for a
model deterministically: retries after 500s, a hanging server (timeout), malformed JSON (counted rejection)."""

import dataclasses
import http.server
import json
import threading
import time

import pytest

from data_pipelines.sft import chatml, judge, models, synthesis


class StandIn(http.server.BaseHTTPRequestHandler):
    """Behaviour by path prefix: /ok, /flaky (two 500s then answers), /hang, /garbage, /judge-low."""
    calls: dict = {}

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind = self.path.split("/")[1]
        count = StandIn.calls[kind] = StandIn.calls.get(kind, 0) + 1
        if kind == "flaky" and count <= 2:
            return self._send(500, b"overloaded")
        if kind == "hang":
            time.sleep(2)
        if kind == "garbage":
            return self._send(200, b"{\"choices\": [{\"message\": ")
        if kind == "refuse":
            return self._send(404, b"no such model")
        prompt = body["messages"][-1]["content"]
        if prompt.startswith("Score this"):
            value = 2 if kind == "judge-low" else 8
            names = [line[2:].split(":")[0] for line in prompt.splitlines() if line.startswith("- ")]
            content = "Here you go: " + json.dumps({"scores": {name: value for name in names}})
        elif "code snippet" in prompt:
            content = f"Write a function like this one ({len(prompt)} chars of context)."
        else:
            content = "```python\ndef solve():\n    return 42\n```"
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode())

    def _send(self, status, payload):
        try:
            self.send_response(status)
        except (BrokenPipeError, ConnectionResetError):
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting: the point of /hang
            pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def endpoint(server, kind, **options):
    options = {"timeout_seconds": 5.0, "retries": 3, "backoff_seconds": 0.01} | options
    return models.ChatEndpoint(models.EndpointConfig(base_url=f"{server}/{kind}/v1", **options))


SNIPPET = synthesis.Snippet("lib/area.py", "Python", "def area(w, h):\n    return w * h\n" * 3)


def test_synthesis_makes_a_chatml_pair_with_provenance(server):
    tally = chatml.Tally()
    (record,) = synthesis.synthesize([SNIPPET], endpoint(server, "ok"), None, tally)
    assert chatml.check_messages(record["messages"]) is None
    assert record["messages"][0]["content"].startswith("Write a function") and "42" in record["messages"][1]["content"]
    assert record["source_id"] == "lib/area.py" and record["language"] == "Python" and tally.kept == 1


def test_server_errors_are_retried_with_backoff_then_succeed(server):
    sleeps = []
    client = models.ChatEndpoint(models.EndpointConfig(base_url=f"{server}/flaky/v1", backoff_seconds=0.01),
                                 sleep=lambda s: (sleeps.append(s), time.sleep(s)))
    assert "42" in client([{"role": "user", "content": "solve"}])
    assert client.stats == {"requests": 1, "attempts": 3, "retries": 2} and sleeps == [0.01, 0.02]


def test_a_hanging_server_times_out_and_the_sample_is_counted(server):
    tally = chatml.Tally()
    start = time.perf_counter()
    records = synthesis.synthesize([SNIPPET], endpoint(server, "hang", timeout_seconds=0.3, retries=1), None, tally)
    assert records == [] and tally.rejected == {"synthesis:timeout": 1}
    assert time.perf_counter() - start < 1.8  # two attempts of 0.3 s, not the server's 2 s


def test_malformed_json_is_a_counted_rejection_not_a_crash(server):
    tally = chatml.Tally()
    client = endpoint(server, "garbage")
    assert synthesis.synthesize([SNIPPET, SNIPPET], client, None, tally) == []
    assert tally.rejected == {"synthesis:malformed_response": 2} and "not JSON" in tally.problems[0].detail
    assert client.stats["retries"] == 0


def test_a_client_error_is_not_retried(server):
    client = endpoint(server, "refuse")
    with pytest.raises(models.ModelError, match="HTTP 404.*model name"):
        client([{"role": "user", "content": "x"}])
    assert client.stats["attempts"] == 1


def test_checklist_judge_stores_scores_per_criterion_and_applies_the_threshold(server, tmp_path):
    records = synthesis.synthesize([SNIPPET], endpoint(server, "ok"), None, chatml.Tally())
    checklist = tmp_path / "checklist.json"
    checklist.write_text(json.dumps({"threshold": 0.5, "scale": 10, "criteria": [
        {"name": "consistency", "question": "Consistent?", "weight": 3},
        {"name": "code_exists", "question": "Code present?", "weight": 1}]}))
    config = judge.JudgeConfig.from_json(str(checklist))
    tally = chatml.Tally()
    kept, below = judge.judge(records, endpoint(server, "ok"), tally, config)
    assert len(kept) == 1 and kept[0]["judge"] == {"scores": {"consistency": 8.0, "code_exists": 8.0}, "score": 0.8}
    kept, below = judge.judge(records, endpoint(server, "judge-low"), tally, config)
    assert kept == [] and below[0]["judge"]["score"] == 0.2
    kept, below = judge.judge(records, endpoint(server, "garbage"), tally, config)
    assert tally.as_dict() == {"read": 3, "kept": 1, "rejected": {"judge:below_threshold": 1,
                                                                  "judge:malformed_response": 1}}
    # the report's nine-point checklist is the default, and a score missing a criterion is rejected
    with pytest.raises(models.ModelError, match="relevance.*scored None"):
        judge.parse_scores('{"scores": {"consistency": 3}}', judge.JudgeConfig())
    checklist.write_text('{"treshold": 0.5}')
    with pytest.raises(ValueError, match="unknown checklist keys"):
        judge.JudgeConfig.from_json(str(checklist))


def test_cli_synthesize_then_judge_print_their_counts(server, tmp_path, capsys):
    from data_pipelines.sft.__main__ import main

    (tmp_path / "area.py").write_text("def area(width, height):\n    return width * height\n")
    (tmp_path / "tiny.py").write_text("x = 1\n")
    assert main(["synthesize", "--files", str(tmp_path / "area.py"), str(tmp_path / "tiny.py"),
                 "--model", f"{server}/ok/v1", "--output", str(tmp_path / "pairs.jsonl")]) == 0
    assert "read 2, kept 1, rejected 1 (synthesis:snippet_too_short 1)" in capsys.readouterr().out
    assert main(["judge", "--input", str(tmp_path / "pairs.jsonl"), "--model", f"{server}/judge-low/v1",
                 "--output", str(tmp_path / "judged.jsonl")]) == 0
    assert "read 1, kept 0, rejected 1 (judge:below_threshold 1)" in capsys.readouterr().out
    (below,) = [json.loads(line) for line in open(str(tmp_path / "judged.jsonl") + ".below_threshold.jsonl")]
    assert set(below["judge"]["scores"]) == {c.name for c in judge.REPORT_CHECKLIST}


def test_the_shipped_checklist_is_the_reports_nine_points():
    import os

    path = os.path.join(os.path.dirname(judge.__file__), "checklist.json")
    assert judge.JudgeConfig.from_json(path) == judge.JudgeConfig() and len(judge.REPORT_CHECKLIST) == 9


def test_synthesis_through_a_local_checkpoint(tmp_path):
    """`checkpoint:PATH` drives synthesis with our own Generator (a random tiny Qwen-vocabulary model: the text is
    noise, but every request is rendered as ChatML, decoded and either kept or counted)."""
    import jax

    from qwencoder_jax import checkpoints
    from qwencoder_jax.model.config import get_preset
    from qwencoder_jax.model.transformer import init_params

    config = get_preset("tiny", vocab_size=151936)
    checkpoints.save_model(tmp_path / "tiny", config, init_params(config, jax.random.key(0)))
    model = models.model_from_spec(f"checkpoint:{tmp_path / 'tiny'}")
    assert isinstance(model, models.LocalCheckpointModel)
    model.sampling = dataclasses.replace(model.sampling, max_new_tokens=6)
    tally = chatml.Tally()
    records = synthesis.synthesize([SNIPPET, SNIPPET], model, None, tally)
    assert tally.kept + sum(tally.rejected.values()) == 2 and tally.kept == len(records)
    for record in records:
        assert chatml.check_messages(record["messages"]) is None
        assert record["messages"][0]["content"] and record["messages"][1]["content"]
