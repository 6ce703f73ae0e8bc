"""The few-row matmul kernel (qwencoder_jax/cpu_decode/few_rows): equal to numpy on awkward shapes (both weight
layouts, remainders of every loop, column blocks), routed to only where it applies, used by the decoder's steps
with the same tokens as XLA's dots, correct under concurrent calls, and a clear fallback when it cannot be built."""

from __future__ import annotations

import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwencoder_jax.cpu_decode import few_rows, packed, packed_weights
from qwencoder_jax.model import ModelConfig, Transformer, init_params, kv_cache

pytestmark = pytest.mark.skipif(not few_rows.available(), reason="the kernel could not be built here")


def reference(x, w, transposed_w):
    return x.astype(np.float64) @ (w.T if transposed_w else w).astype(np.float64)


# (m, k, n): one row, odd rows, the row-tile edge (16) and beyond it; k and n not multiples of 4 or 16; n over
# a column block (4096); k shorter than one 4-row pass.
SHAPES = [(1, 576, 1536), (3, 100, 37), (8, 577, 193), (16, 64, 4100), (17, 33, 50), (5, 3, 7), (2, 1536, 576)]


@pytest.mark.parametrize("transposed_w", [False, True])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_kernel_equals_numpy(m, k, n, transposed_w):
    rng = np.random.default_rng(m * 1000 + k + n)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k) if transposed_w else (k, n)).astype(np.float32)
    y = np.asarray(jax.jit(lambda x, w: few_rows.matmul(x, w, transposed_w))(x, w))
    assert y.shape == (m, n)
    np.testing.assert_allclose(y, reference(x, w, transposed_w), rtol=2e-5, atol=2e-5 * np.sqrt(k))


def kernel_calls(fn, *args) -> int:
    """Kernel calls in the lowering of fn."""
    return jax.jit(fn).lower(*args).as_text().count(few_rows.TARGET)


def test_dot_general_routes_only_what_the_kernel_computes():
    x = jnp.ones((4, 1, 32), jnp.float32)
    w_dhe = jnp.ones((32, 2, 8), jnp.float32)
    projection = (((2,), (0,)), ((), ()))  # DenseGeneral's q/k/v projection: [b, t, d] x [d, h, e]

    def project(x, w):
        return few_rows.dot_general(x, w, projection)

    assert kernel_calls(project, x, w_dhe) == 1
    np.testing.assert_allclose(jax.jit(project)(x, w_dhe), jax.lax.dot_general(x, w_dhe, projection), rtol=1e-6)
    out_proj = (((2, 3), (0, 1)), ((), ()))  # o_proj: [b, t, h, e] x [h, e, d]
    assert kernel_calls(lambda a, b: few_rows.dot_general(a, b, out_proj), jnp.ones((4, 1, 2, 8)),
                        jnp.ones((2, 8, 32))) == 1
    head = (((2,), (1,)), ((), ()))  # tied head: [b, t, d] x [v, d]
    assert kernel_calls(lambda a, b: few_rows.dot_general(a, b, head), x, jnp.ones((50, 32))) == 1
    # not for: bfloat16, more rows than MAX_ROWS, batch dimensions, contraction of a middle dimension
    assert kernel_calls(project, x.astype(jnp.bfloat16), w_dhe.astype(jnp.bfloat16)) == 0
    assert kernel_calls(project, jnp.ones((4, few_rows.MAX_ROWS, 32)), w_dhe) == 0
    batched = (((2,), (1,)), ((0,), (0,)))
    assert kernel_calls(lambda a, b: few_rows.dot_general(a, b, batched), x, jnp.ones((4, 32, 5))) == 0
    middle = (((2,), (1,)), ((), ()))
    assert kernel_calls(lambda a, b: few_rows.dot_general(a, b, middle), x, jnp.ones((3, 32, 5))) == 0


def test_the_model_alone_never_calls_the_kernels():
    """The seam: without the CPU decode step scope, a decode step of the model lowers to XLA's dots only."""
    model = Transformer(CONFIG)
    params = init_params(CONFIG, jax.random.key(0))
    cache = kv_cache.init_cache(model, 2, 16)
    ids = jnp.ones((2, 1), jnp.int32)
    text = jax.jit(lambda p, c: model.apply({"params": p, "cache": c}, ids, decode="step", mutable=["cache"])).lower(
        params, cache).as_text()
    assert few_rows.TARGET not in text and packed.TARGET not in text


CONFIG = ModelConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                     intermediate_size=128, tie_embeddings=True, scan_layers=False, max_position_embeddings=128)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_decoder_steps_use_the_kernel_and_decode_the_same_tokens(tie_embeddings):
    config = CONFIG.replace(tie_embeddings=tie_embeddings)
    model = Transformer(config)
    params = jax.tree.map(lambda p: p * 4.0 if p.ndim >= 2 else p, init_params(config, jax.random.key(3)))
    batch, prompt = 3, 16
    ids = np.asarray(jax.random.randint(jax.random.key(4), (batch, prompt), 0, config.vocab_size), np.int32)
    args = (params, ids, np.full((batch,), prompt, np.int32), np.ones((batch,), bool),
            np.arange(batch, dtype=np.int32), np.int32(24), np.uint32(0), np.float32(0.0), np.int32(0),
            np.float32(1.0))
    with_kernel = kv_cache.make_decoder(model, 48, (config.vocab_size,), step_scope=packed_weights.use)
    without = kv_cache.make_decoder(model, 48, (config.vocab_size,))
    # every projection of every layer and the head, once per decode step (the while body is traced once)
    assert with_kernel.lower(*args).as_text().count(few_rows.TARGET) == 7 * config.num_layers + 1
    assert without.lower(*args).as_text().count(few_rows.TARGET) == 0
    np.testing.assert_array_equal(np.asarray(with_kernel(*args)[0]), np.asarray(without(*args)[0]))


def test_concurrent_calls_from_several_threads_are_correct():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 256)).astype(np.float32)
    weights = [rng.standard_normal((256, 512)).astype(np.float32) for _ in range(4)]
    matmul = jax.jit(few_rows.matmul)
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(20):
                results[i] = np.asarray(matmul(x, weights[i]))
        except Exception as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, w in enumerate(weights):
        np.testing.assert_allclose(results[i], reference(x, w, False), rtol=2e-5, atol=1e-3)


def test_a_failed_build_warns_once_and_falls_back_to_xla(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    few_rows.available.cache_clear()
    try:
        with pytest.warns(UserWarning, match="few-row matmul kernel unavailable.*compiling few_rows_matmul.cc"):
            assert not few_rows.available()
        x, w = jnp.ones((2, 8)), jnp.ones((8, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning
            dims = (((1,), (0,)), ((), ()))
            assert kernel_calls(lambda a, b: few_rows.dot_general(a, b, dims), x, w) == 0
        with pytest.raises(RuntimeError, match="could not be built"):
            few_rows.matmul(x, w)
    finally:
        few_rows.available.cache_clear()
    monkeypatch.undo()
    assert few_rows.available()


def test_build_writes_a_library_that_loads(tmp_path):
    path = few_rows.build(tmp_path / "kernel.so")
    assert path.is_file() and not list(tmp_path.glob("tmp*"))  # the private build directory is gone
