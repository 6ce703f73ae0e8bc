"""Perplexity and bits per byte of a model on held-out documents, per data source.

A data source is a data_pipelines output directory (manifest.json + TFRecord shards, FORMAT.md); the split read is
`EvalOptions.perplexity_split` ("validation" by default), its first `perplexity_documents` scorable records (fewer
when the task-wide `limit` is smaller). Each record's plain text is scored as a language model sees it without FIM:
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
from tqdm import tqdm

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
    """Summed next-token negative log-likelihood of token windows.

    Windows of the same padded length are scored `batch_size` at a time (one compilation per padded length), and
    the head and its log-softmax run fused over vocabulary chunks (train/loss.py's fused_head_cross_entropy): the
    [batch, length, vocab] float32 logits never exist. Per-window sums come from the loss's per-source sums, each
    row of the batch being its own source."""

    def __init__(self, model, params, max_tokens: int, batch_size: int = 8, vocab_chunk_size: int = 8192):
        import jax  # jax and the model load only when a model is scored (the task list needs neither)

        from qwencoder_jax.model.transformer import output_projection
        from qwencoder_jax.train.loss import fused_head_cross_entropy

        self.params, self.max_tokens, self.batch_size = params, max_tokens, batch_size
        chunk = min(vocab_chunk_size, model.config.vocab_size)

        def nll_sums(params, ids_bt, valid_bt):
            x_btd = model.apply({"params": params}, ids_bt[:, :-1], return_hidden=True)
            rows_bt = jax.numpy.broadcast_to(jax.numpy.arange(1, ids_bt.shape[0] + 1)[:, None], valid_bt[:, 1:].shape)
            _, stats = fused_head_cross_entropy(x_btd, output_projection(model.config, params).T, ids_bt[:, 1:],
                                                valid_bt[:, 1:], source_ids_bt=rows_bt, num_sources=ids_bt.shape[0],
                                                chunk_size=chunk, head_dtype="float32")
            return stats["loss_sum_by_source"][1:]

        self._nll_sums = jax.jit(nll_sums)

    def windows(self, ids: Sequence[int]) -> list[list[int]]:
        """A document's windows of at most max_tokens + 1 ids (consecutive windows share one id: each id after
        the first is predicted exactly once)."""
        return [list(ids[start:start + self.max_tokens + 1]) for start in range(0, len(ids) - 1, self.max_tokens)]

    def score(self, windows: Sequence[Sequence[int]], progress=None) -> list[float]:
        """Nats of each window, computed in batches of windows padded to the same power-of-two length."""
        nats = [0.0] * len(windows)
        by_length: dict[int, list[int]] = {}
        for index, window in enumerate(windows):
            by_length.setdefault(max(64, 1 << (len(window) - 1).bit_length()), []).append(index)
        for padded, indices in sorted(by_length.items()):
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                ids_bt = np.zeros((self.batch_size, padded), np.int32)  # a full batch: one shape per length
                valid_bt = np.zeros((self.batch_size, padded), np.float32)
                for row, index in enumerate(batch):
                    ids_bt[row, :len(windows[index])] = windows[index]
                    valid_bt[row, :len(windows[index])] = 1.0
                sums = np.asarray(self._nll_sums(self.params, ids_bt, valid_bt))
                for row, index in enumerate(batch):
                    nats[index] = float(sums[row])
                if progress is not None:
                    progress.update(len(batch))
        return nats

    def document(self, ids: Sequence[int]) -> tuple[float, int]:
        """(nats, predicted tokens) of one document's ids (ids[0] is the context token, never predicted)."""
        windows = self.windows(ids)
        return sum(self.score(windows)), sum(len(window) - 1 for window in windows)


def run(generator, options: EvalOptions, process_index: int = 0, process_count: int = 1) -> list[dict]:
    if not options.data_sources:
        raise ValueError("the perplexity task needs data sources: pass --data_source NAME=DIR (a data_pipelines "
                         "output directory with manifest.json and a held-out split)")
    scorer = Scorer(generator.model, generator.params, options.perplexity_max_tokens)
    start_id = generator.eos_ids[0]
    records = []
    documents = options.perplexity_documents if options.limit is None else min(options.limit,
                                                                               options.perplexity_documents)
    for name, directory in options.data_sources:
        texts, skipped = load_texts(directory, options.perplexity_split, documents)
        if process_index == 0:
            records.append({"index": -1, "source": name, "skipped": skipped})
        mine = this_process(texts, process_index, process_count)
        windows, owners = [], []
        for position, (index, text) in enumerate(mine):
            for window in scorer.windows([start_id, *generator.tokenizer.encode(text)]):
                windows.append(window)
                owners.append(position)
        progress = _progress(len(windows), f"perplexity {name}", process_index)
        nats = scorer.score(windows, progress)
        progress.close()
        of_document: dict[int, list[int]] = {}
        for window_index, owner in enumerate(owners):
            of_document.setdefault(owner, []).append(window_index)
        for position, (index, text) in enumerate(mine):
            own = of_document.get(position, [])
            records.append({"index": index, "source": name, "nats": sum(nats[i] for i in own),
                            "tokens": sum(len(windows[i]) - 1 for i in own), "bytes": len(text.encode("utf-8"))})
    return records


def _progress(total: int, description: str, process_index: int):
    """A tqdm bar on a terminal (process 0 only); nothing in a log file."""
    return tqdm(total=total, desc=description, unit="window", disable=None if process_index == 0 else True)


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
