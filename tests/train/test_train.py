"""The trainer: golden losses against an independent AdamW, exact resume after SIGKILL, damaged-checkpoint
fallback, the NaN guard, loss falling on real data, and stage chaining through init_from.

Model: the `tiny` preset with the Qwen vocabulary size (the loader pads with <|endoftext|> = 151643, which must be
a valid id), one CPU device, sequence 64, batch 2.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qwencoder_jax import checkpoints, sharding
from qwencoder_jax.data import loader, shards, tasks
from qwencoder_jax.model import Transformer, get_preset
from qwencoder_jax.model.config import QWEN_VOCAB_SIZE
from qwencoder_jax.train import optimizer as optimizer_lib
from qwencoder_jax.train import step as step_lib
from qwencoder_jax.train.loss import LossConfig
from qwencoder_jax.train.trainer import DataSource, Trainer, TrainerConfig

MODEL = get_preset("tiny", vocab_size=QWEN_VOCAB_SIZE)
LOADER = loader.LoaderConfig(sequence_length=64, batch_size=2)
OPTIMIZER = optimizer_lib.OptimizerConfig(peak_learning_rate=1e-2, warmup_steps=2, total_steps=20,
                                          weight_decay=0.1, clip_norm=1.0)
TOTAL_STEPS = 8


def write_counting_data(directory):
    """Pre-tokenised documents of arithmetic sequences: a pattern a tiny model learns within a few steps."""
    rng = np.random.default_rng(0)
    examples = []
    for number in range(80):
        start, stride, length = int(rng.integers(0, 500)), int(rng.integers(1, 4)), int(rng.integers(20, 120))
        examples.append({"id": f"counting:{number}", "kind": "text",
                         "token_ids": [(start + stride * k) % 500 + 4 for k in range(length)]})
    shards.write_dataset(directory, "counting", "text", examples)


def trainer_config(workdir, data_dir, **overrides):
    values = dict(workdir=str(workdir), model=MODEL, mixture="counting", total_steps=TOTAL_STEPS, loader=LOADER,
                  optimizer=OPTIMIZER, data_sources=(DataSource("counting", str(data_dir), "text"),),
                  checkpoint_every=2, keep_checkpoints=3, mesh=sharding.MeshConfig(fsdp=1), num_devices=1,
                  peak_flops_per_second=1e11, progress_bar=False)
    values.update(overrides)
    return TrainerConfig(**values)


def read_metrics(workdir) -> dict[int, dict]:
    """Per step, the last record written (a restarted run rewrites the steps after its checkpoint)."""
    records = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["step"]] = record
    return records


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("counting")
    write_counting_data(directory)
    return directory


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted run of TOTAL_STEPS steps, checkpoints every 2 (the last 3 kept)."""
    workdir = tmp_path_factory.mktemp("reference")
    result = Trainer(trainer_config(workdir, data_dir)).run()
    assert result.stop_reason == "completed" and result.final_step == TOTAL_STEPS
    return workdir, result


# -- the optimizer ----------------------------------------------------------------------------------------------

def test_schedules_and_decay_mask():
    cosine = optimizer_lib.make_schedule(optimizer_lib.OptimizerConfig(
        peak_learning_rate=1.0, warmup_steps=10, total_steps=110, final_learning_rate_fraction=0.1))
    assert float(cosine(0)) == 0.0 and float(cosine(10)) == pytest.approx(1.0)
    assert float(cosine(60)) == pytest.approx(0.55, abs=1e-6) and float(cosine(110)) == pytest.approx(0.1)
    wsd = optimizer_lib.make_schedule(optimizer_lib.OptimizerConfig(
        peak_learning_rate=1.0, schedule="wsd", warmup_steps=10, total_steps=110, decay_fraction=0.2,
        final_learning_rate_fraction=0.0))
    assert float(wsd(5)) == pytest.approx(0.5) and float(wsd(50)) == 1.0 and float(wsd(88)) == 1.0
    assert float(wsd(99)) == pytest.approx(0.5) and float(wsd(110)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        optimizer_lib.OptimizerConfig(schedule="linear")

    params = nn.meta.unbox(Transformer(MODEL).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    mask = optimizer_lib.decay_mask(params)
    assert mask["embed"]["embedding"] and mask["layers"]["mlp"]["up_proj"]["kernel"]
    assert not mask["final_norm"]["scale"] and not mask["layers"]["input_norm"]["scale"]
    assert not mask["layers"]["attention"]["q_proj"]["bias"]


@pytest.mark.parametrize("norm_scale", [0.01, 1.0, 100.0])
def test_clipping_equals_optax(norm_scale):
    grads = {"a": jax.random.normal(jax.random.key(0), (7, 5)) * norm_scale, "b": jnp.zeros((3,)),
             "c": jax.random.normal(jax.random.key(1), (4,)) * norm_scale}
    ours, _ = optimizer_lib.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    reference, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=0), ours, reference)
    zeros, _ = optimizer_lib.clip_by_global_norm(1.0).update(jax.tree.map(jnp.zeros_like, grads), optax.EmptyState())
    assert all(bool(jnp.all(leaf == 0)) for leaf in jax.tree.leaves(zeros))  # no 0/0


