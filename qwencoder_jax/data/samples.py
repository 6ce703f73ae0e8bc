"""One record in, training documents out: the per-kind sample builders shared by the seqio tasks and the grain loader.

Design notes: docs/DATA.md, section `qwencoder_jax/data/samples.py`.
"""

from __future__ import annotations

import bisect
import dataclasses
import json

import numpy as np

from qwencoder_jax.data import fim, shards
from qwencoder_jax.data.special_tokens import IM_END, IM_START

CODE_FILE, CODE_REPO, TEXT, MATH, SFT = "code_file", "code_repo", "text", "math", "sft"
KINDS = (CODE_FILE, CODE_REPO, TEXT, MATH, SFT)

# Reasons added to fim.py's.
SPLIT_LONG_DOCUMENT = "split_long_document"  # kept whole, as several windows
TOO_SHORT = "too_short"  # one token cannot be both an input and a target
BAD_MESSAGES = "bad_messages"
NO_ASSISTANT_TOKENS = "no_assistant_tokens"
SFT_ROLES = ("system", "user", "assistant", "tool")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where a source's shards are and how its records become documents."""
    name: str
    dataset_dir: str
    kind: str
    split: str = "train"
    fim_config: fim.FimConfig = fim.FimConfig()
    max_tokens: int = 8193  # training length 8,192 + 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"source {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.max_tokens < 2:
            raise ValueError(f"source {self.name!r}: max_tokens must be at least 2, got {self.max_tokens}")


class MissingFeature(shards.MalformedRecord):
    """A well-formed Example without a feature its kind needs."""


def _one(features: dict, name: str) -> bytes:
    values = features.get(name)
    if not values:
        raise MissingFeature(f"record lacks the `{name}` feature")
    return values[0]


def _document(ids, loss_mask) -> dict[str, np.ndarray]:
    return {"ids": np.asarray(ids, np.int32), "loss_mask": np.asarray(loss_mask, np.int32)}


def chatml_document(messages, vocabulary, max_tokens: int | None,
                    counter: fim.BadInputCounter) -> dict[str, np.ndarray] | None:
    """`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message; loss on assistant content + its <|im_end|>.

    The trailing "\\n" after <|im_end|> gets no loss: the model stops at <|im_end|> and never has to predict it.
    """
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in SFT_ROLES and isinstance(m.get("content"), str)
            for m in messages):
        counter.add(BAD_MESSAGES)
        return None
    for message in messages:
        try:
            message["content"].encode("utf-8")
        except UnicodeEncodeError:
            counter.add(fim.INVALID_UTF8)
            return None
    special = vocabulary.special_ids
    pieces = []
    for message in messages:
        pieces += [f"{message['role']}\n", message["content"], "\n"]
    encoded = vocabulary.encode_batch(pieces)
    ids, mask = [], []
    for index, message in enumerate(messages):
        role, content, newline = encoded[3 * index: 3 * index + 3]
        learn = int(message["role"] == "assistant")
        ids += [special[IM_START]] + role + content + [special[IM_END]] + newline
        mask += [0] * (1 + len(role)) + [learn] * (len(content) + 1) + [0] * len(newline)
    if max_tokens is not None and len(ids) > max_tokens:
        counter.add(fim.TRUNCATED)
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    if not any(mask[1:]):  # the first token is never a target (the packer shifts inside the document)
        counter.add(NO_ASSISTANT_TOKENS)
        return None
    return _document(ids, mask)


_WINDOW_SPARE_TOKENS = 8


