"""FIM and repo-level formats: exact text and ids with the real Qwen tokenizer, rates, determinism, truncation."""

import sysconfig

import numpy as np
import pytest
import tokenizers

from qwencoder_jax.data import fim
from qwencoder_jax.data.special_tokens import SPECIAL_TOKENS
from qwencoder_jax.data.vocabulary import QwenVocabulary, train_sentencepiece

PREFIX, MIDDLE, SUFFIX, EOS = 151659, 151660, 151661, 151643
REPO_NAME, FILE_SEP = 151663, 151664

DOCUMENT = ('import math\n\n\ndef circle_area(radius: float) -> float:\n    """Area of a circle; 面积."""\n'
            '    return math.pi * radius ** 2\n')

REPO = "octo-org/tiny-geometry"
REPO_FILES = [
    ("geometry/__init__.py", "from .shapes import circle_area\n"),
    ("geometry/shapes.py", DOCUMENT),
    ("tests/test_shapes.py", "from geometry import circle_area\n\n\ndef test_unit():\n"
                             "    assert abs(circle_area(1.0) - 3.14159) < 1e-4\n"),
]


@pytest.fixture(scope="module")
def qwen():
    return QwenVocabulary()


@pytest.fixture(scope="module")
def tok(qwen):
    """An independent tokenizer for hand-built expectations: the shipped file, loaded as is."""
    reference = tokenizers.Tokenizer.from_file(qwen.tokenizer_file)
    return lambda text: reference.encode(text, add_special_tokens=False).ids


def first_key(config, mode, text=DOCUMENT):
    return next(k for k in range(1000) if fim.plan_fim(text, k, config).mode == mode)


def test_split_reassembles_document():
    config = fim.FimConfig(fim_rate=1.0, spm_rate=0.5)
    documents = [DOCUMENT, "x", "日本語のテキスト🎉", "\n\n", "a" * 1000]
    for document in documents:
        for key in range(200):
            pieces = fim.plan_fim(document, key, config)
            assert pieces.mode in (fim.PSM, fim.SPM)
            assert pieces.prefix + pieces.middle + pieces.suffix == document


def test_psm_text_and_ids_hand_built(qwen, tok):
    config = fim.FimConfig(fim_rate=1.0)
    key = "repo/file.py"
    pieces = fim.plan_fim(DOCUMENT, key, config)
    assert pieces.mode == fim.PSM and pieces.prefix and pieces.middle and pieces.suffix
    text = fim.file_sample_text(DOCUMENT, key, config, fim.BadInputCounter())
    assert text == (f"<|fim_prefix|>{pieces.prefix}<|fim_suffix|>{pieces.suffix}<|fim_middle|>{pieces.middle}"
                    "<|endoftext|>")
    expected = [PREFIX] + tok(pieces.prefix) + [SUFFIX] + tok(pieces.suffix) + [MIDDLE] + tok(pieces.middle) + [EOS]
    assert fim.file_sample_ids(DOCUMENT, key, qwen, config, fim.BadInputCounter()) == expected
    assert qwen.encode(text, allow_special=True) == expected


def test_psm_fixed_split_exact_ids(qwen, tok):
    pieces = fim.FimPieces(fim.PSM, "def f(x):\n    return ", "x + 1", "\n")
    assert fim.fim_ids(pieces, qwen) == [PREFIX] + tok("def f(x):\n    return ") + [SUFFIX] + tok("\n") + [MIDDLE] \
        + tok("x + 1") + [EOS]


def test_spm_text_and_ids_hand_built(qwen, tok):
    config = fim.FimConfig(fim_rate=1.0, spm_rate=1.0)
    pieces = fim.plan_fim(DOCUMENT, 7, config)
    assert pieces.mode == fim.SPM
    assert fim.fim_text(pieces) == (f"<|fim_prefix|><|fim_suffix|>{pieces.suffix}<|fim_middle|>{pieces.prefix}"
                                    f"{pieces.middle}<|endoftext|>")
    expected = [PREFIX, SUFFIX] + tok(pieces.suffix) + [MIDDLE] + tok(pieces.prefix) + tok(pieces.middle) + [EOS]
    assert fim.file_sample_ids(DOCUMENT, 7, qwen, config, fim.BadInputCounter()) == expected


