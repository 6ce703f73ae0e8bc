"""Quality classification, coarse to fine (report section 3.1.1), and an LLM educational-value scorer.

Coarse to fine: stage 1 trains a fastText classifier on a seed set of good documents against a sample of the
pool, scores the pool and recalls documents above the stage's threshold; stage k retrains on seed + the
documents recalled so far and rescores only the documents that passed stage k-1, with a stricter threshold.
A document's quality is the last stage it passed (0: none), so later stages hold higher-quality data and the
score can drive quality-aware mixing.

Educational value: the lecture's additive 0-5 prompt (Stack-Edu style), sent to any OpenAI-compatible
chat-completions endpoint or to a local callable; its scores can label training data for the fastText
classifier (cheap to run over the whole corpus, as the report does with small models).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import tempfile
import time
import urllib.error
import urllib.request
from typing import Callable, Sequence

from data_pipelines.document import Document
from data_pipelines.fasttext_training import train_supervised

LABEL_GOOD, LABEL_OTHER = "__label__good", "__label__other"


@dataclasses.dataclass(frozen=True)
class CoarseToFineConfig:
    stage_thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)  # one per stage; stricter as stages go
    negatives_per_positive: float = 1.0
    epochs: int = 10
    learning_rate: float = 0.5
    word_ngrams: int = 2
    dimension: int = 32
    max_chars: int = 2000  # classifiers see a document prefix, as surface features are what they model
    seed: int = 0


def _line(text: str, max_chars: int) -> str:
    return " ".join(text[:max_chars].split())


def train_classifier(positives: Sequence[str], negatives: Sequence[str], config: CoarseToFineConfig):
    handle, path = tempfile.mkstemp(suffix=".txt")
    try:
        with os.fdopen(handle, "w") as training:
            rows = [f"{LABEL_GOOD} {_line(t, config.max_chars)}" for t in positives]
            rows += [f"{LABEL_OTHER} {_line(t, config.max_chars)}" for t in negatives]
            random.Random(config.seed).shuffle(rows)
            training.write("\n".join(rows) + "\n")
        return train_supervised(path, epoch=config.epochs, lr=config.learning_rate,
                                wordNgrams=config.word_ngrams, dim=config.dimension, seed=config.seed)
    finally:
        os.remove(path)


def probability_good(model, texts: Sequence[str], max_chars: int) -> list[float]:
    # model.f.multilinePredict avoids the np.array(copy=False) that breaks fasttext 0.9.3's wrapper on NumPy 2
    labels, probabilities = model.f.multilinePredict([_line(t, max_chars) + "\n" for t in texts], 2, 0.0, "replace")
    scores = []
    for row_labels, row_probabilities in zip(labels, probabilities):
        scores.append(next((float(p) for l, p in zip(row_labels, row_probabilities) if l == LABEL_GOOD), 0.0))
    return scores


@dataclasses.dataclass
class CoarseToFineResult:
    stage_of: dict[str, int]  # document id -> last stage passed (0: none)
    recalled_per_stage: list[int]
    classifiers: list


def coarse_to_fine(seed: Sequence[Document], pool: Sequence[Document],
                   config: CoarseToFineConfig = CoarseToFineConfig()) -> CoarseToFineResult:
    if not seed:
        raise ValueError("coarse_to_fine needs a non-empty seed set of good documents")
    generator = random.Random(config.seed)
    stage_of = {doc.id: 0 for doc in pool}
    candidates, recalled = list(pool), []
    recalled_per_stage, classifiers = [], []
    for stage, threshold in enumerate(config.stage_thresholds, 1):
        positives = [doc.text for doc in seed] + [doc.text for doc in recalled]
        seed_ids = {doc.id for doc in seed} | {doc.id for doc in recalled}
        others = [doc.text for doc in pool if doc.id not in seed_ids]
        negatives = generator.sample(others, min(len(others), int(len(positives) * config.negatives_per_positive)))
        model = train_classifier(positives, negatives, config)
        classifiers.append(model)
        scores = probability_good(model, [doc.text for doc in candidates], config.max_chars)
        recalled = [doc for doc, score in zip(candidates, scores) if score >= threshold]
        for doc in recalled:
            stage_of[doc.id] = stage
        recalled_per_stage.append(len(recalled))
        candidates = recalled
        if not candidates:
            break
    return CoarseToFineResult(stage_of, recalled_per_stage, classifiers)


def with_quality(docs: Sequence[Document], result: CoarseToFineResult) -> list[Document]:
    return [doc.replace(quality=float(result.stage_of.get(doc.id, 0))) for doc in docs]


# ---------------------------------------------------------------- educational value (LLM, 0-5)

EDUCATIONAL_PROMPT = """Below is an extract of {language} code. Evaluate whether it has a high educational value and could help teach {language} programming. Use the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the code contains valid {language} syntax, even if it's just boilerplate or simple statements.
- Add another point if the code addresses practical programming concepts, even if it lacks comments.
- Award a third point if the code is suitable for educational use and introduces key concepts in programming, even if the topic is somewhat advanced. The code should be well-structured and contain some comments.
- Give a fourth point if the code is self-contained and highly relevant to teaching programming. It should be similar to a course exercise, demonstrating good practices.
- Grant a fifth point if the code is outstanding in its educational value and is perfectly suited for teaching programming. It should be well-written, easy to understand, and contain explanatory comments that clarify the purpose and impact of each part of the code.