def file_documents(raw, key: bytes, vocabulary, config: fim.FimConfig, max_tokens: int,
                   counter: fim.BadInputCounter) -> list[dict[str, np.ndarray]]:
    """A file (or text) as one or more documents of at most max_tokens ids (module docstring: long files)."""
    text = fim.clean_document(raw, counter, config.max_document_chars)
    if text is None:
        return []
    if not hasattr(vocabulary, "encode_with_offsets"):  # e.g. SentencePiece: fim.py's cut (counted as truncated)
        ids = fim.file_sample_ids(text, key, vocabulary, config, counter, max_length=max_tokens)
        return [] if ids is None else [_document(ids, np.ones(len(ids), np.int32))]
    special = vocabulary.special_ids
    eos = special[fim.ENDOFTEXT]
    ids_all, starts = vocabulary.encode_with_offsets(text)
    count = len(ids_all)
    # One window if the document fits in every form: FIM adds three sentinels and may break a few merges.
    fits_whole = count + _WINDOW_SPARE_TOKENS <= max_tokens or (
        count + 1 <= max_tokens and fim.plan_fim(text, key, config).mode == fim.PLAIN)
    if fits_whole:
        windows = [(0, count)]
    else:
        step = max_tokens - _WINDOW_SPARE_TOKENS
        if step < 8:
            raise ValueError(f"max_tokens {max_tokens} leaves no room to split long documents; use at least 16")
        windows = [(a, min(a + step, count)) for a in range(0, count, step)]
        counter.add(SPLIT_LONG_DOCUMENT)
    documents = []
    for number, (first, end) in enumerate(windows):
        window_key = key if len(windows) == 1 else key + b"#%d" % number
        window_text = text[starts[first]:starts[end] if end < count else len(text)]
        pieces = fim.plan_fim(window_text, window_key, config) if window_text.strip() else None
        if pieces is None or pieces.mode == fim.PLAIN:
            ids = ids_all[first:end] + ([eos] if end == count else [])
        else:
            ids = fim.fim_ids(pieces, _PieceIds(text, starts[first], pieces, ids_all, starts, vocabulary))
            if len(ids) > max_tokens:  # the split broke more merges than the spare tokens allow: rare
                counter.add(fim.TRUNCATED)
                ids = fim.truncate_ids(ids, max_tokens, special)
        if len(ids) >= 2:
            documents.append(_document(ids, np.ones(len(ids), np.int32)))
        else:
            counter.add(TOO_SHORT)
    return documents


def _restarts_at(text: str, position: int) -> bool:
    r"""Whether tokenisation always restarts at `position`: just after a "\n", with the line's leading spaces
    followed by a non-space (not by another line break).

    Qwen's pre-tokenizer regex (`...| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`) takes a whitespace
    run that holds line breaks with `\s*[\r\n]+`, which ends right after the run's LAST line break; so if no
    line break follows before the next non-space, a pre-token ends at `position`, in the whole text and in its
    two parts alike. BPE runs per pre-token, so the ids of text[:position] + text[position:] are the ids of text.
    """
    if position <= 0 or position >= len(text) or text[position - 1] != "\n":
        return False
    index = position
    while index < len(text) and text[index].isspace():
        if text[index] in "\r\n":
            return False
        index += 1
    return index < len(text)


def _first_safe(text: str, start: int, end: int) -> int | None:
    """The first restart position (see _restarts_at) in [start, end], or None."""
    index = max(start - 1, 0)
    while True:
        index = text.find("\n", index, end)
        if index < 0:
            return None
        if index + 1 >= start and _restarts_at(text, index + 1):
            return index + 1
        index += 1


def _last_safe(text: str, start: int, end: int) -> int | None:
    """The last restart position in [start, end], or None."""
    stop = end
    while True:
        index = text.rfind("\n", max(start - 1, 0), stop)
        if index < 0:
            return None
        if index + 1 >= start and _restarts_at(text, index + 1):
            return index + 1
        stop = index


