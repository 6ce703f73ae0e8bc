"""Fill-in-the-middle and repo-level sample formats (docs/FORMATS.md; report Figures 3 and 4), as text and as token ids.

Design notes: docs/DATA.md, section `qwencoder_jax/data/fim.py`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from qwencoder_jax.data.special_tokens import (ENDOFTEXT, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_START,
                                               REPO_NAME, SPECIAL_TOKENS)

PSM = "psm"
SPM = "spm"
PLAIN = "plain"

# Reasons counted by BadInputCounter. The first group drops the input, the second keeps it (altered or noted).
INVALID_UTF8 = "invalid_utf8"
EMPTY = "empty"
TOO_LARGE = "too_large"
NOT_TEXT = "not_text"
BAD_PATH = "bad_path"
BAD_REPO_NAME = "bad_repo_name"
TRUNCATED = "truncated"
FIM_DROPPED_BY_TRUNCATION = "fim_dropped_by_truncation"
SPECIAL_TOKEN_TEXT = "special_token_text"

# Slack for tokenising prefix/middle/suffix separately: each cut can break a merge, costing about a token.
_SPLIT_SLACK_TOKENS = 4


@dataclasses.dataclass(frozen=True)
class FimConfig:
    fim_rate: float = 0.5  # share of documents (or repositories) turned into FIM samples
    spm_rate: float = 0.0  # share of FIM samples in SPM form, the rest PSM
    seed: int = 0
    max_document_chars: int = 1_000_000  # larger files are generated or data dumps: skipped, counted as too_large

    def __post_init__(self):
        for name in ("fim_rate", "spm_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FimConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_document_chars < 1:
            raise ValueError(f"FimConfig.max_document_chars must be positive, got {self.max_document_chars}")


class BadInputCounter:
    """How many inputs were dropped or altered, by reason; merge the counters of workers with `update`."""

    def __init__(self):
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, reason: str, count: int = 1) -> None:
        self.counts[reason] += count

    def update(self, other: "BadInputCounter") -> None:
        self.counts.update(other.counts)

    def __getitem__(self, reason: str) -> int:
        return self.counts[reason]

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def __repr__(self) -> str:
        return f"BadInputCounter({self.as_dict()})"


@dataclasses.dataclass(frozen=True)
class FimPieces:
    """One document's sample plan. For PLAIN, the whole document is in `prefix` and the others are empty."""
    mode: str
    prefix: str
    middle: str
    suffix: str

    @property
    def document(self) -> str:
        return self.prefix + self.middle + self.suffix


# ---------------------------------------------------------------------------------------------------------------
# Input checks.

