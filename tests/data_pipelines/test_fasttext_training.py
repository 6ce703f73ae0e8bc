"""fastText training gives the same model whatever the process freed before, and a real divergence is a clear error.

fastText 0.9.3 leaves most of its input matrix uninitialised when it trains on one thread; these tests leave old
bytes (NaN patterns, large floats) in the heap exactly where that matrix will be allocated.
"""

import ctypes
import hashlib

import pytest

from data_pipelines import fasttext_training
from data_pipelines.sft import code_langid

ARGUMENTS = dict(epoch=2, lr=0.5, dim=16, wordNgrams=2, minn=0, maxn=0, bucket=50_000, seed=0)
INPUT_BYTES = (50_000 + 20) * 16 * 4  # (buckets + words) x dim float32: the matrix fastText does not fill
EXAMPLES = [("Python", "def f(x):\n    return x + 1\n"), ("Go", "func f(x int) int {\n\treturn x + 1\n}\n")] * 20

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def leave_in_heap(byte: int) -> None:
    """Free a block of INPUT_BYTES filled with `byte` where the next allocation of that size will land."""
    larger = libc.malloc(INPUT_BYTES + (4 << 20))
    libc.free(larger)  # glibc raises its mmap threshold above this size, so the next block comes from the heap
    block = libc.malloc(INPUT_BYTES)
    ctypes.memset(block, byte, INPUT_BYTES)
    libc.free(block)


@pytest.fixture()
def training_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("".join(f"__label__{language} {' '.join(code_langid.tokens(text))}\n"
                            for language, text in EXAMPLES))
    return str(path)


def fingerprint(model) -> str:
    return hashlib.sha256(model.get_input_matrix().tobytes() + model.get_output_matrix().tobytes()).hexdigest()


def test_the_model_is_the_same_bits_whatever_the_heap_held(training_file):
    import fasttext

    models = []
    for byte in (0xFF, 0x40, 0x00, 0xFF):  # NaN patterns, floats near 3.0, zeros
        leave_in_heap(byte)
        models.append(fingerprint(fasttext_training.train_supervised(training_file, **ARGUMENTS)))
    assert len(set(models)) == 1, models
    # and fastText on its own, on the same heap, is not: this is what the zeroed memory is for
    leave_in_heap(0xFF)
    with pytest.raises(RuntimeError, match="NaN"):
        fasttext.train_supervised(training_file, thread=1, verbose=0, minCount=1, **ARGUMENTS)


def test_zeroed_malloc_is_scoped():
    with fasttext_training.zeroed_malloc() as zeroed:
        assert zeroed  # glibc: the project's platform
        inside = libc.malloc(1 << 16)
        assert ctypes.string_at(inside, 1 << 16) == bytes(1 << 16)
        libc.free(inside)
    block = libc.malloc(1 << 16)
    ctypes.memset(block, 0x5A, 1 << 16)
    libc.free(block)
    again = libc.malloc(1 << 16)  # outside, glibc no longer clears
    assert ctypes.string_at(again, 1 << 16) != bytes(1 << 16)
    libc.free(again)


def test_a_real_divergence_is_one_clear_error(training_file):
    with pytest.raises(RuntimeError, match=r"diverged \(NaN\) at learning rate 100.0: lower the learning rate"):
        fasttext_training.train_supervised(training_file, **{**ARGUMENTS, "lr": 100.0})
    identifier = code_langid.CodeLanguageIdentifier.train(EXAMPLES, code_langid.LangIdConfig(epochs=2))
    assert identifier.languages == ["Go", "Python"]