class _PieceIds:
    """Stands in for the vocabulary in fim.fim_ids: the ids of the prefix/middle/suffix of one window, taken from
    the document's single tokenisation between safe restart points and tokenised afresh only near the cuts.
    Equal to tokenising each piece on its own (tests/data/test_data_tasks.py checks it against fim.fim_ids)."""

    def __init__(self, text, window_start, pieces, ids_all, starts, vocabulary):
        self.special_ids = vocabulary.special_ids
        self._vocabulary = vocabulary
        self._text, self._ids_all, self._starts = text, ids_all, starts
        offset = window_start
        self._spans = {}
        for piece in (pieces.prefix, pieces.middle, pieces.suffix):
            self._spans.setdefault(piece, (offset, offset + len(piece)))
            offset += len(piece)

    def encode_batch(self, texts):
        plans, fresh = [], []
        for piece in texts:
            start, end = self._spans[piece]
            safe_start, safe_end = _first_safe(self._text, start, end), _last_safe(self._text, start, end)
            if safe_start is None or safe_end is None or safe_start > safe_end:
                plans.append((len(fresh), None, None))
                fresh.append(piece)
                continue
            first = bisect.bisect_left(self._starts, safe_start)
            last = bisect.bisect_left(self._starts, safe_end)
            plans.append((len(fresh), first, last))
            fresh += [self._text[start:safe_start], self._text[safe_end:end]]
        # One call each, not encode_batch: these are a line or two, and the Rust thread pool of encode_batch costs
        # more CPU (workers spinning up and waiting) than tokenising them.
        encoded = [self._vocabulary.encode(piece) if piece else [] for piece in fresh]
        out = []
        for index, first, last in plans:
            if first is None:
                out.append(encoded[index])
            else:
                out.append(encoded[index] + self._ids_all[first:last] + encoded[index + 1])
        return out


def build_documents(record: bytes, spec: SourceSpec, vocabulary,
                    counter: fim.BadInputCounter) -> list[dict[str, np.ndarray]]:
    """The training documents of one serialized record (usually one; several for a long file; none if unusable,
    counted)."""
    try:
        features = shards.parse_example(record)
        documents = _build(features, spec, vocabulary, counter)
    except MissingFeature:
        counter.add(shards.MISSING_FEATURE)
        return []
    except shards.MalformedRecord:
        counter.add(shards.MALFORMED_RECORD)
        return []
    if documents is None:
        return []
    if isinstance(documents, dict):
        documents = [documents]
    kept = [d for d in documents if len(d["ids"]) >= 2]
    if len(kept) < len(documents):
        counter.add(TOO_SHORT, len(documents) - len(kept))
    return kept


def _build(features: dict, spec: SourceSpec, vocabulary, counter):
    max_tokens = spec.max_tokens
    if features.get("token_ids"):
        ids = features["token_ids"]
        if any(not 0 <= i < vocabulary.vocab_size for i in ids):
            raise shards.MalformedRecord("token_ids outside the vocabulary")
        mask = features.get("loss_mask") or [1] * len(ids)
        if len(mask) != len(ids):
            raise shards.MalformedRecord("loss_mask and token_ids differ in length")
        if len(ids) > max_tokens:
            counter.add(fim.TRUNCATED)
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return _document(ids, mask)
    key = (features.get("id") or [b""])[0] or b"no-id"
    if spec.kind in (CODE_FILE, TEXT, MATH):
        config = spec.fim_config if spec.kind == CODE_FILE else dataclasses.replace(spec.fim_config, fim_rate=0.0)
        return file_documents(_one(features, "text"), key, vocabulary, config, max_tokens, counter)
    if spec.kind == CODE_REPO:
        paths, contents = features.get("paths") or [], features.get("contents") or []
        if len(paths) != len(contents):
            raise shards.MalformedRecord(f"code_repo record has {len(paths)} paths but {len(contents)} contents")
        try:
            repo_name = _one(features, "repo_name").decode("utf-8")
            path_names = [p.decode("utf-8") for p in paths]
        except UnicodeDecodeError:
            counter.add(fim.INVALID_UTF8)
            return None
        ids = fim.repo_sample_ids(repo_name, list(zip(path_names, contents)), key, vocabulary, spec.fim_config,
                                  counter, max_length=max_tokens)
        return None if ids is None else _document(ids, np.ones(len(ids), np.int32))
    if spec.kind == SFT:
        raw = _one(features, "messages")
        try:
            messages = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            counter.add(fim.INVALID_UTF8)
            return None
        except json.JSONDecodeError:
            counter.add(BAD_MESSAGES)
            return None
        return chatml_document(messages, vocabulary, max_tokens, counter)
    raise ValueError(f"unknown kind {spec.kind!r}")
