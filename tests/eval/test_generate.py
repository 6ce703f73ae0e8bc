"""KV-cache generation: cached greedy decoding equals argmax over full forward passes (tied/untied, GQA, YaRN,
scanned/unrolled layers), batches of different prompt lengths equal one-by-one, sampling stays inside its top-k /
top-p support and is reproducible by seed, sharded == unsharded on 8 fake devices, stop strings cut, infilling
returns the middle, and the CLI works and refuses bad input. Real SmolLM2-135M weights are converted once."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tokenizers

from qwencoder_jax import assets, checkpoints, sharding
from qwencoder_apps import generate as cli
from qwencoder_jax.data.fim import PSM, FimPieces, fim_text
from qwencoder_jax.eval.generate import Generator, SamplingConfig, Tokenizer, cut_at_stop
from qwencoder_jax.eval.reference_decode import greedy_by_full_forward
from qwencoder_jax.model import ModelConfig, Transformer, YarnScaling, init_params
from qwencoder_jax.model import kv_cache

VOCAB = 256
EOS = VOCAB - 1
BASE = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                   intermediate_size=64, tie_embeddings=True, rope_theta=10_000.0, max_position_embeddings=256)
CONFIGS = {
    "tied_gqa": BASE,
    "untied_mha_unrolled_remat": BASE.replace(tie_embeddings=False, num_kv_heads=4, scan_layers=False,
                                              remat_policy="full"),
    "yarn": BASE.replace(num_kv_heads=1, yarn=YarnScaling(factor=4.0, original_max_position_embeddings=16)),
}
# Prompts of several lengths; each is decoded to a fixed total so the reference compiles once per model.
PROMPTS = [[7, 3, 99], list(range(20, 31)), [int(i) for i in np.random.default_rng(0).integers(0, EOS, 30)]]
TOTAL = 40
GREEDY = SamplingConfig(max_new_tokens=TOTAL - 3)  # one setting shared by the tests, so compilations are reused


def word_tokenizer() -> Tokenizer:
    """A real `tokenizers` word-level tokenizer over the test vocabulary; id 255 is <|endoftext|>."""
    vocab = {f"w{i}": i for i in range(EOS)} | {"<|endoftext|>": EOS}
    model = tokenizers.models.WordLevel(vocab, unk_token="w0")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    return Tokenizer(tokenizer, "word-level test tokenizer")


@functools.lru_cache(maxsize=None)
def model_and_params(name: str):
    config = CONFIGS[name]
    params = init_params(config, jax.random.key(1))
    # sharpen the random model's logits, so greedy choices are far from ties
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)
    return Transformer(config), params


def reference_until_eos(model, params, prompt):
    tokens = greedy_by_full_forward(model, params, prompt, TOTAL - len(prompt))
    return tokens[:tokens.index(EOS)] if EOS in tokens else tokens


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_greedy_equals_full_forward_argmax(name):
    model, params = model_and_params(name)
    generator = Generator(model, params, word_tokenizer())
    produced = generator.generate_ids(PROMPTS, GREEDY)
    for prompt, ours in zip(PROMPTS, produced):
        reference = reference_until_eos(model, params, prompt)
        n = TOTAL - len(prompt)
        assert ours[:n] == reference[:n]
        assert len(ours) >= min(n, len(reference))
    if name == "yarn":
        assert len(produced[2]) > 0 and len(PROMPTS[2]) > 16  # decoded past YaRN's original window


def test_decoder_on_scanned_layers_equals_the_generator():
    """The generator decodes with one module per layer; the cache also works under nn.scan (stacked per layer)."""
    model, params = model_and_params("tied_gqa")
    assert model.config.scan_layers
    prompt = PROMPTS[1]
    decode = kv_cache.make_decoder(model, 64, (EOS,))
    ids_bp = np.zeros((1, 16), np.int32)
    ids_bp[0, 16 - len(prompt):] = prompt
    tokens_bn, _ = decode(params, ids_bp, np.asarray([len(prompt)], np.int32), np.ones((1,), bool),
                          np.zeros((1,), np.int32), np.int32(20), np.uint32(0), np.float32(0.0), np.int32(0),
                          np.float32(1.0))
    expected = Generator(model, params, word_tokenizer()).generate_ids([prompt], dataclasses.replace(GREEDY,
                                                                                                    max_new_tokens=20))
    row = np.asarray(tokens_bn)[0, :20].tolist()
    assert row[:len(expected[0])] == expected[0]


def test_batch_of_different_lengths_equals_one_by_one():
    model, params = model_and_params("tied_gqa")
    generator = Generator(model, params, word_tokenizer(), max_batch_size=2)  # a batch of 2 prompts, then 1
    together = generator.generate_ids(PROMPTS, GREEDY)
    assert together == [generator.generate_ids([p], GREEDY)[0] for p in PROMPTS]
    assert any(len(t) > 10 for t in together)


def test_top_p_and_top_k_filters_keep_exactly_their_sets():
    probs = jnp.asarray([[0.5, 0.3, 0.15, 0.05]])
    logits = jnp.log(probs)

    def kept(**options):
        options = {"top_k": 0, "top_p": 1.0} | options
        filtered = kv_cache.filter_logits(logits, 1.0, options["top_k"], options["top_p"])
        return np.flatnonzero(np.isfinite(np.asarray(filtered[0]))).tolist()

    assert kept(top_p=0.8) == [0, 1]  # 0.5 + 0.3 reaches 0.8
    assert kept(top_p=0.81) == [0, 1, 2]
    assert kept(top_p=0.1) == [0]  # the most likely token is always kept
    assert kept(top_k=3) == [0, 1, 2]
    assert kept(top_k=3, top_p=0.6) == [0, 1]


def test_sampling_stays_in_its_support_and_is_reproducible_by_seed():
    config = BASE
    model = Transformer(config)
    params = init_params(config, jax.random.key(2))  # unsharpened: a broad next-token distribution
    generator = Generator(model, params, word_tokenizer(), max_batch_size=16)
    prompt = PROMPTS[1]
    logits_v = np.asarray(model.apply({"params": params}, jnp.asarray([prompt]))[0, -1], np.float64)
    order = np.argsort(-logits_v)
    probs = np.exp(logits_v[order] - logits_v.max())
    probs /= probs.sum()
    top_p = 0.3
    nucleus = set(order[:int(np.searchsorted(np.cumsum(probs), top_p)) + 1].tolist())
    assert 1 < len(nucleus) < VOCAB - 1
    batch = [prompt] * 16  # 16 rows: 16 independent draws of the first token

    def first_tokens(**options):
        sampling = SamplingConfig(max_new_tokens=1, temperature=1.0, **options)
        return [ids[0] if ids else EOS for ids in generator.generate_ids(batch, sampling)]

    drawn = first_tokens(top_p=top_p, seed=3)
    assert set(drawn) <= nucleus and len(set(drawn)) > 1
    top5 = set(order[:5].tolist())
    drawn_k = first_tokens(top_k=5, seed=3)
    assert set(drawn_k) <= top5 and len(set(drawn_k)) > 1
    assert first_tokens(top_k=5, seed=3) == drawn_k
    assert first_tokens(top_k=5, seed=4) != drawn_k
    greedy = generator.generate_ids(PROMPTS, GREEDY)
    top_1 = dataclasses.replace(GREEDY, temperature=0.7, top_k=1, seed=9)
    assert generator.generate_ids(PROMPTS, top_1) == greedy


def test_sharded_generation_equals_unsharded():
    model, params = model_and_params("tied_gqa")  # 4 query / 2 key-value heads: both divide tensor=2
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    sampling = GREEDY
    unsharded = Generator(model, params, word_tokenizer()).generate_ids(PROMPTS, sampling)
    sharded_generator = Generator(model, params, word_tokenizer(), mesh=mesh)
    assert sharded_generator.generate_ids(PROMPTS, sampling) == unsharded
    embedding = sharded_generator.params["embed"]["embedding"]
    assert len({shard.device for shard in embedding.addressable_shards}) == 8
    assert embedding.addressable_shards[0].data.shape != embedding.shape  # really split, not replicated


def test_bad_requests_name_the_problem():
    model, params = model_and_params("tied_gqa")
    generator = Generator(model, params, word_tokenizer())
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generator.generate_ids([[1], []], SamplingConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="prompt 0 has 250 tokens.*needs 260 positions.*has 256"):
        generator.generate_ids([[1] * 250], SamplingConfig(max_new_tokens=10))
    with pytest.raises(ValueError, match="token id 300, outside the model's vocabulary"):
        generator.generate_ids([[1, 300]], SamplingConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="stop must be a tuple"):
        SamplingConfig(stop="\n")
    with pytest.raises(ValueError, match="no fill-in-the-middle tokens"):
        generator.infill(["w1"], ["w2"], SamplingConfig())


def test_cut_at_stop_takes_the_earliest_stop_string():
    assert cut_at_stop("a = 1\nprint(a)\n\ndef g():", ("\ndef", "\nprint")) == "a = 1"
    assert cut_at_stop("abc", ("x",)) == "abc"


# --- real weights ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M converted once (with the tokenizer.json the converter stores beside it)."""
    from qwencoder_jax.convert.gguf import gguf_to_orbax

    directory = gguf_to_orbax(assets.smollm2_gguf(), tmp_path_factory.mktemp("smollm2") / "ckpt")
    return directory, Generator.from_checkpoint(directory, packed_weights=True)