def test_plain_document(qwen, tok):
    config = fim.FimConfig(fim_rate=0.0)
    assert fim.file_sample_text(DOCUMENT, 0, config, fim.BadInputCounter()) == DOCUMENT + "<|endoftext|>"
    assert fim.file_sample_ids(DOCUMENT, 0, qwen, config, fim.BadInputCounter()) == tok(DOCUMENT) + [EOS]


def test_fim_and_spm_rates_over_10000_documents():
    config = fim.FimConfig(fim_rate=0.5, spm_rate=0.3)
    modes = [fim.plan_fim("some code", f"doc-{i}", config).mode for i in range(10_000)]
    fim_share = 1 - modes.count(fim.PLAIN) / len(modes)
    assert abs(fim_share - 0.5) < 0.02
    spm_share = modes.count(fim.SPM) / (len(modes) - modes.count(fim.PLAIN))
    assert abs(spm_share - 0.3) < 0.03
    assert fim.FimConfig().spm_rate == 0.0 and fim.FimConfig().fim_rate == 0.5  # Qwen's Figure 3: PSM only


def test_determinism_per_seed_and_key():
    config = fim.FimConfig(fim_rate=1.0)
    np.random.seed(123)
    first = [fim.plan_fim(DOCUMENT, key, config) for key in range(50)]
    np.random.seed(456)  # global numpy state must not matter
    assert [fim.plan_fim(DOCUMENT, key, config) for key in range(50)] == first
    other_seed = [fim.plan_fim(DOCUMENT, key, fim.FimConfig(fim_rate=1.0, seed=1)) for key in range(50)]
    assert sum(a != b for a, b in zip(first, other_seed)) > 40
    assert len({(p.prefix, p.middle) for p in first}) > 40  # keys differ from one another too
    assert fim.plan_fim(DOCUMENT, "a/b.py", config) == fim.plan_fim(DOCUMENT, b"a/b.py", config)


def test_repo_format_byte_exact(qwen, tok):
    config = fim.FimConfig(fim_rate=0.0)
    expected = (
        "<|repo_name|>octo-org/tiny-geometry\n"
        "<|file_sep|>geometry/__init__.py\n"
        "from .shapes import circle_area\n"
        "\n"
        "<|file_sep|>geometry/shapes.py\n"
        "import math\n\n\ndef circle_area(radius: float) -> float:\n"
        '    """Area of a circle; 面积."""\n'
        "    return math.pi * radius ** 2\n"
        "\n"
        "<|file_sep|>tests/test_shapes.py\n"
        "from geometry import circle_area\n\n\ndef test_unit():\n"
        "    assert abs(circle_area(1.0) - 3.14159) < 1e-4\n"
        "<|endoftext|>")
    assert fim.repo_sample_text(REPO, REPO_FILES, REPO, config, fim.BadInputCounter()) == expected
    assert fim.repo_text(REPO, REPO_FILES) + "<|endoftext|>" == expected
    (path1, content1), (path2, content2), (path3, content3) = REPO_FILES
    hand_built = ([REPO_NAME] + tok(f"{REPO}\n") + [FILE_SEP] + tok(f"{path1}\n{content1}\n") + [FILE_SEP]
                  + tok(f"{path2}\n{content2}\n") + [FILE_SEP] + tok(f"{path3}\n{content3}") + [EOS])
    assert fim.repo_sample_ids(REPO, REPO_FILES, REPO, qwen, config, fim.BadInputCounter()) == hand_built
    assert qwen.encode(expected, allow_special=True) == hand_built