The extract:
```
{code}
```

After examining the extract:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Educational score: <total points>"
"""

_SCORE = re.compile(r"educational score:\s*\**\s*([0-5])", re.IGNORECASE)


def educational_prompt(doc: Document, max_chars: int = 6000) -> str:
    return EDUCATIONAL_PROMPT.format(language=doc.language or "programming", code=doc.text[:max_chars])


def parse_educational_score(completion: str) -> int | None:
    matches = _SCORE.findall(completion)
    return int(matches[-1]) if matches else None


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1 (OpenAI-compatible)
    model: str = "scorer"
    api_key_environment_variable: str = "OPENAI_API_KEY"  # the key is read from here, never stored in configs
    timeout_seconds: float = 30.0
    retries: int = 3
    backoff_seconds: float = 0.5  # doubled after each failed attempt
    max_tokens: int = 256


class OpenAICompatibleScorer:
    """Callable: prompt -> completion text, via POST {base_url}/chat/completions, with retries on network
    errors, timeouts, 429 and 5xx."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self.attempts = 0

    def __call__(self, prompt: str) -> str:
        body = json.dumps({"model": self.config.model, "temperature": 0, "max_tokens": self.config.max_tokens,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_environment_variable)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        delay, last_error = self.config.backoff_seconds, None
        for _ in range(self.config.retries + 1):
            self.attempts += 1
            try:
                request = urllib.request.Request(url, body, headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.config.timeout_seconds) as response:
                    return json.load(response)["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as error:
                if error.code != 429 and error.code < 500:
                    raise RuntimeError(f"scoring endpoint {url} refused the request: HTTP {error.code}; "
                                       f"check the model name and API key") from error
                last_error = error
            except (urllib.error.URLError, TimeoutError, OSError) as error:
                last_error = error
            time.sleep(delay)
            delay *= 2
        raise RuntimeError(f"scoring endpoint {url} failed {self.config.retries + 1} times "
                           f"(last: {last_error}); check that the server is up or raise timeout_seconds")


def educational_scores(docs: Sequence[Document], scorer: Callable[[str], str],
                       failures: dict[str, int] | None = None) -> list[int | None]:
    """0-5 per document; None where the completion had no parsable score or the endpoint kept failing. Each
    failure's reason is counted in `failures` (reason -> documents) when given."""
    scores = []
    for doc in docs:
        try:
            score = parse_educational_score(scorer(educational_prompt(doc)))
            reason = None if score is not None else "the completion held no score 0-5"
        except RuntimeError as error:
            score, reason = None, str(error).splitlines()[0]
        scores.append(score)
        if reason is not None and failures is not None:
            failures[reason] = failures.get(reason, 0) + 1
    return scores


def classifier_from_scores(docs: Sequence[Document], scores: Sequence[int | None], positive_minimum: int = 3,
                           config: CoarseToFineConfig = CoarseToFineConfig()):
    """A fastText classifier trained on LLM labels: score >= positive_minimum is good, lower is other."""
    positives = [d.text for d, s in zip(docs, scores) if s is not None and s >= positive_minimum]
    negatives = [d.text for d, s in zip(docs, scores) if s is not None and s < positive_minimum]
    if not positives or not negatives:
        raise ValueError(f"labels need both classes: {len(positives)} good, {len(negatives)} other; "
                         f"change positive_minimum or score more documents")
    return train_classifier(positives, negatives, config)
