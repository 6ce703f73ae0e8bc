"""Per-source losses: the loader carries each token's mixture source through packing, and the trainer logs
`loss/<source>` and `tokens/<source>` whose token-weighted mean is the step's loss."""

import json

import numpy as np
import pytest

from qwencoder_jax import sharding
from qwencoder_jax.data import loader, shards, tasks
from qwencoder_jax.model import get_preset
from qwencoder_jax.model.config import QWEN_VOCAB_SIZE
from qwencoder_jax.train import optimizer as optimizer_lib
from qwencoder_jax.train.trainer import Trainer, TrainerConfig

LOADER = loader.LoaderConfig(sequence_length=64, batch_size=2)
SOURCES = ("ps_counting", "ps_repeating")


def _write(directory, name, make):
    rng = np.random.default_rng(len(name))
    examples = [{"id": f"{name}:{i}", "kind": "text", "token_ids": make(rng)} for i in range(60)]
    shards.write_dataset(directory, name, "text", examples)


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    # Two sources a tiny model finds unequally hard: arithmetic runs, and one token repeated.
    _write(root / "counting", "counting",
           lambda rng: [int(rng.integers(4, 400)) + k for k in range(int(rng.integers(10, 50)))])
    _write(root / "repeating", "repeating", lambda rng: [int(rng.integers(4, 400))] * int(rng.integers(10, 50)))
    tasks.register_source(SOURCES[0], str(root / "counting"), "text", max_tokens=LOADER.sequence_length + 1)
    tasks.register_source(SOURCES[1], str(root / "repeating"), "text", max_tokens=LOADER.sequence_length + 1)
    tasks.register_mixture("ps_two_sources", {SOURCES[0]: 1, SOURCES[1]: 1})
    return "ps_two_sources"


def test_rows_carry_each_tokens_source(mixture):
    assert loader.source_names(mixture) == SOURCES
    iterator = loader.make_iterator(mixture, LOADER)
    batch = next(iterator)
    source_ids = batch["source_ids"]
    assert ((source_ids == 0) == (batch["segment_ids"] == 0)).all()  # 0 exactly on padding
    assert set(np.unique(source_ids)) - {0} == {1, 2}
    for row in range(LOADER.batch_size):
        for segment in set(np.unique(batch["segment_ids"][row])) - {0}:
            where = batch["segment_ids"][row] == segment
            ids = source_ids[row][where]
            assert (ids == ids[0]).all()  # one source per document
            tokens = np.append(batch["input_ids"][row][where], batch["targets"][row][where][-1])
            repeating = (tokens == tokens[0]).all()
            assert ids[0] == (2 if repeating else 1)


def test_metrics_hold_per_source_losses_that_average_to_the_loss(mixture, tmp_path):
    config = TrainerConfig(workdir=str(tmp_path / "run"), model=get_preset("tiny", vocab_size=QWEN_VOCAB_SIZE),
                           mixture=mixture, total_steps=3, loader=LOADER,
                           optimizer=optimizer_lib.OptimizerConfig(peak_learning_rate=1e-2, total_steps=3),
                           checkpoint_every=3, mesh=sharding.MeshConfig(fsdp=1), num_devices=1,
                           peak_flops_per_second=1e11, progress_bar=False)
    assert Trainer(config).run().stop_reason == "completed"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        tokens = [record[f"tokens/{name}"] for name in SOURCES]
        assert all(count > 0 for count in tokens) and sum(tokens) == record["tokens"]
        weighted = sum(record[f"loss/{name}"] * count for name, count in zip(SOURCES, tokens)) / record["tokens"]
        assert weighted == pytest.approx(record["loss"], rel=1e-5)
    assert records[-1]["loss/ps_repeating"] != pytest.approx(records[-1]["loss/ps_counting"], rel=1e-3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert {f"loss/{name}" for name in SOURCES} <= set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