def test_adafactor_trains_with_factored_state(tmp_path, data_dir):
    """The light optimizer for continuing a large model: the loss falls as AdamW's does (measured: 11.97 -> 10.15
    in 8 steps, AdamW 10.54) with one second moment and no first (factored for matrices of 128 x 128 or more)."""
    light = dataclasses.replace(OPTIMIZER, name="adafactor")
    result = Trainer(trainer_config(tmp_path / "run", data_dir, optimizer=light, checkpoint_every=TOTAL_STEPS)).run()
    losses = [result.losses[step] for step in sorted(result.losses)]
    assert result.stop_reason == "completed" and np.mean(losses[-2:]) < losses[0] - 1.0, losses
    params = nn.meta.unbox(Transformer(MODEL).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    size = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))
    adam = size(optimizer_lib.make_optimizer(OPTIMIZER).init(params))
    assert size(optimizer_lib.make_optimizer(light).init(params)) < 0.6 * adam
    big = {"kernel": jnp.zeros((256, 512))}
    assert size(optimizer_lib.make_optimizer(light).init(big)) < 1000  # a row and a column vector
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizer_lib.OptimizerConfig(name="lion")


def test_frozen_parameters_get_no_state_and_do_not_change(tmp_path, data_dir):
    frozen = dataclasses.replace(OPTIMIZER, frozen=("embed",), accumulation_steps=2)  # the tiny model's head is tied
    result = Trainer(trainer_config(tmp_path / "run", data_dir, optimizer=frozen, total_steps=2,
                                    checkpoint_every=1)).run()
    assert result.stop_reason == "completed"
    first, second = (checkpoints.load_params(tmp_path / "run" / "checkpoints" / str(step)) for step in (1, 2))
    jax.tree.map(np.testing.assert_array_equal, first["embed"], second["embed"])
    assert not np.allclose(first["layers"]["mlp"]["up_proj"]["kernel"], second["layers"]["mlp"]["up_proj"]["kernel"])
    initial = nn.meta.unbox(Transformer(MODEL).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    size = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))
    state = optimizer_lib.make_optimizer(frozen).init(initial)
    assert size(state) == 2 * (size(initial) - size(initial["embed"])) + 2  # two moments of the rest, two counts
    with pytest.raises(ValueError, match=r"frozen names \['lm_head'\] are not top-level parameters"):
        optimizer_lib.make_optimizer(dataclasses.replace(frozen, frozen=("lm_head",))).init(initial)


@pytest.mark.parametrize("loss_config", [LossConfig(), LossConfig(token_chunk_size=24)], ids=["plain", "token-chunks"])
def test_gradient_accumulation_equals_the_full_batch(loss_config):
    model = Transformer(MODEL)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    tokens = jax.random.randint(jax.random.key(1), (4, 17), 0, 1000)
    weights = (jax.random.uniform(jax.random.key(2), (4, 16)) > 0.3).astype(jnp.float32)
    batch = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:], "loss_weights": weights}
    (loss, _), grads = jax.value_and_grad(lambda p: step_lib.loss_fn(model, p, batch, 1e-4, loss_config),
                                          has_aux=True)(params)
    (loss_acc, _), grads_acc = step_lib.accumulated_loss_and_grads(model, params, batch, 2, 1e-4, loss_config)
    np.testing.assert_allclose(loss_acc, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads_acc, grads)


# -- golden -----------------------------------------------------------------------------------------------------

