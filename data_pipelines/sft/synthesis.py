"""Instruction synthesis from code snippets (report section 4.1, "Instruction Synthesis from GitHub").

For each real code snippet (cut to `max_snippet_chars`, about the report's 1,024 tokens) one model call writes
an instruction the snippet answers, and a second call (the code model, possibly another one) writes the response
to that instruction. The pair becomes a ChatML record that keeps its provenance (`source_id`, `language`) for
the judge, the sandbox and decontamination. Every snippet ends kept or rejected with the model's failure reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Iterable, Sequence

from tqdm import tqdm

from data_pipelines.sft.tally import Problem, Tally
from data_pipelines.sft.models import ModelError

INSTRUCTION_PROMPT = """You are given a {language} code snippet from a real project.
Write one self-contained programming task, as a user would ask it, that this code solves. Do not mention the
snippet; state the inputs, the outputs and any constraints. Reply with the task only.

```{fence}
{code}
```"""

RESPONSE_SYSTEM = "You are a helpful coding assistant. Answer with an explanation and complete, runnable code."


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    max_snippet_chars: int = 3600  # ~1,024 tokens at 3.6 characters per token
    min_snippet_chars: int = 40
    instruction_temperature: float = 0.7
    response_temperature: float = 0.2


@dataclasses.dataclass(frozen=True)
class Snippet:
    key: str
    language: str
    code: str


def synthesize(snippets: Iterable[Snippet], instruction_model: Callable, response_model: Callable | None,
               tally: Tally, config: SynthesisConfig = SynthesisConfig()) -> list[dict]:
    response_model = response_model or instruction_model
    records = []

    # One model call per snippet (seconds each): a bar on a terminal (disable=None), nothing in a log file.
    for number, snippet in enumerate(tqdm(snippets, desc="synthesize", unit="snippet", disable=None), 1):
        code = snippet.code[:config.max_snippet_chars]
        if len(code.strip()) < config.min_snippet_chars:
            tally.reject(Problem(number, "synthesis:snippet_too_short", snippet.key))
            continue
        prompt = INSTRUCTION_PROMPT.format(language=snippet.language, fence=snippet.language.lower(), code=code)
        try:
            instruction = instruction_model([{"role": "user", "content": prompt}],
                                            temperature=config.instruction_temperature).strip()
            response = response_model([{"role": "system", "content": RESPONSE_SYSTEM},
                                       {"role": "user", "content": instruction}],
                                      temperature=config.response_temperature).strip()
        except ModelError as error:
            tally.reject(Problem(number, "synthesis:" + error.reason, f"{snippet.key}: {error.detail[:200]}"))
            continue
        tally.keep()
        digest = hashlib.sha256(f"{snippet.key}\0{instruction}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
        records.append({"id": f"synth:{digest}", "source_id": snippet.key, "language": snippet.language,
                        "messages": [{"role": "user", "content": instruction},
                                     {"role": "assistant", "content": response}]})
    return records


def snippets_from_files(paths: Sequence[str], language_of: Callable[[str], str]) -> list[Snippet]:
    out = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            out.append(Snippet(path, language_of(path) or "code", handle.read()))
    return out
