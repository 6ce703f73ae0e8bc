"""Invariants of the Qwen2 model: causality, packing, GQA, attention backends, scan/remat, dtypes, YaRN, bad input.

The splash backend runs in Pallas interpret mode here (no TPU): shapes stay small (sequence <= 256, kernel
blocks of 128, the smallest the kernel takes) so the file runs in well under a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwencoder_jax.checkpoints import unstack_layers
from qwencoder_jax.kernels import splash
from qwencoder_jax.model.attention import xla_attention
from qwencoder_jax.model.config import ModelConfig, YarnScaling, get_preset
from qwencoder_jax.model.layers import rope_cos_sin, rope_inverse_frequencies
from qwencoder_jax.model.transformer import Transformer, init_params

# 2 layers, 4 query heads over 2 key/value heads (GQA ratio 2), untied head so lm_head is exercised too.
CONFIG = ModelConfig(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                     intermediate_size=64, tie_embeddings=False, rope_theta=10_000.0, splash_block_size=128)


@functools.lru_cache(maxsize=None)  # jax arrays are immutable: tests may share them
def random_params(config: ModelConfig, seed: int = 0):
    """Initialised parameters plus noise, so biases and norm scales are not their trivial zeros and ones."""
    params = init_params(config, jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def random_ids(shape, seed: int = 0, vocab: int = CONFIG.vocab_size):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, size=shape), jnp.int32)


def packed_rows(rows, total):
    """segment ids (1, 2, ... per document, 0 for trailing padding) and positions restarting per document.

    rows: the document lengths of each row.
    """
    segment_ids, positions = [], []
    for lengths in rows:
        row_segments, row_positions = [], []
        for i, length in enumerate(lengths, start=1):
            row_segments += [i] * length
            row_positions += list(range(length))
        padding = total - len(row_segments)
        segment_ids.append(row_segments + [0] * padding)
        positions.append(row_positions + list(range(padding)))
    return jnp.asarray(segment_ids, jnp.int32), jnp.asarray(positions, jnp.int32)


def logits_fn(config):
    model = Transformer(config)
    return jax.jit(lambda params, ids, seg=None, pos=None: model.apply({"params": params}, ids, seg, pos))


def loss_and_grad_fn(config):
    """Next-token cross entropy (float32) and its gradient w.r.t. every parameter."""
    model = Transformer(config)

    def loss(params, ids, seg, pos):
        logits_btv = model.apply({"params": params}, ids, seg, pos)
        log_probs = jax.nn.log_softmax(logits_btv[:, :-1], axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1))

    return jax.jit(jax.value_and_grad(loss))


def max_abs_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --- causality and packing -------------------------------------------------------------------------------


def test_changing_a_token_changes_no_earlier_logit():
    params = random_params(CONFIG)
    ids = random_ids((2, 48))
    changed = ids.at[:, 30].set((ids[:, 30] + 1) % CONFIG.vocab_size)
    apply = logits_fn(CONFIG)
    before, after = apply(params, ids), apply(params, changed)
    np.testing.assert_array_equal(np.asarray(before[:, :30]), np.asarray(after[:, :30]))
    assert float(jnp.max(jnp.abs(before[:, 30:] - after[:, 30:]))) > 1e-4  # the change is visible from t=30 on


@pytest.mark.parametrize("backend", ["xla", "cudnn"])
def test_packed_row_equals_documents_run_alone(backend):
    config = CONFIG.replace(attention_backend=backend)
    params = random_params(config)
    lengths, total = (13, 9, 20), 48  # three documents and 6 padding tokens
    ids = random_ids((1, total), seed=1)
    segment_ids, positions = packed_rows([lengths], total)
    apply = logits_fn(config)
    packed = apply(params, ids, segment_ids, positions)
    start = 0
    for length in lengths:
        alone = apply(params, ids[:, start:start + length])
        assert max_abs_diff(packed[:, start:start + length], alone) <= 1e-5
        start += length


# --- grouped-query attention -----------------------------------------------------------------------------


def test_gqa_equals_mha_with_repeated_kv_heads():
    params = random_params(CONFIG)
    groups = CONFIG.num_query_groups
    mha_config = CONFIG.replace(num_kv_heads=CONFIG.num_heads)
    mha_params = jax.tree.map(lambda x: x, params)
    attention = dict(mha_params["layers"]["attention"])
    for name in ("k_proj", "v_proj"):
        # kernel [layers, d, k, e], bias [layers, k, e]: query head h reads kv head h // groups.
        attention[name] = {key: jnp.repeat(value, groups, axis=-2) for key, value in attention[name].items()}
    mha_params["layers"] = {**mha_params["layers"], "attention": attention}
    ids = random_ids((2, 40), seed=2)
    gqa = logits_fn(CONFIG)(params, ids)
    mha = logits_fn(mha_config)(mha_params, ids)
    assert max_abs_diff(gqa, mha) <= 1e-5


# --- attention backends ----------------------------------------------------------------------------------


def _attention_inputs(batch, length, heads, kv_heads, head_dim, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.float32)
    segment_ids = jnp.asarray(np.sort(rng.integers(0, 4, size=(batch, length)), axis=1), jnp.int32)
    return q, k, v, segment_ids


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_splash_kernel_matches_xla_attention(groups):
    q, k, v, segment_ids = _attention_inputs(batch=2, length=256, heads=4, kv_heads=4 // groups, head_dim=16)

    def loss(attention):
        return lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v)))

    def splash_fn(q, k, v):
        return splash.splash_attention(q, k, v, segment_ids, block_size=128)

    def xla_fn(q, k, v):
        return xla_attention(q, k, v, segment_ids)

    assert max_abs_diff(jax.jit(splash_fn)(q, k, v), xla_fn(q, k, v)) <= 2e-6
    grads_splash = jax.jit(jax.grad(loss(splash_fn), argnums=(0, 1, 2)))(q, k, v)
    grads_xla = jax.grad(loss(xla_fn), argnums=(0, 1, 2))(q, k, v)
    assert max_abs_diff(grads_splash, grads_xla) <= 2e-5


def test_splash_kernel_rejects_block_sizes_off_the_lane_width():
    q, k, v, segment_ids = _attention_inputs(batch=1, length=128, heads=2, kv_heads=1, head_dim=16)
    with pytest.raises(ValueError, match="block_size must be a positive multiple of 128"):
        splash.splash_attention(q, k, v, segment_ids, block_size=64)
    assert splash.choose_block_size(200, 512) == 256  # clipped to the sequence, rounded up to whole lanes


SPLASH_CASES = {  # sequence length, document lengths per row (None: one document per row), config changes
    "one_document": (256, None, {}),
    "packed": (256, [(100, 60, 80), (30, 200, 26)], {}),  # row 1 ends in 16 padding tokens
    "length_not_multiple_of_block": (200, [(120, 80), (50, 50, 90)], {}),
    "packed_remat_unrolled": (256, [(128, 128), (7, 249)], {"remat_policy": "full", "scan_layers": False}),
}


@pytest.mark.parametrize("case", list(SPLASH_CASES))
def test_splash_backend_matches_xla_values_and_gradients(case):
    length, rows, changes = SPLASH_CASES[case]
    ids = random_ids((2, length), seed=3)
    segment_ids, positions = packed_rows(rows, length) if rows else (None, None)
    params = random_params(CONFIG)
    if not changes.get("scan_layers", True):
        params = unstack_layers(params, CONFIG.num_layers)
    xla_config = CONFIG.replace(attention_backend="xla", **changes)
    splash_config = CONFIG.replace(attention_backend="splash", **changes)
    # Gradients first: the kernel's first trace is then inside grad, where a kernel cached from an earlier
    # trace once leaked tracers.
    loss_xla, grads_xla = loss_and_grad_fn(xla_config)(params, ids, segment_ids, positions)
    loss_splash, grads_splash = loss_and_grad_fn(splash_config)(params, ids, segment_ids, positions)
    assert abs(float(loss_splash - loss_xla)) <= 2e-5
    assert max_abs_diff(grads_splash, grads_xla) <= 2e-5
    largest_gradient = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_xla))
    assert max_abs_diff(grads_splash, grads_xla) <= 1e-5 * largest_gradient  # gradients are small: check relative too
    logits_xla = logits_fn(xla_config)(params, ids, segment_ids, positions)
    logits_splash = logits_fn(splash_config)(params, ids, segment_ids, positions)
    assert max_abs_diff(logits_splash, logits_xla) <= 2e-5


def test_cudnn_backend_matches_xla_on_cpu():
    # Off GPU `jax.nn.dot_product_attention` runs XLA's own implementation: this checks our mask and GQA
    # plumbing into it (is_causal + segment mask), not cuDNN's kernel, which needs a GPU.
    ids = random_ids((2, 48), seed=4)
    segment_ids, positions = packed_rows([(20, 28), (5, 30, 10)], 48)
    params = random_params(CONFIG)
    xla_config, cudnn_config = CONFIG.replace(attention_backend="xla"), CONFIG.replace(attention_backend="cudnn")
    assert max_abs_diff(logits_fn(cudnn_config)(params, ids, segment_ids, positions),
                        logits_fn(xla_config)(params, ids, segment_ids, positions)) <= 1e-5
    _, grads_cudnn = loss_and_grad_fn(cudnn_config)(params, ids, segment_ids, positions)
    _, grads_xla = loss_and_grad_fn(xla_config)(params, ids, segment_ids, positions)
    assert max_abs_diff(grads_cudnn, grads_xla) <= 1e-5


# --- execution choices: scan, remat, dtypes --------------------------------------------------------------


def test_scanned_layers_equal_unrolled_layers():
    params = random_params(CONFIG)
    unrolled_config = CONFIG.replace(scan_layers=False)
    unrolled_params = unstack_layers(params, CONFIG.num_layers)
    ids = random_ids((2, 40), seed=5)
    scanned_logits = logits_fn(CONFIG)(params, ids)
    unrolled_logits = logits_fn(unrolled_config)(unrolled_params, ids)
    assert max_abs_diff(scanned_logits, unrolled_logits) <= 1e-5
    _, scanned_grads = loss_and_grad_fn(CONFIG)(params, ids, None, None)
    _, unrolled_grads = loss_and_grad_fn(unrolled_config)(unrolled_params, ids, None, None)
    assert max_abs_diff(unstack_layers(scanned_grads, CONFIG.num_layers), unrolled_grads) <= 1e-5


@pytest.mark.parametrize("policy,scan", [("full", True), ("dots", True), ("dots_with_no_batch_dims", False)])
def test_remat_changes_neither_values_nor_gradients(policy, scan):
    config = CONFIG.replace(scan_layers=scan)
    params = random_params(CONFIG)
    if not scan:
        params = unstack_layers(params, config.num_layers)
    ids = random_ids((2, 40), seed=6)
    loss, grads = loss_and_grad_fn(config)(params, ids, None, None)
    remat_loss, remat_grads = loss_and_grad_fn(config.replace(remat_policy=policy))(params, ids, None, None)
    assert abs(float(loss - remat_loss)) <= 1e-6
    assert max_abs_diff(grads, remat_grads) <= 1e-6


def test_bfloat16_compute_stays_close_to_float32():
    params = random_params(CONFIG)
    ids = random_ids((2, 64), seed=7)
    logits_f32 = logits_fn(CONFIG)(params, ids)
    logits_bf16 = logits_fn(CONFIG.replace(compute_dtype="bfloat16"))(params, ids)
    assert logits_bf16.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9, about 0.2%); a handful of roundings per matmul
    # through 2 layers and the head compound to about 1%. 3% leaves room without hiding a real bug (a dropped
    # norm or an attention computed in bfloat16 overflowing would be tens of percent).
    relative_error = float(jnp.linalg.norm(logits_bf16 - logits_f32) / jnp.linalg.norm(logits_f32))
    assert relative_error < 0.03


# --- YaRN ------------------------------------------------------------------------------------------------


def yarn_reference(head_dim, theta, factor, original_length, beta_fast=32.0, beta_slow=1.0):
    """YaRN "NTK-by-parts" in float64 numpy, from the paper (Peng et al. 2023, section 3) as transformers applies it.

    Pair i rotates with wavelength 2*pi*theta^(2i/e), i.e. original_length / wavelength full turns over the
    original context. Pairs that turn more than beta_fast times keep their frequency, pairs that turn fewer than
    beta_slow times are interpolated (frequency / factor), and a linear ramp over the pair index blends between;
    transformers puts the ramp's ends at the (floored / ceiled) fractional pair indices where the turn counts
    equal beta_fast and beta_slow. cos and sin are multiplied by 0.1 * ln(factor) + 1.
    """
    pair = np.arange(head_dim // 2, dtype=np.float64)
    frequency = theta ** (-2.0 * pair / head_dim)

    def pair_index_with_turns(turns):  # solve original_length * frequency(i) / (2 pi) == turns for i
        return head_dim / 2 * math.log(original_length / (2 * math.pi * turns)) / math.log(theta)

    ramp_start = max(math.floor(pair_index_with_turns(beta_fast)), 0)
    ramp_end = min(math.ceil(pair_index_with_turns(beta_slow)), head_dim - 1)
    interpolated_share = np.clip((pair - ramp_start) / (ramp_end - ramp_start), 0.0, 1.0)
    blended = frequency / factor * interpolated_share + frequency * (1.0 - interpolated_share)
    return blended, 0.1 * math.log(factor) + 1.0


def test_yarn_rope_matches_an_independent_reference():
    config = get_preset("tiny", head_dim=128, rope_theta=1_000_000.0,
                        yarn=YarnScaling(factor=4.0, original_max_position_embeddings=32_768))
    expected_frequency, expected_factor = yarn_reference(128, 1_000_000.0, 4.0, 32_768)
    assert expected_factor == pytest.approx(1.1386, abs=1e-4)

    frequency, factor = rope_inverse_frequencies(config)
    np.testing.assert_allclose(np.asarray(frequency), expected_frequency, rtol=2e-6)
    assert factor == pytest.approx(expected_factor, rel=1e-12)
    # The ends behave as the paper says: fast pairs untouched, slow pairs divided by the factor.
    plain = 1_000_000.0 ** (-np.arange(64) / 64)
    np.testing.assert_allclose(np.asarray(frequency)[:5], plain[:5], rtol=2e-6)
    np.testing.assert_allclose(np.asarray(frequency)[-5:], plain[-5:] / 4.0, rtol=2e-6)

    positions_bt = jnp.asarray([[0, 1, 2, 3, 100, 1000, 2047]], jnp.int32)
    cos_bte, sin_bte = rope_cos_sin(config, positions_bt)
    angles = np.asarray(positions_bt, np.float64)[..., None] * np.concatenate([expected_frequency] * 2)
    # float32 angles carry about 1e-7 relative error: at position 2047 that is a few 1e-4 absolute.
    np.testing.assert_allclose(np.asarray(cos_bte), np.cos(angles) * expected_factor, atol=5e-4)
    np.testing.assert_allclose(np.asarray(sin_bte), np.sin(angles) * expected_factor, atol=5e-4)
    np.testing.assert_allclose(np.asarray(cos_bte)[0, 0], expected_factor, rtol=1e-6)  # position 0: cos = factor


# --- bad input -------------------------------------------------------------------------------------------


def test_unknown_preset_is_named_in_the_error():
    with pytest.raises(ValueError, match="qwen9-giant"):
        get_preset("qwen9-giant")


def test_query_heads_must_be_a_multiple_of_kv_heads():
    with pytest.raises(ValueError, match=r"num_heads \(6\) must be a multiple of num_kv_heads \(4\)"):
        CONFIG.replace(num_heads=6, num_kv_heads=4)


@pytest.mark.parametrize("ids,problem", [
    (jnp.zeros((8,), jnp.int32), "must be \\[batch, length\\]"),
    (jnp.zeros((1, 2, 8), jnp.int32), "must be \\[batch, length\\]"),
    (jnp.zeros((1, 8), jnp.float32), "must be integers"),
])
def test_bad_input_ids_are_rejected(ids, problem):
    params = random_params(CONFIG)
    with pytest.raises(ValueError, match=problem):
        Transformer(CONFIG).apply({"params": params}, ids)