@pytest.mark.slow  # converts the real weights (10-20 s) and compiles a 30-layer decoder
def test_smollm2_generation_matches_full_forward_and_stop_strings_cut(smollm2):
    directory, generator = smollm2
    assert (directory / "tokenizer.json").is_file()
    # decode steps multiply by the GGUF's own Q4_1 / Q8_0 blocks; the reference below uses the float32 params
    assert generator.packed is not None and len(generator.packed) == 30 * 7 + 1
    prompt = "def fibonacci(n):"
    prompt_ids = generator.tokenizer.encode(prompt)
    full = generator.generate([prompt], SamplingConfig(max_new_tokens=24))[0]
    reference = greedy_by_full_forward(generator.model, generator.params, prompt_ids, 24)
    assert full == generator.tokenizer.decode(reference)
    assert "return" in full and "\n" in full.strip("\n")
    stops = ("\n\n", "\n    return")  # the function body's first line at indent 4 that returns, or a blank line
    assert any(stop in full for stop in stops)
    expected = full[:min(full.index(stop) for stop in stops if stop in full)]
    cut = generator.generate([prompt], SamplingConfig(max_new_tokens=24, stop=stops))[0]
    assert cut == expected and 0 < len(cut) < len(full)
    # SmolLM2's vocabulary has no FIM tokens (it has <repo_name> and <file_sep> but no <fim_*>)
    assert generator.tokenizer.fim_ids is None
    with pytest.raises(ValueError, match="no fill-in-the-middle tokens"):
        generator.infill(["def f(x):\n"], ["\n    return y\n"], SamplingConfig())


