"""fastText supervised training as the pipelines use it: single-threaded, fixed seed, on zeroed memory.

fastText 0.9.3 initialises only a tenth of its input matrix when it trains with one thread
(`DenseMatrix::uniform` fills block 0 of 10 per thread) and, since 0.9.3, that matrix lives in
`intgemm::AlignedVector`, memory from `posix_memalign` that nobody zeroes. The other nine tenths (the hashed n-gram
rows, mostly) start as whatever the process freed there before: zeros in a fresh process, and in a long one old
floats or NaNs, so the same file and arguments gave different models and, where a NaN was left there, "Encountered
NaN" on every attempt. We train single-threaded because it is fastText's only repeatable mode, so we ask glibc to
hand out zeroed memory while fastText allocates (`mallopt(M_PERTURB, 255)`: malloc fills new blocks with
255 ^ 0xff = 0). That is the zero start fastText 0.9.2 had (its matrix was a `std::vector`), and the model is then
the same bits on every run. A NaN on zeroed memory is a real divergence and says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

M_PERTURB = -6  # glibc mallopt parameter (malloc.h)


@contextlib.contextmanager
def zeroed_malloc():
    """While inside, glibc's malloc returns zero-filled blocks (and fills freed blocks with 0xff).

    Yields True where the C library is glibc, False elsewhere (nothing changes there).
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not mallopt(M_PERTURB, 255):
        yield False
        return
    try:
        yield True
    finally:
        mallopt(M_PERTURB, 0)


def train_supervised(path: str, **arguments):
    """`fasttext.train_supervised(path, thread=1, verbose=0, minCount=1, **arguments)` on zeroed memory."""
    import fasttext  # heavy native module: loaded by the stages that train

    fasttext.FastText.eprint = lambda *args, **kwargs: None
    with zeroed_malloc() as zeroed:
        try:
            return fasttext.train_supervised(path, thread=1, verbose=0, minCount=1, **arguments)
        except RuntimeError as error:
            if "NaN" not in str(error):
                raise
            cause = ("" if zeroed else "; this C library is not glibc, so fastText's uninitialised input rows may "
                     "hold stale values: train on Linux with glibc")
            raise RuntimeError(f"fastText training on {path} diverged (NaN) at learning rate {arguments.get('lr')}: "
                               f"lower the learning rate or the number of epochs{cause}") from None
