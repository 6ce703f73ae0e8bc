"""Perplexity and bits per byte of a model on held-out documents, per data source.

A data source is a data_pipelines output directory (manifest.json + TFRecord shards, FORMAT.md); the split read is
`EvalOptions.perplexity_split` ("validation" by default), its first `perplexity_documents` scorable records (the
task-wide `limit` does not apply). Each record's plain text is scored as a language model sees it without FIM:
`<|endoftext|>` + tokens of the text, so every token of the text is predicted. Text per kind: code_file / text /
math: `text`; code_repo: each file as "path\ncontent" joined by "\n"; sft: the messages' contents joined by "\n".
Pre-tokenised records (no text to count bytes of) are skipped and counted.
A document longer than `perplexity_max_tokens` is scored in consecutive windows (each token predicted once; a
window does not see the previous one). Padding sits after the scored tokens, invisible to them under causal
attention. bits/byte = total nats / ln 2 / UTF-8 bytes of the scored texts; perplexity = exp(nats / tokens).
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from qwencoder_jax.data import shards
from qwencoder_jax.eval.options import EvalOptions, this_process

SKIPPED_PRETOKENIZED = "pretokenized"
SKIPPED_MALFORMED = "malformed_record"
SKIPPED_EMPTY = "empty_text"


def document_text(features: dict) -> str | None:
    if features.get("token_ids"):
        return None
    kind = (features.get("kind") or [b""])[0].decode("utf-8")
    if features.get("text"):
        return features["text"][0].decode("utf-8")
    if features.get("contents"):
        paths = [p.decode("utf-8") for p in features.get("paths") or []]
        contents = [c.decode("utf-8") for c in features["contents"]]
        return "\n".join(f"{path}\n{content}" for path, content in zip(paths, contents))
    if features.get("messages"):
        return "\n".join(message["content"] for message in json.loads(features["messages"][0]))
    raise shards.MalformedRecord(f"record of kind {kind!r} has no text, contents or messages")


def load_texts(dataset_dir: str, split: str, limit: int) -> tuple[list[str], dict[str, int]]:
    """The first `limit` scorable texts of a split, and the number of records skipped, by reason."""
    source = shards.RecordSource(shards.split_files(dataset_dir, split))
    texts, skipped = [], {}
    for index in range(len(source)):
        if len(texts) == limit:
            break
        try:
            text = document_text(shards.parse_example(source[index]))
        except (shards.MalformedRecord, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            skipped[SKIPPED_MALFORMED] = skipped.get(SKIPPED_MALFORMED, 0) + 1
            continue
        reason = SKIPPED_PRETOKENIZED if text is None else SKIPPED_EMPTY if not text else None
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        texts.append(text)
    return texts, skipped


class Scorer:
    """Summed next-token negative log-likelihood of token windows, one compilation per padded length."""

    def __init__(self, model, params, max_tokens: int):
        import jax
        import jax.numpy as jnp

        self.params, self.max_tokens = params, max_tokens

        def nll_sum(params, ids_bt, valid_bt):
            logits_btv = model.apply({"params": params}, ids_bt[:, :-1]).astype(jnp.float32)
            log_probs_btv = jax.nn.log_softmax(logits_btv, axis=-1)
            target_log_probs_bt = jnp.take_along_axis(log_probs_btv, ids_bt[:, 1:, None], axis=-1)[..., 0]
            return -jnp.sum(target_log_probs_bt * valid_bt[:, 1:])

        self._nll_sum = jax.jit(nll_sum)

    def document(self, ids: Sequence[int]) -> tuple[float, int]:
        """(nats, predicted tokens) of one document's ids (ids[0] is the context token, never predicted)."""
        nats, count = 0.0, 0
        for start in range(0, len(ids) - 1, self.max_tokens):
            window = list(ids[start:start + self.max_tokens + 1])
            padded = max(64, 1 << (len(window) - 1).bit_length())
            ids_bt = np.zeros((1, padded), np.int32)
            valid_bt = np.zeros((1, padded), np.float32)
            ids_bt[0, :len(window)] = window
            valid_bt[0, :len(window)] = 1.0
            nats += float(self._nll_sum(self.params, ids_bt, valid_bt))
            count += len(window) - 1
        return nats, count


def run(generator, options: EvalOptions, process_index: int = 0, process_count: int = 1) -> list[dict]:
    if not options.data_sources:
        raise ValueError("the perplexity task needs data sources: pass --data_source NAME=DIR (a data_pipelines "
                         "output directory with manifest.json and a held-out split)")
    scorer = Scorer(generator.model, generator.params, options.perplexity_max_tokens)
    start_id = generator.eos_ids[0]
    records = []
    for name, directory in options.data_sources:
        texts, skipped = load_texts(directory, options.perplexity_split, options.perplexity_documents)
        if process_index == 0:
            records.append({"index": -1, "source": name, "skipped": skipped})
        for index, text in this_process(texts, process_index, process_count):
            ids = [start_id, *generator.tokenizer.encode(text)]
            nats, tokens = scorer.document(ids)
            records.append({"index": index, "source": name, "nats": nats, "tokens": tokens,
                            "bytes": len(text.encode("utf-8"))})
    return records


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = sources.setdefault(record["source"], {"documents": 0, "nats": 0.0, "tokens": 0, "bytes": 0,
                                                      "skipped": {}})
        if record["index"] < 0:
            entry["skipped"] = record["skipped"]
            continue
        entry["documents"] += 1
        for field in ("nats", "tokens", "bytes"):
            entry[field] += record[field]
    for name, entry in sources.items():
        if not entry["tokens"]:
            raise ValueError(f"data source {name!r}: no scorable documents in its split (skipped: {entry['skipped']})")
        entry["perplexity"] = math.exp(entry["nats"] / entry["tokens"])
        entry["bits_per_byte"] = entry["nats"] / math.log(2) / entry["bytes"]
    return {"sources": sources}
