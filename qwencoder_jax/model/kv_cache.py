"""KV-cache decoding: one jitted prefill, then cached decode steps in a `lax.while_loop` on device.

    decode_fn = make_decoder(model, cache_length=256, eos_ids=(151643,))
    tokens_bn, steps = decode_fn(params, prompt_ids_bp, prompt_lengths_b, active_b, sample_ids_b,
                                 max_new_tokens, seed, temperature, top_k, top_p)

Design notes: docs/MODEL.md, section `qwencoder_jax/model/kv_cache.py`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, ContextManager

import jax
import jax.numpy as jnp

from qwencoder_jax.model.layers import dtype_of
from qwencoder_jax.model.transformer import Transformer, output_projection

FINISHED = -1  # the token a finished (or padding) row writes for each remaining step


def bucket_length(length: int, minimum: int = 16) -> int:
    """`length` rounded up to a coarse grid (four steps per power of two, at least `minimum`), so that prompts
    of similar lengths share one compilation and padding costs at most a quarter of the length."""
    length = max(int(length), minimum)
    step = max(minimum, (1 << (length.bit_length() - 1)) >> 2)
    return -(-length // step) * step


def cache_shapes(model: Transformer, batch: int, cache_length: int) -> Any:
    """Shapes and dtypes of the "cache" collection for `batch` rows of `cache_length` slots (nothing allocated)."""
    ids = jax.ShapeDtypeStruct((batch, cache_length), jnp.int32)
    variables = jax.eval_shape(lambda rng, ids_bs: model.init(rng, ids_bs, decode="prefill"), jax.random.key(0), ids)
    return variables["cache"]


def init_cache(model: Transformer, batch: int, cache_length: int) -> Any:
    """An empty cache (zeros; index 0)."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes(model, batch, cache_length))


def filter_logits(logits_bv: jnp.ndarray, temperature, top_k, top_p) -> jnp.ndarray:
    """Temperature-scaled float32 logits with everything outside the top-k and then top-p (nucleus) set at -inf.

    top_k = 0 and top_p = 1 turn those filters off. The top-p set is the smallest set of most likely tokens whose
    probability (renormalised after top-k) reaches top_p: a token is kept while the probability of the tokens
    ranked above it is still below top_p, so the most likely token always is. Arguments may be traced values: one
    compilation serves every sampling setting.
    """
    vocab = logits_bv.shape[-1]
    logits_bv = logits_bv.astype(jnp.float32) / temperature
    sorted_bv = -jnp.sort(-logits_bv, axis=-1)
    ranks_v = jnp.arange(vocab)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    in_top_k_v = ranks_v < k
    probs_bv = jax.nn.softmax(jnp.where(in_top_k_v, sorted_bv, -jnp.inf), axis=-1)
    mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    kept_bv = in_top_k_v & (mass_before_bv < top_p)
    threshold_b1 = jnp.min(jnp.where(kept_bv, sorted_bv, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_bv < threshold_b1, -jnp.inf, logits_bv)


def sample_tokens(logits_bv: jnp.ndarray, keys_b: jax.Array, temperature, top_k, top_p) -> jnp.ndarray:
    """Greedy when temperature is 0; the vocabulary sort only runs when top-k or top-p is on."""
    def greedy(_):
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)

    def sample(_):
        filtered_bv = jax.lax.cond((top_k > 0) | (top_p < 1.0),
                                   lambda: filter_logits(logits_bv, temperature, top_k, top_p),
                                   lambda: logits_bv.astype(jnp.float32) / temperature)
        return jax.vmap(jax.random.categorical)(keys_b, filtered_bv).astype(jnp.int32)

    return jax.lax.cond(temperature == 0.0, greedy, sample, None)


def _last_logits(model: Transformer, params: Any, hidden_bd: jnp.ndarray) -> jnp.ndarray:
    """The output head on one position per row (a prefill never materialises [b, P, v] logits)."""
    projection_dv = output_projection(model.config, params)
    compute = dtype_of(model.config.compute_dtype)
    return jnp.einsum("bd,dv->bv", hidden_bd.astype(compute), projection_dv.astype(compute),
                      preferred_element_type=jnp.float32)