def test_repo_fim_keeps_header_and_infills_last_file(qwen, tok):
    config = fim.FimConfig(fim_rate=1.0)
    text = fim.repo_sample_text(REPO, REPO_FILES, "k", config, fim.BadInputCounter())
    header = ("<|repo_name|>octo-org/tiny-geometry\n<|file_sep|>geometry/__init__.py\n"
              "from .shapes import circle_area\n\n<|file_sep|>geometry/shapes.py\n" + DOCUMENT + "\n"
              "<|file_sep|>tests/test_shapes.py\n<|fim_prefix|>")
    assert text.startswith(header)
    pieces = fim.plan_fim(REPO_FILES[-1][1], "k", config)
    assert text == (header + f"{pieces.prefix}<|fim_suffix|>{pieces.suffix}<|fim_middle|>{pieces.middle}"
                    "<|endoftext|>")
    ids = fim.repo_sample_ids(REPO, REPO_FILES, "k", qwen, config, fim.BadInputCounter())
    assert ids == qwen.encode(text, allow_special=True)
    assert ids[:1 + len(tok(f"{REPO}\n"))] == [REPO_NAME] + tok(f"{REPO}\n")
    assert ids[-len(tok(pieces.middle)) - 2:] == [MIDDLE] + tok(pieces.middle) + [EOS]


def check_structure(ids, max_length):
    """The truncation rule's invariants on one finished sample."""
    assert len(ids) <= max_length
    structural = {REPO_NAME, FILE_SEP, PREFIX, SUFFIX, MIDDLE, SPECIAL_TOKENS["<|im_start|>"]}
    assert not ids or ids[-1] not in structural
    if PREFIX in ids:
        block = ids[len(ids) - 1 - ids[::-1].index(PREFIX):]
        assert MIDDLE in block and block.index(MIDDLE) < len(block) - 1


def test_truncate_ids_rule(qwen):
    config = fim.FimConfig(fim_rate=1.0, spm_rate=0.5)
    special = qwen.special_ids
    for key in range(6):
        full = fim.file_sample_ids(DOCUMENT, key, qwen, config, fim.BadInputCounter())
        for max_length in range(1, len(full) + 1):
            kept = fim.truncate_ids(full, max_length, special)
            assert kept == full[:len(kept)]  # a cut, nothing rearranged
            check_structure(kept, max_length)
            if max_length < len(full):
                assert not kept or kept[-1] != EOS  # a cut document does not end
    cut_after_middle = fim.fim_ids(fim.FimPieces(fim.PSM, "a = 1\n", "b = 2\n", "c = 3\n"), qwen)
    position = cut_after_middle.index(MIDDLE) + 1
    assert fim.truncate_ids(cut_after_middle, position, special) == []  # no dangling <|fim_middle|>
    assert fim.truncate_ids(cut_after_middle, position + 1, special) == cut_after_middle[:position + 1]
    repo = fim.repo_sample_ids(REPO, REPO_FILES, "k", qwen, config, fim.BadInputCounter())
    cut = fim.truncate_ids(repo, repo.index(PREFIX) + 2, special)  # the infilled file's header goes with its block
    assert cut[-1] != FILE_SEP and qwen.decode(cut).endswith(DOCUMENT + "\n")


def test_builders_respect_max_length_and_keep_structure(qwen):
    config = fim.FimConfig(fim_rate=0.5, spm_rate=0.5)
    long_document = DOCUMENT * 20
    for key in range(12):
        counter = fim.BadInputCounter()
        full = fim.file_sample_ids(long_document, key, qwen, config, counter)
        for max_length in (1, 3, 8, 9, 12, 20, 50, 200, len(full) - 1, len(full), len(full) + 5):
            ids = fim.file_sample_ids(long_document, key, qwen, config, counter, max_length=max_length)
            check_structure(ids, max_length)
            assert ids, "truncation never drops a whole document"
            text = qwen.decode(ids)
            # Specials only ever appear whole: every "<|" in the decoded text is one special id.
            assert text.count("<|") == sum(i in SPECIAL_TOKENS.values() for i in ids)
            if max_length >= len(full):
                assert ids == full
            elif max_length >= 50 and full[0] == PREFIX:
                assert ids[0] == PREFIX, "a long FIM document stays FIM, cut before splitting"
        assert counter["truncated"] > 0
    repo_full = fim.repo_sample_ids(REPO, REPO_FILES, "k", qwen, fim.FimConfig(fim_rate=1.0), fim.BadInputCounter())
    header = [REPO_NAME] + qwen.encode(f"{REPO}\n")
    for max_length in range(1, len(repo_full) + 1):
        counter = fim.BadInputCounter()
        ids = fim.repo_sample_ids(REPO, REPO_FILES, "k", qwen, fim.FimConfig(fim_rate=1.0), counter,
                                  max_length=max_length)
        check_structure(ids, max_length)
        assert ids[:len(header)] == header[:len(ids)]
        if PREFIX in ids:
            assert qwen.decode(ids).startswith(f"<|repo_name|>{REPO}\n")
            assert qwen.decode(ids).split("<|fim_prefix|>")[0].endswith("<|file_sep|>tests/test_shapes.py\n")
        if max_length < len(repo_full):
            assert counter["truncated"] == 1


