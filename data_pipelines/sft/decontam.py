"""Decontamination of SFT conversations against evaluation sets (report section 5): a conversation sharing a
10-word n-gram with HumanEval, MATH500/AIME or any extra JSONL benchmark is dropped, counted per benchmark.
The index and the n-gram rule are data_pipelines/decontaminate.py's, applied to all turns joined."""

from __future__ import annotations

from typing import Iterable

from data_pipelines.decontaminate import DecontaminationConfig, Decontaminator
from data_pipelines.sft.tally import Problem, Tally


def conversation_text(record: dict) -> str:
    return "\n".join(m["content"] for m in record["messages"])


def decontaminate(records: Iterable[dict], tally: Tally, decontaminator: Decontaminator | None = None,
                  config: DecontaminationConfig = DecontaminationConfig()) -> list[dict]:
    decontaminator = decontaminator or Decontaminator(config)
    kept = []
    for number, record in enumerate(records, 1):
        found = decontaminator.find(conversation_text(record))
        if found is None:
            tally.keep()
            kept.append(record)
        else:
            benchmark, item_id, ngram = found
            tally.reject(Problem(number, "decontaminate:" + benchmark.split("/")[0], f"{item_id}: {ngram}"))
    return kept