@functools.lru_cache(maxsize=64)
def make_decoder(model: Transformer, cache_length: int, eos_ids: tuple[int, ...],
                 step_scope: Callable[..., ContextManager] | None = None) -> Callable:
    """A jitted `(params, prompt_ids_bp, prompt_lengths_b, active_b, sample_ids_b, max_new_tokens, seed,
    temperature, top_k, top_p, packed=None) -> (tokens_bn [b, cache_length - P] int32, steps [])`; prompts
    left-padded (any pad id), lengths >= 1, max_new_tokens <= cache_length - P. One compilation per (batch, P)
    shape; cached per (model, cache_length, eos_ids, step_scope), so generators of equal models share them.

    step_scope: how the decode steps compute their projections, entered at trace time around each step as
    `step_scope(model.config, packed)`; None: as the model writes them (XLA's dots). The CPU decoder passes
    `qwencoder_jax.cpu_decode.packed_weights.use` (few-row kernel, and `packed` block-quantised weights by
    Hugging Face name); the prefill always uses the float params."""
    if not eos_ids:
        raise ValueError("decoding needs at least one end-of-sequence token id")
    eos_e = tuple(int(i) for i in eos_ids)

    def decode(params, prompt_ids_bp, prompt_lengths_b, active_b, sample_ids_b, max_new_tokens, seed, temperature,
               top_k, top_p, packed=None):
        if packed and step_scope is None:
            raise ValueError("packed weights need a step_scope that multiplies by them "
                             "(qwencoder_jax.cpu_decode.packed_weights.use)")
        b, p = prompt_ids_bp.shape
        new_slots = cache_length - p
        if new_slots < 1:
            raise ValueError(f"cache_length {cache_length} leaves no room after a prompt of {p} slots")
        padding_b = p - prompt_lengths_b
        slots_p = jnp.arange(p, dtype=jnp.int32)
        segment_ids_bp = (slots_p[None, :] >= padding_b[:, None]).astype(jnp.int32)
        positions_bp = jnp.maximum(slots_p[None, :] - padding_b[:, None], 0)
        cache = init_cache(model, b, cache_length)
        hidden_bpd, mutated = model.apply({"params": params, "cache": cache}, prompt_ids_bp, segment_ids_bp,
                                          positions_bp, return_hidden=True, decode="prefill", mutable=["cache"])
        logits_bv = _last_logits(model, params, hidden_bpd[:, -1])
        row_keys_b = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), sample_ids_b)
        eos_ids_e = jnp.asarray(eos_e, jnp.int32)

        def running(carry):
            step, _, _, _, done_b = carry
            return (step < max_new_tokens) & ~jnp.all(done_b)

        def one_token(carry):
            step, tokens_bn, logits_bv, cache, done_b = carry
            keys_b = jax.vmap(jax.random.fold_in, (0, None))(row_keys_b, step)
            token_b = jnp.where(done_b, FINISHED, sample_tokens(logits_bv, keys_b, temperature, top_k, top_p))
            tokens_bn = jax.lax.dynamic_update_slice(tokens_bn, token_b[:, None], (0, step))
            done_b = done_b | jnp.any(token_b[:, None] == eos_ids_e[None, :], axis=-1)
            fed_b1 = jnp.maximum(token_b, 0)[:, None]  # finished rows feed a harmless id; their output is ignored
            scope = step_scope(model.config, packed) if step_scope else contextlib.nullcontext()
            with scope:
                logits_b1v, mutated = model.apply({"params": params, "cache": cache}, fed_b1,
                                                  jnp.ones((b, 1), jnp.int32), (prompt_lengths_b + step)[:, None],
                                                  decode="step", mutable=["cache"])
            return step + 1, tokens_bn, logits_b1v[:, 0], mutated["cache"], done_b

        tokens_bn = jnp.full((b, new_slots), FINISHED, jnp.int32)
        carry = (jnp.int32(0), tokens_bn, logits_bv, mutated["cache"], ~active_b)
        steps, tokens_bn, _, _, _ = jax.lax.while_loop(running, one_token, carry)
        return tokens_bn, steps

    return jax.jit(decode)