def independent_losses(data_dir, steps: int) -> list[float]:
    """The first `steps` losses recomputed without optax or train/step.py: plain jax log-softmax cross-entropy,
    global-norm clipping and AdamW (bias-corrected moments, decoupled decay off norms/biases) written out here,
    on the batches the loader yields for the same config, from the same initial parameters (model.init(key))."""
    tasks.register_source("counting", str(data_dir), "text", max_tokens=LOADER.sequence_length + 1)
    iterator = loader.make_iterator("counting", LOADER)
    model = Transformer(MODEL)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    config = OPTIMIZER

    def loss_of(p, batch):
        logits = model.apply({"params": p}, batch["input_ids"], batch["segment_ids"], batch["positions"])
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
        weights = batch["loss_mask"].astype(jnp.float32)
        return -jnp.sum(picked * weights) / jnp.sum(weights)

    def learning_rate(count):  # linear warmup from 0, then cosine to 10% of the peak
        if count < config.warmup_steps:
            return config.peak_learning_rate * count / config.warmup_steps
        progress = (count - config.warmup_steps) / (config.total_steps - config.warmup_steps)
        floor = config.peak_learning_rate * config.final_learning_rate_fraction
        return floor + (config.peak_learning_rate - floor) * 0.5 * (1 + np.cos(np.pi * progress))

    def decays(path):
        names = [str(getattr(k, "key", k)) for k in path]
        return not any(n in ("bias", "scale") or "norm" in n for n in names)

    mu = jax.tree.map(jnp.zeros_like, params)
    nu = jax.tree.map(jnp.zeros_like, params)
    losses = []
    for count in range(steps):
        batch = {k: jnp.asarray(v) for k, v in next(iterator).items()}
        loss, grads = jax.value_and_grad(loss_of)(params, batch)
        losses.append(float(loss))
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
        grads = jax.tree.map(lambda g: g * jnp.minimum(1.0, config.clip_norm / norm), grads)
        mu = jax.tree.map(lambda m, g: config.b1 * m + (1 - config.b1) * g, mu, grads)
        nu = jax.tree.map(lambda v, g: config.b2 * v + (1 - config.b2) * g * g, nu, grads)
        t, lr = count + 1, learning_rate(count)

        def update(path, p, m, v):
            step = (m / (1 - config.b1**t)) / (jnp.sqrt(v / (1 - config.b2**t)) + config.eps)
            if decays(path):
                step = step + config.weight_decay * p
            return p - lr * step

        params = jax.tree_util.tree_map_with_path(update, params, mu, nu)
    return losses


def test_golden_losses_match_an_independent_computation(reference, data_dir):
    _, result = reference
    expected = independent_losses(data_dir, 3)
    # Step 1 needs only the loss; steps 2-3 check the clipped, scheduled, masked AdamW updates before them.
    np.testing.assert_allclose([result.losses[1], result.losses[2], result.losses[3]], expected, rtol=2e-5)
    assert expected[2] < expected[0]


def test_metrics_log_and_tensorboard(reference):
    workdir, result = reference
    records = read_metrics(workdir)
    assert sorted(records) == list(range(1, TOTAL_STEPS + 1))
    for key in ("step", "loss", "tokens_per_second", "learning_rate", "grad_norm", "step_time", "mfu"):
        assert key in records[TOTAL_STEPS]
    assert records[1]["learning_rate"] == 0.0 and records[3]["learning_rate"] == pytest.approx(1e-2)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 6, 8]
    model, params = checkpoints.load(workdir)  # a training checkpoint is a model checkpoint
    assert model.config == MODEL


# -- resume -----------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_train import trainer_config
    from qwencoder_jax.train.trainer import Trainer
    Trainer(trainer_config({workdir!r}, {data!r}, {extra})).run()