# --- infilling on a Qwen-vocabulary model ------------------------------------------------------------------

FIM_CASE = FimPieces(PSM, prefix="def add(a, b):\n", middle="    c = a + b", suffix="\n    return c\n")


@pytest.fixture(scope="module")
def qwen_fim_checkpoint(tmp_path_factory):
    """A tiny Qwen-vocabulary model trained to memorise one PSM sample written by the data pipeline's fim_text."""
    tokenizer = Tokenizer.from_file(assets.qwen_tokenizer_json())
    ids = tokenizer.encode(fim_text(FIM_CASE))
    config = ModelConfig(vocab_size=151_936, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                         head_dim=16, intermediate_size=64, tie_embeddings=True, rope_theta=10_000.0,
                         max_position_embeddings=512)
    model = Transformer(config)
    params = init_params(config, jax.random.key(0))
    optimizer = optax.adam(2e-2)
    inputs, targets = jnp.asarray([ids[:-1]]), jnp.asarray([ids[1:]])
    # the loss covers what follows <|fim_middle|>: the middle and its <|endoftext|>
    weights = (jnp.arange(len(ids) - 1) >= ids.index(151660)).astype(jnp.float32)[None]

    @jax.jit
    def train_step(params, state):
        def loss_fn(p):
            logits = model.apply({"params": p}, inputs)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
            return (losses * weights).sum() / weights.sum()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = optimizer.init(params)
    for _ in range(50):
        params, state, loss = train_step(params, state)
    assert float(loss) < 0.1
    directory = checkpoints.save_model(tmp_path_factory.mktemp("qwen_fim") / "ckpt", config, params)
    return directory, tokenizer, ids


def test_infill_returns_the_middle_on_a_qwen_vocabulary_model(qwen_fim_checkpoint):
    directory, tokenizer, ids = qwen_fim_checkpoint
    generator = Generator.from_checkpoint(directory)  # no tokenizer.json: the Qwen2.5 tokenizer by vocabulary
    assert generator.tokenizer.fim_ids == (151659, 151661, 151660)
    prompt_ids = generator.fim_prompt_ids(FIM_CASE.prefix, FIM_CASE.suffix)
    assert ids[:len(prompt_ids)] == prompt_ids  # the same PSM layout the training data uses
    middle = generator.infill([FIM_CASE.prefix], [FIM_CASE.suffix], SamplingConfig(max_new_tokens=16))
    assert middle == [FIM_CASE.middle]  # stopped at <|endoftext|>, which is not part of the middle


def test_cli_infills_and_refuses_bad_input(qwen_fim_checkpoint, capsys, tmp_path):
    directory, _, _ = qwen_fim_checkpoint
    completions = cli.main(["--checkpoint", str(directory), "--prefix", "def add(a, b):\\n",
                            "--suffix", "\\n    return c\\n", "--max_new_tokens", "16"])
    assert completions == [FIM_CASE.middle]
    assert FIM_CASE.middle in capsys.readouterr().out
    completions = cli.main(["--checkpoint", str(directory), "--prompt", "def", "--max_new_tokens", "4",
                            "--temperature", "1.0", "--num_samples", "3", "--seed", "5"])
    assert len(completions) == 3 and "--- sample 2 ---" in capsys.readouterr().out
    for argv, message in [
            (["--checkpoint", str(tmp_path / "missing"), "--prompt", "x"], "no checkpoint directory"),
            (["--checkpoint", str(directory), "--prompt", ""], "--prompt is empty"),
            (["--checkpoint", str(directory), "--prompt", "x", "--max_new_tokens", "600"], "needs 601 positions"),
            (["--checkpoint", str(directory), "--prompt", "x", "--prefix", "y"], "not both")]:
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert message in capsys.readouterr().err
