"""Coarse-to-fine fastText quality stages, and the educational scorer against a real local HTTP server."""

import http.server
import json
import random
import threading
import time

import pytest

from data_pipelines.document import Document
from data_pipelines.quality import (CoarseToFineConfig, EndpointConfig, OpenAICompatibleScorer,
                                    classifier_from_scores, coarse_to_fine, educational_scores,
                                    parse_educational_score, probability_good, with_quality)

TOPICS = ["sorting", "parsing", "caching", "retrying", "hashing", "logging", "streaming", "batching"]


def _good(generator, index):
    topic = generator.choice(TOPICS)
    return (f'def {topic}_step_{index}(items):\n    """Return the {topic} result for items, explained step by step."""\n'
            f"    # walk through every item once and keep the running result\n    result = []\n"
            f"    for item in items:\n        # each item is checked before it is used\n"
            f"        result.append(item)\n    return result\n")


def _bad(generator, index):
    return " ".join(f"{generator.randrange(10**6):x};{generator.choice('{}[]()<>')}" for _ in range(60))


@pytest.fixture(scope="module")
def corpus():
    generator = random.Random(3)
    good = [Document(f"g{i:03d}", "t", "code_file", _good(generator, i), "Python") for i in range(80)]
    bad = [Document(f"b{i:03d}", "t", "code_file", _bad(generator, i), "Python") for i in range(80)]
    return good, bad


def test_coarse_to_fine_assigns_stages(corpus):
    good, bad = corpus
    result = coarse_to_fine(good[:10], good[10:] + bad, CoarseToFineConfig(stage_thresholds=(0.5, 0.7, 0.9)))
    assert len(result.classifiers) == len(result.recalled_per_stage) <= 3
    assert result.recalled_per_stage == sorted(result.recalled_per_stage, reverse=True)  # nested stages
    good_stages = [result.stage_of[d.id] for d in good[10:]]
    bad_stages = [result.stage_of[d.id] for d in bad]
    # coarse stage 1 lets some noise through; the finer stages remove it and keep the good documents
    assert sum(s == 3 for s in good_stages) >= 0.9 * len(good_stages)
    assert sum(s >= 2 for s in bad_stages) <= 0.05 * len(bad_stages)
    assert sum(s >= 1 for s in bad_stages) <= 0.5 * len(bad_stages)
    scored = with_quality(good[10:] + bad, result)
    assert {d.quality for d in scored} <= {0.0, 1.0, 2.0, 3.0}


class _StandInModel(http.server.BaseHTTPRequestHandler):
    """Deterministic OpenAI-compatible stand-in: score = comment lines in the extract (at most 5). The first
    request fails with HTTP 500 and the second stalls past the client's timeout, to exercise retries."""

    requests = 0

    def do_POST(self):
        type(self).requests += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).requests == 1:
            self.send_error(500, "warming up")
            return
        if type(self).requests == 2:
            time.sleep(0.6)
        prompt = body["messages"][0]["content"]
        extract = prompt.split("The extract:", 1)[1]
        score = min(5, sum(line.strip().startswith(("#", '"""')) for line in extract.splitlines()))
        answer = {"choices": [{"message": {"role": "assistant",
                                           "content": f"The code is clear.\nEducational score: {score}"}}]}
        data = json.dumps(answer).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on the stalled request

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _StandInModel.requests = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandInModel)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_educational_scorer_over_http_with_retries(server, corpus):
    good, bad = corpus
    scorer = OpenAICompatibleScorer(EndpointConfig(base_url=server, timeout_seconds=0.3, retries=3,
                                                   backoff_seconds=0.01))
    docs = good[:6] + bad[:6]
    scores = educational_scores(docs, scorer)
    assert scores[:6] == [3] * 6 and scores[6:] == [0] * 6
    assert scorer.attempts == len(docs) + 2  # one HTTP 500 and one timeout, both retried
    model = classifier_from_scores(docs + good[6:30] + bad[6:30], scores + [3] * 24 + [0] * 24)
    probabilities = probability_good(model, [d.text for d in good[40:50] + bad[40:50]], 2000)
    assert min(probabilities[:10]) > max(probabilities[10:])


def test_scorer_gives_up_with_a_clear_error():
    scorer = OpenAICompatibleScorer(EndpointConfig(base_url="http://127.0.0.1:9/v1", timeout_seconds=0.2,
                                                   retries=1, backoff_seconds=0.01))
    with pytest.raises(RuntimeError, match="failed 2 times"):
        scorer("hello")
    assert educational_scores([Document("x", "t", "code_file", "x = 1")], scorer) == [None]


def test_local_callable_and_parsing():
    assert parse_educational_score("Reasoning...\nEducational score: 4") == 4
    assert parse_educational_score("**Educational score: 2**") == 2
    assert parse_educational_score("no score here") is None
    scores = educational_scores([Document("x", "t", "code_file", "x = 1", "Python")],
                                lambda prompt: "Educational score: 1" if "Python code" in prompt else "")
    assert scores == [1]