""")


def test_resume_after_sigkill_is_bitwise_identical(tmp_path, reference, data_dir):
    _, uninterrupted = reference
    workdir = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).resolve().parent), workdir=str(workdir), data=str(data_dir),
                                   extra="checkpoint_every=3"))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = workdir / "checkpoints" / "3" / "commit_success.txt"
    deadline = time.monotonic() + 180
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert marker.exists(), "the child never finished its checkpoint at step 3"
    first_run = read_metrics(workdir)

    result = Trainer(trainer_config(workdir, data_dir, checkpoint_every=3)).run()
    assert result.resumed_from is not None and 3 <= result.resumed_from < TOTAL_STEPS, result
    assert f"resumed from checkpoint step {result.resumed_from}" in result.messages
    losses = {step: record["loss"] for step, record in first_run.items() if step <= result.resumed_from}
    losses.update(result.losses)
    assert losses == uninterrupted.losses  # bitwise: same data order, same optimizer state


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, data_dir):
    workdir = tmp_path / "preempted"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).resolve().parent), workdir=str(workdir), data=str(data_dir),
                                   extra="checkpoint_every=1000, total_steps=200"))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir()]
    assert len(saved) == 1 and 2 <= saved[0] < 200
    assert f"SIGTERM: saved checkpoint step {saved[0]} and stopping" in stderr


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, reference, data_dir):
    import shutil

    source, uninterrupted = reference
    workdir = tmp_path / "damaged"
    shutil.copytree(source, workdir)
    for path in (workdir / "checkpoints" / "8" / "params").rglob("*"):
        if path.is_file():
            path.write_bytes(b"not a checkpoint")
    result = Trainer(trainer_config(workdir, data_dir)).run()
    assert result.resumed_from == 6
    assert any("checkpoint step 8" in m and "could not be restored" in m for m in result.messages)
    assert result.losses == {7: uninterrupted.losses[7], 8: uninterrupted.losses[8]}
    # the damaged step was moved aside (kept for inspection) and step 8 written afresh
    assert (workdir / "checkpoints" / "8.damaged").is_dir() and (workdir / "checkpoints" / "8" / "params").is_dir()


class NanAtStep5(Trainer):
    """The batch of step 5 carries a NaN loss weight (a test-only trainer)."""

    def _device_batch(self, batch: dict, step: int) -> dict:
        if step + 1 == 5:
            batch = dict(batch, loss_mask=batch["loss_mask"].astype(np.float32))
            batch["loss_mask"][0, 0] = np.nan
        return super()._device_batch(batch, step)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    workdir = tmp_path / "nan"
    result = NanAtStep5(trainer_config(workdir, data_dir)).run()
    assert result.stop_reason == "non_finite" and result.final_step == 5 and result.last_good_checkpoint == 4
    assert any("at step 5" in m and "last good checkpoint is step 4" in m for m in result.messages)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert max(read_metrics(workdir)) == 4  # the bad step is not logged as a metric


# -- real data through the command line: stage 1 learns, stage 2 starts from its weights --------------------------

def test_stage1_loss_falls_on_real_data_and_stage2_starts_from_its_weights(tmp_path):
    import data_helpers
    from qwencoder_apps import train as cli

    data_helpers.write_code_files(tmp_path / "code", limit=30)
    data_helpers.write_text(tmp_path / "text")
    data_helpers.write_text(tmp_path / "math", kind="math", limit=10)
    data_helpers.write_code_repos(tmp_path / "repo")
    common = ["--gin_file=gin/cpu/tiny.gin", f"--gin.TEXT_DIR='{tmp_path / 'text'}'",
              f"--gin.MATH_DIR='{tmp_path / 'math'}'"]
    stage1 = tmp_path / "stage1"
    gin_dir = Path(__file__).resolve().parents[2] / "gin"
    assert cli.main([f"--gin_file={gin_dir / 'stages/stage1_file_level.gin'}", *common,
                     f"--gin.CODE_DIR='{tmp_path / 'code'}'", "--gin.TOTAL_STEPS=24", "--gin.PEAK_LEARNING_RATE=1e-2",
                     f"--workdir={stage1}"]) == 0
    losses = [record["loss"] for _, record in sorted(read_metrics(stage1).items())]
    assert len(losses) == 24 and np.mean(losses[-4:]) < np.mean(losses[:4]) - 1.0, losses
    assert "train.mixture" in (stage1 / "operative_config.gin").read_text()

    stage2 = tmp_path / "stage2"
    # A zero learning rate leaves the weights as loaded, so stage 2's checkpoint must equal stage 1's final weights.
    assert cli.main([f"--gin_file={gin_dir / 'stages/stage2_repo_level.gin'}", *common,
                     f"--gin.REPO_DIR='{tmp_path / 'repo'}'", f"--gin.STAGE1_WORKDIR='{stage1}'",
                     "--gin.TOTAL_STEPS=1", "--gin.WARMUP_STEPS=0", "--gin.PEAK_LEARNING_RATE=0.0",
                     f"--workdir={stage2}"]) == 0
    stage1_params = checkpoints.load_params(stage1)
    stage2_params = checkpoints.load_params(stage2)
    jax.tree.map(np.testing.assert_array_equal, stage2_params, stage1_params)
    assert checkpoints.load_config(stage2).rope_theta == 1e6 and checkpoints.load_config(stage1).rope_theta == 1e4
    assert json.loads((stage2 / "inference_overrides.json").read_text())["yarn"]["factor"] == 4.0


def test_train_throughput_benchmark_stays_runnable(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import train_throughput

    for head in ("tokens", "vocab", "plain"):
        result = train_throughput.main(["--preset", "tiny", "--sequence", "32", "--steps", "2", "--head", head])
        assert result["tokens_per_second"] > 0 and 0 < result["mfu"] < 1.5
        assert capsys.readouterr().out.strip().splitlines()[-1].startswith("tokens_per_second=")
