"""Perplexity scoring speed: the batched, fused-head Scorer against the reference it replaced (one window at a
time, full [length, vocab] float32 log-softmax), on the same windows of the same model, in the same run.

    python benchmarks/perplexity_scoring.py [--documents 16] [--max_tokens 2048] [--preset tiny]

Documents: Python standard-library files (real code), tokenised with the Qwen tokenizer; the model: a preset
with the Qwen vocabulary (151,936) and random weights (speed does not depend on the weights). Prints both wall
times (compilation included, as an evaluation pays it), the ratio, and the largest difference in nats.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from qwencoder_jax import assets, cli_flags
from qwencoder_jax.eval.perplexity import Scorer
from qwencoder_jax.model import Transformer, get_preset
from qwencoder_jax.model.config import QWEN_VOCAB_SIZE


class OneWindowScorer:
    """The previous scorer: batch 1, materialised logits and log-softmax (the reference)."""

    def __init__(self, model, params):
        def nll_sum(params, ids_bt, valid_bt):
            logits_btv = model.apply({"params": params}, ids_bt[:, :-1]).astype(jnp.float32)
            log_probs_btv = jax.nn.log_softmax(logits_btv, axis=-1)
            target_bt = jnp.take_along_axis(log_probs_btv, ids_bt[:, 1:, None], axis=-1)[..., 0]
            return -jnp.sum(target_bt * valid_bt[:, 1:])

        self.params, self._nll_sum = params, jax.jit(nll_sum)

    def score(self, windows):
        nats = []
        for window in windows:
            padded = max(64, 1 << (len(window) - 1).bit_length())
            ids_bt, valid_bt = np.zeros((1, padded), np.int32), np.zeros((1, padded), np.float32)
            ids_bt[0, :len(window)], valid_bt[0, :len(window)] = window, 1.0
            nats.append(float(self._nll_sum(self.params, ids_bt, valid_bt)))
        return nats


def main(argv=None) -> int:
    parser = cli_flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=2048)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args(argv)

    config = get_preset(args.preset, vocab_size=QWEN_VOCAB_SIZE, compute_dtype="float32")
    model = Transformer(config)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    tokenizer = Tokenizer.from_file(str(assets.qwen_tokenizer_json()))
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:args.documents]
    scorer = Scorer(model, params, args.max_tokens)
    windows = [w for f in files for w in scorer.windows([151643, *tokenizer.encode(f.read_text()).ids])]
    tokens = sum(len(w) - 1 for w in windows)

    start = time.perf_counter()
    ours = scorer.score(windows)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    reference = OneWindowScorer(model, params).score(windows)
    reference_seconds = time.perf_counter() - start
    difference = max(abs(a - b) / max(abs(b), 1.0) for a, b in zip(ours, reference))
    print(f"{len(files)} documents, {len(windows)} windows, {tokens} tokens, preset {args.preset}")
    print(f"batched fused-head scorer: {ours_seconds:.1f} s ({tokens / ours_seconds:.0f} tokens/s)")
    print(f"one window at a time, full log-softmax (reference): {reference_seconds:.1f} s "
          f"({tokens / reference_seconds:.0f} tokens/s)")
    print(f"speed-up {reference_seconds / ours_seconds:.2f}x; largest relative difference in nats {difference:.2e}")
    return 0 if difference < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