def test_fit_text_fits_and_is_a_prefix(qwen):
    text = DOCUMENT * 50
    for budget in (0, 1, 7, 100, 1000, 10_000):
        fitted = fim.fit_text(text, qwen, budget)
        assert text.startswith(fitted) and len(qwen.encode(fitted)) <= budget
        if budget >= 100:
            assert len(qwen.encode(fitted)) > 0.9 * min(budget, len(qwen.encode(text)))


def test_bad_input_counted_by_reason(qwen):
    config = fim.FimConfig(fim_rate=0.5, max_document_chars=1000)
    counter = fim.BadInputCounter()
    inputs = [b"ok bytes", b"bad \xff\xfe bytes", "", "   \n\t", None, 42, "x" * 1001, b"y" * 5000,
              "lone \udc80 surrogate", "fine", "has <|endoftext|> inside"]
    results = [fim.file_sample_ids(raw, i, qwen, config, counter) for i, raw in enumerate(inputs)]
    assert [r is not None for r in results] == [True, False, False, False, False, False, False, False, False, True,
                                                True]
    assert counter.as_dict() == {"empty": 2, "invalid_utf8": 2, "not_text": 2, "special_token_text": 1,
                                 "too_large": 2}
    literal = results[-1]
    assert literal.count(EOS) == 1 and literal[-1] == EOS  # the literal "<|endoftext|>" stayed text
    texts = [fim.file_sample_text(raw, i, config, fim.BadInputCounter()) for i, raw in enumerate(inputs)]
    assert [t is not None for t in texts] == [r is not None for r in results]

    counter = fim.BadInputCounter()
    files = [("good.py", "x = 1\n"), ("bad\npath.py", "y = 2\n"), ("", "z"), ("bin.dat", b"\x00\xff"),
             ("empty.py", "")]
    ids = fim.repo_sample_ids("a/b", files, 0, qwen, fim.FimConfig(fim_rate=0.0), counter)
    assert qwen.decode(ids) == "<|repo_name|>a/b\n<|file_sep|>good.py\nx = 1\n<|endoftext|>"
    assert counter.as_dict() == {"bad_path": 2, "empty": 1, "invalid_utf8": 1}
    assert fim.repo_sample_ids("a/b", [("e.py", "  ")], 0, qwen, config, counter) is None
    assert fim.repo_sample_text("two\nlines", files, 0, config, counter) is None
    assert counter["empty"] == 3 and counter["bad_repo_name"] == 1


def test_works_with_a_sentencepiece_vocabulary(tmp_path):
    stdlib = sysconfig.get_paths()["stdlib"]
    vocab = train_sentencepiece([f"{stdlib}/textwrap.py", f"{stdlib}/shlex.py"], tmp_path / "code", vocab_size=600)
    config = fim.FimConfig(fim_rate=1.0)
    for key in range(5):
        text = fim.file_sample_text(DOCUMENT, key, config, fim.BadInputCounter())
        ids = fim.file_sample_ids(DOCUMENT, key, vocab, config, fim.BadInputCounter())
        assert ids == vocab.encode(text, allow_special=True)
        assert ids[0] == vocab.special_ids["<|fim_prefix|>"] and ids[-1] == vocab.eos_id
        assert vocab.decode(ids) == text
    repo_ids = fim.repo_sample_ids(REPO, REPO_FILES, "k", vocab, config, fim.BadInputCounter(), max_length=60)
    assert len(repo_ids) <= 60 and repo_ids[0] == vocab.special_ids["<|repo_name|>"]
