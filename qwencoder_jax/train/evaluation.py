"""Evaluation loss on the held-out split during training (`train.eval_every`, `train.eval_batches`).

    evaluator = Evaluator.build(model, "stage1_70_20_10", loader_config, loss_config, eval_batches=4,
                                batch_sharding=sharding.data_sharding(mesh, 2), say=print)
    record = evaluator.evaluate(params)   # {"eval/loss": ..., "eval/tokens": ..., "eval/loss/<source>": ...}

The batches are the first `eval_batches` batches of the mixture's `validation` splits, read once at start through
the training loader (same packing, sequence length and per-process batch size; a split smaller than that is read
again from its start) and kept on the host, so every evaluation scores the same tokens and the training
iterator is never touched (a resume stays exact). The loss is the training loss function (same head and loss
execution, z-loss excluded), jitted without any update: eval/loss is the token-weighted mean cross-entropy over
all eval batches. A task of the mixture without a validation split is left out, said once at start.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np

from qwencoder_jax.data import loader, shards, tasks
from qwencoder_jax.train import step as step_lib
from qwencoder_jax.train.loss import LossConfig

SPLIT = "validation"


def sources_with_split(mixture: str, split: str = SPLIT) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names of the mixture's tasks whose dataset has `split`, names of those without it)."""
    having, lacking = [], []
    for spec, _, _ in tasks.resolve(mixture):
        splits = shards.read_manifest(spec.dataset_dir).get("splits", {})
        (having if split in splits else lacking).append(spec.name)
    return tuple(having), tuple(lacking)


def read_batches(mixture: str, config: loader.LoaderConfig, count: int, sources: tuple[str, ...]) -> list[dict]:
    """The first `count` host batches of the sources' validation splits (the training loader's rows)."""
    iterator = iter(loader.make_dataset(mixture, config, split=SPLIT, only_sources=sources))
    try:
        return [next(iterator) for _ in range(count)]
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def device_batch(batch: dict, batch_sharding) -> dict:
    """A host batch as the step's global arrays (loss_mask becomes float loss_weights)."""
    batch = dict(batch)
    batch["loss_weights"] = batch.pop("loss_mask").astype(np.float32)
    return {key: jax.make_array_from_process_local_data(batch_sharding, np.asarray(batch[key]))
            for key in step_lib.BATCH_KEYS}


def make_eval_step(model, loss_config: LossConfig, num_sources: int) -> Callable:
    """params, batch -> the loss sums of one batch (no gradient, no update)."""

    def eval_step(params: Any, batch: dict) -> dict:
        _, stats = step_lib.loss_fn(model, params, batch, 0.0, loss_config, num_sources)
        sums = {"loss_sum": stats["loss_sum"], "tokens": stats["weight_sum"]}
        if num_sources > 0:
            sums["loss_sum_by_source"] = stats["loss_sum_by_source"]
            sums["tokens_by_source"] = stats["weight_sum_by_source"]
        return sums

    return jax.jit(eval_step)


class Evaluator:
    def __init__(self, batches: list[dict], eval_step: Callable, source_names: tuple[str, ...]):
        self.batches, self.eval_step, self.source_names = batches, eval_step, source_names

    @classmethod
    def build(cls, model, mixture: str, loader_config: loader.LoaderConfig, loss_config: LossConfig,
              eval_batches: int, batch_sharding, say: Callable[[str], None]) -> "Evaluator | None":
        """The evaluator of a run, or None (said) when no task of the mixture has a validation split."""
        having, lacking = sources_with_split(mixture)
        if lacking:
            say(f"evaluation: {', '.join(lacking)} has no {SPLIT!r} split; eval loss skips "
                f"{'it' if len(lacking) == 1 else 'them'}")
        if not having:
            say(f"evaluation off: no task of {mixture!r} has a {SPLIT!r} split")
            return None
        host = read_batches(mixture, loader_config, eval_batches, having)
        source_names = loader.source_names(mixture)
        batches = [device_batch(batch, batch_sharding) for batch in host]
        return cls(batches, make_eval_step(model, loss_config, len(source_names)), source_names)

    def evaluate(self, params: Any) -> dict[str, float]:
        """eval/loss (token-weighted mean cross-entropy), eval/tokens, eval/seconds and, per source with tokens,
        eval/loss/<source>."""
        start = time.perf_counter()
        totals = None
        for batch in self.batches:  # dispatched back to back; summed on the device
            sums = self.eval_step(params, batch)
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
        fetched = jax.device_get(totals)
        tokens = float(fetched["tokens"])
        record = {"eval/loss": float(fetched["loss_sum"]) / max(tokens, 1.0), "eval/tokens": tokens}
        if "tokens_by_source" in fetched:
            for index, name in enumerate(self.source_names, start=1):
                source_tokens = float(fetched["tokens_by_source"][index])
                if source_tokens > 0:
                    record[f"eval/loss/{name}"] = float(fetched["loss_sum_by_source"][index]) / source_tokens
        record["eval/seconds"] = time.perf_counter() - start
        return record
