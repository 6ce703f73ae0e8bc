"""Greedy decoding by full forward passes: slow, obviously correct, the reference for faster decoders.

Each step runs the whole fixed-size buffer (one compilation for every step); causal attention keeps the unused
tail of the buffer invisible to the positions being read.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def greedy_by_full_forward(model, params: Any, prompt_ids: Sequence[int], new_tokens: int,
                           on_token: Callable[[int], None] | None = None) -> list[int]:
    """The `new_tokens` ids that greedy (argmax) decoding appends to `prompt_ids`."""
    if not prompt_ids:
        raise ValueError("greedy decoding needs a prompt of at least one token")
    length = len(prompt_ids) + new_tokens
    buffer = np.zeros((1, length), np.int32)
    buffer[0, :len(prompt_ids)] = prompt_ids
    forward = jax.jit(lambda p, ids: model.apply({"params": p}, ids))
    for position in range(len(prompt_ids), length):
        logits_btv = forward(params, jnp.asarray(buffer))
        buffer[0, position] = int(jnp.argmax(logits_btv[0, position - 1]))
        if on_token is not None:
            on_token(int(buffer[0, position]))
    return buffer[0, len(prompt_ids):].tolist()
