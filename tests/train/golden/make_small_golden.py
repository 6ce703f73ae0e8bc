"""Re-records the golden losses of tests/train/test_train_golden.py from an independent computation: transformers'
Qwen2ForCausalLM in torch (float32, eager attention) with our `small` preset's initial weights, trained by torch's
own AdamW for the same steps on the same fixed batch.

    python tests/train/golden/make_small_golden.py      # prints GOLDEN_LOSSES = (...) to paste into the test

Only the initial weights come from qwencoder_jax (its initialiser, converted to Hugging Face names by
qwencoder_jax/convert); the forward pass, loss, gradients, clipping, weight decay mask, learning-rate schedule and
AdamW update are torch's and written here from their definitions, not from our trainer.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

# The run both sides train: the `small` preset on one fixed batch (a short sequence keeps the test fast).
PRESET = "small"
BATCH, LENGTH, SEED = 2, 64, 0
PEAK_LEARNING_RATE, TOTAL_STEPS, FLOOR_FRACTION = 1e-3, 4, 0.1  # cosine, no warmup
WEIGHT_DECAY, B1, B2, EPS, CLIP_NORM = 0.1, 0.9, 0.95, 1e-8, 0.5
STEPS = 3  # losses recorded: before update 1, 2 and 3


def fixed_batch(vocab_size: int) -> dict[str, np.ndarray]:
    tokens = np.random.RandomState(SEED).randint(0, vocab_size, size=(BATCH, LENGTH + 1)).astype(np.int32)
    weights = np.ones((BATCH, LENGTH), np.float32)
    weights[0, :7] = 0.0  # a masked prefix, as SFT prompts are
    return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:], "loss_weights": weights}


def learning_rate(step: int) -> float:
    """Cosine from the peak to FLOOR_FRACTION x peak over TOTAL_STEPS (step counts updates from 0)."""
    floor = PEAK_LEARNING_RATE * FLOOR_FRACTION
    return floor + (PEAK_LEARNING_RATE - floor) * 0.5 * (1 + math.cos(math.pi * min(step, TOTAL_STEPS) / TOTAL_STEPS))


def initial_hf_tensors():
    """Our preset's initial parameters (the trainer's initialiser, seed 0) as Hugging Face tensors."""
    import jax

    from qwencoder_jax import sharding
    from qwencoder_jax.convert.common import hf_from_params
    from qwencoder_jax.convert.hf import hf_config_from_model
    from qwencoder_jax.model import Transformer, get_preset
    from qwencoder_jax.train import step as step_lib
    from qwencoder_jax.train.optimizer import OptimizerConfig, make_optimizer

    config = get_preset(PRESET)
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=1), devices=jax.devices()[:1])
    state, _ = step_lib.init_train_state(Transformer(config), make_optimizer(OptimizerConfig()), mesh,
                                         jax.random.key(SEED))
    return config, hf_config_from_model(config, "float32"), hf_from_params(config, jax.device_get(state.params))


def torch_losses() -> list[float]:
    import torch
    import transformers

    config, hf_config, tensors = initial_hf_tensors()
    torch.manual_seed(0)
    hf_config = {k: v for k, v in hf_config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf_config, attn_implementation="eager"))
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()},
                                                strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model = model.float().train()
    named = dict(model.named_parameters())  # the tied head appears once, as the embedding
    no_decay = [p for n, p in named.items() if n.endswith(".bias") or "norm" in n]
    decay = [p for n, p in named.items() if not (n.endswith(".bias") or "norm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=PEAK_LEARNING_RATE,
                                  betas=(B1, B2), eps=EPS)
    batch = {k: torch.from_numpy(v) for k, v in fixed_batch(config.vocab_size).items()}
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad()
        logits = model(input_ids=batch["input_ids"].long()).logits.float()
        token_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       batch["targets"].long().reshape(-1), reduction="none")
        weights = batch["loss_weights"].reshape(-1)
        loss = (token_loss * weights).sum() / weights.sum()
        loss.backward()
        losses.append(float(loss.detach()))
        # Global-norm clipping as defined: scale by CLIP_NORM / norm when the norm exceeds CLIP_NORM.
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in named.values()))
        if norm > CLIP_NORM:
            for p in named.values():
                p.grad.mul_(float(CLIP_NORM / norm))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        optimizer.step()
    return losses


if __name__ == "__main__":
    values = torch_losses()
    print("GOLDEN_LOSSES = (" + ", ".join(f"{v!r}" for v in values) + ")")
