"""fastText supervised training as the pipelines use it: single-threaded, fixed seed, NaN runs retried."""

from __future__ import annotations

ATTEMPTS = 10


def train_supervised(path: str, **arguments):
    """`fasttext.train_supervised(path, thread=1, verbose=0, minCount=1, **arguments)`, retried on NaN.

    Single-threaded with a fixed seed is fastText's only near-repeatable mode, and even then fastText 0.9.3 stops
    roughly a third of the runs of the same file and arguments with "Encountered NaN"; the runs that finish
    differ in accuracy by about a tenth of a point. So a NaN run is retried, and only a NaN on every attempt (a
    real divergence) is an error.
    """
    import fasttext  # heavy native module: loaded by the stages that train

    fasttext.FastText.eprint = lambda *args, **kwargs: None
    for _ in range(ATTEMPTS):
        try:
            return fasttext.train_supervised(path, thread=1, verbose=0, minCount=1, **arguments)
        except RuntimeError as error:
            if "NaN" not in str(error):
                raise
    raise RuntimeError(f"fastText training on {path} diverged (NaN) in {ATTEMPTS} attempts at learning rate "
                       f"{arguments.get('lr')}: lower the learning rate or the number of epochs")