def clean_document(raw, counter: BadInputCounter, max_chars: int = FimConfig.max_document_chars) -> str | None:
    """The document as text, or None (counted) if it is not usable: not text, invalid UTF-8, empty, giant."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > 4 * max_chars:  # cannot fit in max_chars characters; don't spend time decoding it
            counter.add(TOO_LARGE)
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            counter.add(INVALID_UTF8)
            return None
    elif isinstance(raw, str):
        text = raw
        try:
            text.encode("utf-8")  # lone surrogates (e.g. from errors="surrogateescape") cannot be tokenised
        except UnicodeEncodeError:
            counter.add(INVALID_UTF8)
            return None
    else:
        counter.add(NOT_TEXT)
        return None
    if len(text) > max_chars:
        counter.add(TOO_LARGE)
        return None
    if not text.strip():
        counter.add(EMPTY)
        return None
    if "<|" in text and any(name in text for name in SPECIAL_TOKENS):
        counter.add(SPECIAL_TOKEN_TEXT)  # kept: ids never come from text; noted because the text form is ambiguous
    return text


# ---------------------------------------------------------------------------------------------------------------
# Random choices, deterministic per (seed, key).

def rng_for(seed: int, key: str | bytes | int) -> np.random.Generator:
    """A Generator that depends only on (seed, key): a stable hash, unlike Python's salted hash()."""
    key_bytes = key if isinstance(key, bytes) else str(key).encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(str(int(seed)).encode() + b"\0" + key_bytes, digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def split_document(text: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """(prefix, middle, suffix) at two uniform character positions in 0..len(text); any piece may be empty."""
    start, end = sorted(int(i) for i in rng.integers(0, len(text) + 1, size=2))
    return text[:start], text[start:end], text[end:]


def plan_fim(text: str, key, config: FimConfig) -> FimPieces:
    """Whether and how `text` is FIM-transformed. Draw order is fixed (FIM?, SPM?, split) so plans are stable."""
    rng = rng_for(config.seed, key)
    if rng.random() >= config.fim_rate:
        return FimPieces(PLAIN, text, "", "")
    mode = SPM if rng.random() < config.spm_rate else PSM
    prefix, middle, suffix = split_document(text, rng)
    return FimPieces(mode, prefix, middle, suffix)


# ---------------------------------------------------------------------------------------------------------------
# Text forms.

def fim_text(pieces: FimPieces) -> str:
    if pieces.mode == PSM:
        return f"{FIM_PREFIX}{pieces.prefix}{FIM_SUFFIX}{pieces.suffix}{FIM_MIDDLE}{pieces.middle}{ENDOFTEXT}"
    if pieces.mode == SPM:
        return f"{FIM_PREFIX}{FIM_SUFFIX}{pieces.suffix}{FIM_MIDDLE}{pieces.prefix}{pieces.middle}{ENDOFTEXT}"
    if pieces.mode == PLAIN:
        return f"{pieces.document}{ENDOFTEXT}"
    raise ValueError(f"unknown FIM mode {pieces.mode!r}; expected {PSM!r}, {SPM!r} or {PLAIN!r}")


def repo_text(repo_name: str, files: Sequence[tuple[str, str]]) -> str:
    """The repo-level body (docs/FORMATS.md): header line, then `<|file_sep|>{path}\\n{content}` joined by newlines."""
    return f"{REPO_NAME}{repo_name}\n" + "\n".join(f"{FILE_SEP}{path}\n{content}" for path, content in files)


def repo_fim_text(repo_name: str, context_files: Sequence[tuple[str, str]], path: str, pieces: FimPieces) -> str:
    """Context files whole, then the infilled file's header and its FIM block (report Figure 4)."""
    context = "".join(f"{FILE_SEP}{p}\n{c}\n" for p, c in context_files)
    return f"{REPO_NAME}{repo_name}\n{context}{FILE_SEP}{path}\n{fim_text(pieces)}"


# ---------------------------------------------------------------------------------------------------------------
# Token-id forms. `vocabulary` is a QwenVocabulary or SentencePieceCodeVocabulary (needs special_ids, encode_batch).

def fim_ids(pieces: FimPieces, vocabulary) -> list[int]:
    special = vocabulary.special_ids
    prefix, middle, suffix = vocabulary.encode_batch([pieces.prefix, pieces.middle, pieces.suffix])
    if pieces.mode == PSM:
        return ([special[FIM_PREFIX]] + prefix + [special[FIM_SUFFIX]] + suffix + [special[FIM_MIDDLE]] + middle
                + [special[ENDOFTEXT]])
    if pieces.mode == SPM:
        return ([special[FIM_PREFIX], special[FIM_SUFFIX]] + suffix + [special[FIM_MIDDLE]] + prefix + middle
                + [special[ENDOFTEXT]])
    if pieces.mode == PLAIN:
        return prefix + middle + suffix + [special[ENDOFTEXT]]
    raise ValueError(f"unknown FIM mode {pieces.mode!r}; expected {PSM!r}, {SPM!r} or {PLAIN!r}")


def _repo_parts(repo_name: str, files: Sequence[tuple[str, str]], vocabulary,
                fim: FimPieces | None) -> tuple[list[int], list[list[int]], list[int]]:
    """(header, one id list per whole file, tail): their concatenation is the ids of repo_text + EOS or, with `fim`,
    of repo_fim_text where `fim` splits the last file; the tail then is that file's header and FIM block."""
    special = vocabulary.special_ids
    whole_files = files[:-1] if fim is not None else files
    # The text between two specials is one tokeniser call, exactly as encode(text, allow_special=True) would see it.
    segments = [f"{repo_name}\n"]
    for index, (path, content) in enumerate(whole_files):
        joined_to_next = fim is not None or index < len(whole_files) - 1
        segments.append(f"{path}\n{content}\n" if joined_to_next else f"{path}\n{content}")
    if fim is not None:
        segments.append(f"{files[-1][0]}\n")
    encoded = vocabulary.encode_batch(segments)
    header = [special[REPO_NAME]] + encoded[0]
    if fim is None:
        return header, [[special[FILE_SEP]] + e for e in encoded[1:]], [special[ENDOFTEXT]]
    bodies = [[special[FILE_SEP]] + e for e in encoded[1:-1]]
    return header, bodies, [special[FILE_SEP]] + encoded[-1] + fim_ids(fim, vocabulary)


def _concat(header: list[int], bodies: list[list[int]], tail: list[int]) -> list[int]:
    ids = list(header)
    for body in bodies:
        ids += body
    return ids + tail


def truncate_ids(ids: Sequence[int], max_length: int, special_ids: Mapping[str, int]) -> list[int]:
    """`ids` cut to at most max_length tokens following the module docstring's truncation rule."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    kept = list(ids[:max_length])
    if len(ids) <= max_length:
        return kept
    fim_prefix, fim_middle = special_ids[FIM_PREFIX], special_ids[FIM_MIDDLE]
    if fim_prefix in kept:
        start = len(kept) - 1 - kept[::-1].index(fim_prefix)
        block = kept[start:]
        if fim_middle not in block or block.index(fim_middle) == len(block) - 1:
            cut = start
            header = _last_index(kept, special_ids[FILE_SEP], stop=start)
            if header is not None and special_ids[ENDOFTEXT] not in kept[header:start]:
                cut = header
            kept = kept[:cut]
    dangling = {special_ids[name] for name in (REPO_NAME, FILE_SEP, IM_START, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)}
    while kept and kept[-1] in dangling:
        kept.pop()
    return kept


def _last_index(values: list[int], value: int, stop: int) -> int | None:
    for index in range(stop - 1, -1, -1):
        if values[index] == value:
            return index
    return None


def fit_text(text: str, vocabulary, max_tokens: int) -> str:
    """The longest-ish prefix of `text` that tokenises to at most max_tokens, without tokenising all of a giant text.

    Tokens are at least one byte, so text of at most max_tokens UTF-8 bytes fits as is; otherwise tokenise a window
    and shrink the cut by the observed characters-per-token ratio until it fits.
    """
    if max_tokens <= 0:
        return ""
    if len(text) <= max_tokens and len(text.encode("utf-8")) <= max_tokens:
        return text
    window = min(len(text), 16 * max_tokens)
    while True:
        count = len(vocabulary.encode(text[:window]))
        if count <= max_tokens:
            if window == len(text):
                return text
            window = min(len(text), 2 * window)
            continue
        break
    cut = window
    while count > max_tokens:
        cut = max(0, min(cut - 1, int(cut * max_tokens / count)))
        count = len(vocabulary.encode(text[:cut]))
    return text[:cut]


# ---------------------------------------------------------------------------------------------------------------
# Sample builders: raw input in, a finished sample (or None, counted) out.

def file_sample_text(document, key, config: FimConfig, counter: BadInputCounter) -> str | None:
    text = clean_document(document, counter, config.max_document_chars)
    return None if text is None else fim_text(plan_fim(text, key, config))


def file_sample_ids(document, key, vocabulary, config: FimConfig, counter: BadInputCounter,
                    max_length: int | None = None) -> list[int] | None:
    """Token ids of one file-level sample, at most max_length long (None: no limit).

    A FIM document that is too long is cut (as text) to what fits before it is split, so it stays a FIM sample of
    that part; a plain one is cut and loses its <|endoftext|>.
    """
    text = clean_document(document, counter, config.max_document_chars)
    if text is None:
        return None
    pieces = plan_fim(text, key, config)
    if max_length is None:
        return fim_ids(pieces, vocabulary)
    if pieces.mode != PLAIN:
        if len(text) <= 16 * max_length:  # could fit whole (a token rarely spans 16 characters): try that first
            ids = fim_ids(pieces, vocabulary)
            if len(ids) <= max_length:
                return ids
        fitted = fit_text(text, vocabulary, max_length - 4 - _SPLIT_SLACK_TOKENS)
        if fitted.strip():
            if fitted != text:  # same key, so the same FIM decision, with split points drawn for the shorter text
                pieces = plan_fim(fitted, key, config)
            ids = fim_ids(pieces, vocabulary)
            if len(ids) > max_length:
                ids = truncate_ids(ids, max_length, vocabulary.special_ids)
            if vocabulary.special_ids[FIM_PREFIX] in ids:
                if fitted != text or ids[-1] != vocabulary.special_ids[ENDOFTEXT]:
                    counter.add(TRUNCATED)
                return ids
        counter.add(FIM_DROPPED_BY_TRUNCATION)
    return _plain_ids(text, vocabulary, max_length, counter)


def _plain_ids(text: str, vocabulary, max_length: int, counter: BadInputCounter) -> list[int]:
    fitted = fit_text(text, vocabulary, max_length)
    ids = vocabulary.encode(fitted)
    if fitted == text:
        ids.append(vocabulary.special_ids[ENDOFTEXT])
    if len(ids) > max_length or fitted != text:
        counter.add(TRUNCATED)
        ids = truncate_ids(ids, max_length, vocabulary.special_ids)
    return ids


def _clean_repo(repo_name, files, config: FimConfig, counter: BadInputCounter) -> list[tuple[str, str]] | None:
    if not isinstance(repo_name, str) or not repo_name.strip() or "\n" in repo_name:
        counter.add(BAD_REPO_NAME)
        return None
    kept = []
    for path, content in files:
        if not isinstance(path, str) or not path.strip() or "\n" in path:
            counter.add(BAD_PATH)  # a newline in a path would break the `<|file_sep|>{path}\n` line structure
            continue
        text = clean_document(content, counter, config.max_document_chars)
        if text is not None:
            kept.append((path, text))
    if not kept:
        counter.add(EMPTY)
        return None
    return kept


def _plan_repo(files, key, config) -> FimPieces | None:
    pieces = plan_fim(files[-1][1], key, config)
    return None if pieces.mode == PLAIN else pieces


def repo_sample_text(repo_name: str, files: Sequence[tuple[str, object]], key, config: FimConfig,
                     counter: BadInputCounter) -> str | None:
    """The repo-level sample of one repository; unusable files are dropped (counted), as is a repo left empty."""
    files = _clean_repo(repo_name, files, config, counter)
    if files is None:
        return None
    fim = _plan_repo(files, key, config)
    if fim is None:
        return repo_text(repo_name, files) + ENDOFTEXT
    return repo_fim_text(repo_name, files[:-1], files[-1][0], fim)


def repo_sample_ids(repo_name: str, files: Sequence[tuple[str, object]], key, vocabulary, config: FimConfig,
                    counter: BadInputCounter, max_length: int | None = None) -> list[int] | None:
    """Token ids of `repo_sample_text`, at most max_length long (None: no limit).

    Too long a plain sample is cut from the end. Too long a FIM sample keeps the repo header and the infilled file
    (cut as text before splitting if it alone is too long) and then as many whole context files, in order, as fit;
    if even that cannot fit, it falls back to the plain sample, cut.
    """
    files = _clean_repo(repo_name, files, config, counter)
    if files is None:
        return None
    fim = _plan_repo(files, key, config)
    header, bodies, tail = _repo_parts(repo_name, files, vocabulary, fim)
    if max_length is None or len(header) + sum(map(len, bodies)) + len(tail) <= max_length:
        return _concat(header, bodies, tail)
    counter.add(TRUNCATED)
    special = vocabulary.special_ids
    if fim is not None:
        path, content = files[-1]
        if len(header) + len(tail) > max_length:
            file_header = 1 + len(vocabulary.encode(f"{path}\n"))
            fitted = fit_text(content, vocabulary,
                              max_length - len(header) - file_header - 4 - _SPLIT_SLACK_TOKENS)
            fim = _plan_repo([(path, fitted)], key, config) if fitted.strip() else None
            if fim is not None:
                header, _, tail = _repo_parts(repo_name, [(path, fitted)], vocabulary, fim)
        if fim is not None and len(header) + len(tail) <= max_length:
            room = max_length - len(header) - len(tail)
            kept_bodies = []
            for body in bodies:
                if len(body) > room:
                    break
                kept_bodies.append(body)
                room -= len(body)
            return _concat(header, kept_bodies, tail)
        counter.add(FIM_DROPPED_BY_TRUNCATION)
        header, bodies, tail = _repo_parts(repo_name, files, vocabulary, None)
    return truncate_ids(_concat(header, bodies, tail), max_length, special)
