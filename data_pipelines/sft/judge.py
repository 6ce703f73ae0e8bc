"""Checklist-based scoring of instruction pairs (report section 4.1): a judge model scores each criterion, the
final score is the weighted mean s = sum(w_i s_i) / sum(w_i) scaled to [0, 1], and pairs below a threshold go.

The checklist is configuration (a JSON file such as data_pipelines/sft/checklist.json: {"threshold": 0.6,
"scale": 10, "criteria": [{"name", "question", "weight"}...]}); the default is the report's nine points. The
report does not publish its weights; ours favour correctness (consistency and code correctness weigh 2).
Scores per criterion are stored on every judged sample (`judge: {"scores": {...}, "score": s}`), kept or not,
so thresholds can be changed later without re-judging.
The judge answers in JSON; an answer that lacks a criterion or scores out of range is rejected as
`judge:malformed_scores`, never guessed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Callable, Sequence

from data_pipelines.sft.tally import Problem, Tally
from data_pipelines.sft.models import ModelError


@dataclasses.dataclass(frozen=True)
class Criterion:
    name: str
    question: str
    weight: float = 1.0


REPORT_CHECKLIST = (
    Criterion("consistency", "Are the question and answer consistent, and is the answer correct?", 2.0),
    Criterion("relevance", "Are the question and answer about programming or computer science?", 1.0),
    Criterion("difficulty", "Is the question sufficiently challenging?", 0.5),
    Criterion("code_exists", "Is code provided in the question or the answer?", 1.0),
    Criterion("code_correctness", "Is the code free of syntax errors and logical flaws?", 2.0),
    Criterion("best_practices", "Does the code use proper naming, indentation and best practices?", 0.5),
    Criterion("clarity", "Is the code clear and understandable, in a consistent style?", 0.5),
    Criterion("comments", "Are there useful comments explaining the code's functionality?", 0.25),
    Criterion("easy_to_learn", "Is it educational for a student learning basic coding concepts?", 0.25),
)


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    criteria: tuple[Criterion, ...] = REPORT_CHECKLIST
    scale: int = 10  # each criterion is scored 0..scale
    threshold: float = 0.6  # keep when the weighted score, in [0, 1], is at least this

    def __post_init__(self):
        if not self.criteria:
            raise ValueError("JudgeConfig needs at least one criterion")
        names = [c.name for c in self.criteria]
        if len(set(names)) != len(names):
            raise ValueError(f"JudgeConfig: criterion names repeat: {names}")
        if any(c.weight < 0 for c in self.criteria) or sum(c.weight for c in self.criteria) <= 0:
            raise ValueError("JudgeConfig: weights must be non-negative with a positive sum")
        if not 0.0 <= self.threshold <= 1.0 or self.scale < 1:
            raise ValueError(f"JudgeConfig: threshold {self.threshold} must be in [0, 1], scale >= 1")

    @classmethod
    def from_json(cls, path: str) -> "JudgeConfig":
        with open(path) as handle:
            data = json.load(handle)
        unknown = set(data) - {"criteria", "scale", "threshold"}
        if unknown:
            raise ValueError(f"{path}: unknown checklist keys {sorted(unknown)}; allowed: criteria, scale, threshold")
        if "criteria" not in data:
            return cls(REPORT_CHECKLIST, int(data.get("scale", 10)), float(data.get("threshold", 0.6)))
        try:
            criteria = tuple(Criterion(**c) for c in data["criteria"])
        except TypeError as error:
            raise ValueError(f"{path}: each criterion needs name, question and an optional weight ({error})") from None
        return cls(criteria, int(data.get("scale", 10)), float(data.get("threshold", 0.6)))


def judge_prompt(record: dict, config: JudgeConfig) -> str:
    conversation = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in record["messages"])
    checklist = "\n".join(f"- {c.name}: {c.question}" for c in config.criteria)
    return (f"Score this instruction-tuning sample on each criterion from 0 (worst) to {config.scale} (best).\n"
            f"Criteria:\n{checklist}\n\nSample:\n{conversation}\n\n"
            'Reply with one JSON object only: {"scores": {"<criterion>": <integer>, ...}}')


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_scores(completion: str, config: JudgeConfig) -> dict[str, float]:
    match = _JSON_OBJECT.search(completion)
    if not match:
        raise ModelError("malformed_scores", f"no JSON object in the judge's answer: {completion[:120]!r}")
    try:
        scores = json.loads(match.group(0))
    except json.JSONDecodeError as error:
        raise ModelError("malformed_scores", f"judge's JSON does not parse: {error}") from None
    scores = scores.get("scores", scores) if isinstance(scores, dict) else None
    if not isinstance(scores, dict):
        raise ModelError("malformed_scores", "judge's answer holds no scores object")
    out = {}
    for criterion in config.criteria:
        value = scores.get(criterion.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= config.scale:
            raise ModelError("malformed_scores", f"criterion {criterion.name!r} scored {value!r}, "
                                                 f"expected a number in 0..{config.scale}")
        out[criterion.name] = float(value)
    return out


def weighted_score(scores: dict[str, float], config: JudgeConfig) -> float:
    total = sum(c.weight for c in config.criteria)
    return sum(c.weight * scores[c.name] for c in config.criteria) / (total * config.scale)


def judge(records: Sequence[dict], model: Callable, tally: Tally, config: JudgeConfig = JudgeConfig()
          ) -> tuple[list[dict], list[dict]]:
    """(kept, scored-but-below-threshold) records, both carrying `judge` scores; failures are counted."""
    kept, below = [], []
    for number, record in enumerate(records, 1):
        try:
            scores = parse_scores(model([{"role": "user", "content": judge_prompt(record, config)}],
                                        temperature=0.0), config)
        except ModelError as error:
            tally.reject(Problem(number, "judge:" + error.reason, f"{record.get('id', '')}: {error.detail[:200]}"))
            continue
        score = weighted_score(scores, config)
        judged = dict(record) | {"judge": {"scores": scores, "score": round(score, 6)}}
        if score >= config.threshold:
            tally.keep()
            kept.append(judged)
        else:
            tally.reject(Problem(number, "judge:below_threshold", f"{record.get('id', '')}: {score:.3f}"))
            below.append(judged)
    return kept, below
