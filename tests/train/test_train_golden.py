"""Golden losses: three AdamW steps of the `small` preset on a fixed batch give the losses that transformers'
Qwen2ForCausalLM + torch's AdamW give from the same initial weights (recorded once by
tests/train/golden/make_small_golden.py, which re-records them; nothing here recomputes them)."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from qwencoder_jax import sharding
from qwencoder_jax.model import Transformer, get_preset
from qwencoder_jax.train import step as step_lib
from qwencoder_jax.train.loss import LossConfig
from qwencoder_jax.train.optimizer import OptimizerConfig, make_optimizer, make_schedule

# Printed by `python tests/train/golden/make_small_golden.py` (torch 2.13.0, transformers 5.24.0, float32, eager).
GOLDEN_LOSSES = (12.002204895019531, 11.483646392822266, 10.999524116516113)


def _golden_script():
    path = Path(__file__).parent / "golden" / "make_small_golden.py"
    spec = importlib.util.spec_from_file_location("make_small_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines constants and functions only; runs nothing
    return module


def _our_losses(golden, loss_config: LossConfig) -> list[float]:
    config = get_preset(golden.PRESET)
    optimizer_config = OptimizerConfig(
        peak_learning_rate=golden.PEAK_LEARNING_RATE, schedule="cosine", warmup_steps=0,
        total_steps=golden.TOTAL_STEPS, final_learning_rate_fraction=golden.FLOOR_FRACTION,
        weight_decay=golden.WEIGHT_DECAY, b1=golden.B1, b2=golden.B2, eps=golden.EPS, clip_norm=golden.CLIP_NORM)
    schedule = make_schedule(optimizer_config)
    for step in range(golden.STEPS):  # the same learning rates as the torch run's
        np.testing.assert_allclose(float(schedule(step)), golden.learning_rate(step), rtol=1e-6)
    model, optimizer = Transformer(config), make_optimizer(optimizer_config)
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1), devices=jax.devices()[:1])
    state, shardings = step_lib.init_train_state(model, optimizer, mesh, jax.random.key(golden.SEED))
    step_fn = step_lib.jit_train_step(model, optimizer, mesh, shardings,
                                      batch_keys=("input_ids", "targets", "loss_weights"), loss_config=loss_config)
    batch = golden.fixed_batch(config.vocab_size)
    losses = []
    for _ in range(golden.STEPS):
        state, metrics = step_fn(state, batch)
        losses.append(float(metrics["loss"]))
    return losses


def test_small_preset_losses_match_the_torch_golden_run():
    golden = _golden_script()
    np.testing.assert_allclose(_our_losses(golden, LossConfig()), GOLDEN_LOSSES, rtol=1e-5)


@pytest.mark.slow  # the fused heads' equality is also checked, faster, in test_train_loss.py
@pytest.mark.parametrize("loss_config", [LossConfig(vocab_chunk_size=4096), LossConfig(token_chunk_size=48)],
                         ids=["vocab-chunks", "token-chunks"])
def test_small_preset_losses_match_the_torch_golden_run_with_a_fused_head(loss_config):
    golden = _golden_script()
    np.testing.assert_allclose(_our_losses(golden, loss_config), GOLDEN_LOSSES, rtol=1e-5)
