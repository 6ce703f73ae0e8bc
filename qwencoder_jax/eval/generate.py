"""The generation harness: text in, completions out, on the KV-cache decoder (qwencoder_jax.model.kv_cache).

    generator = Generator.from_checkpoint("runs/demo/stage3/checkpoints")
    generator.generate(["def add(a, b):"], SamplingConfig(max_new_tokens=64, stop=("\\ndef",)))
    generator.infill(["def add(a, b):\\n"], ["\\n    return c\\n"], SamplingConfig(max_new_tokens=32))

Requests are sorted by prompt length and run in batches of at most `max_batch_size` rows (left-padded, see
kv_cache), so rows of a batch have similar lengths; results come back in request order. A completion ends at the
first end token (not included), after `max_new_tokens`, or before the first stop string (stop strings are
applied to the decoded text on the host once the batch is done).

Tokenizers: a checkpoint directory may hold a `tokenizer.json` (the GGUF converter writes the one stored in the
GGUF file, e.g. SmolLM2's); otherwise a model with the Qwen2.5 vocabulary size gets the Qwen2.5 tokenizer.

CPU decoding: unsharded on CPU, decode steps run their projections on the CPU kernels (qwencoder_jax.cpu_decode):
the few-row matmul, and a GGUF conversion's packed Q4_0/Q4_1/Q8_0/Q5_0/Q4_K/Q6_K weights (same values, a third to
an eighth of the bytes per token), by default only where the packed kernel is vectorised (AVX-512; slower than
float32 elsewhere). `packed_weights=False` (CLI: --float_weights) decodes from the float params, True forces packed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from qwencoder_jax import assets, checkpoints, sharding
from qwencoder_jax.eval import chat
from qwencoder_jax.model import kv_cache
from qwencoder_jax.model.config import QWEN_VOCAB_SIZE, ModelConfig
from qwencoder_jax.model.transformer import Transformer

TOKENIZER_FILE = "tokenizer.json"
# Tokens that end a completion, by text, in the vocabularies we meet (Qwen2.5 and SmolLM2 share these two).
END_TOKENS = ("<|endoftext|>", "<|im_end|>")
# (prefix, suffix, middle) FIM tokens: Qwen2.5's, then StarCoder's spelling.
FIM_TOKEN_SETS = (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<fim_prefix>", "<fim_suffix>",
                                                                           "<fim_middle>"))


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple[str, ...] = ()  # completion is cut before the first stop string
    seed: int = 0
    end_ids: tuple[int, ...] = ()  # token ids that end a completion besides the tokenizer's end tokens (excluded)

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if isinstance(self.stop, str):
            raise ValueError(f"SamplingConfig.stop must be a tuple of strings, got the string {self.stop!r}; "
                             f"write stop=({self.stop!r},)")
        if any(not s for s in self.stop):
            raise ValueError("SamplingConfig.stop holds an empty string, which would cut every completion to ''")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"SamplingConfig.seed must be in [0, 2**32), got {self.seed}")


class Tokenizer:
    """A `tokenizers` tokenizer with the ids generation needs: end tokens and (when the vocabulary has them) FIM.

    encode() recognises special tokens written in the text (so chat and FIM markup in a prompt become their
    ids) and adds no BOS; decode() keeps special tokens, so nothing generated is dropped from the text.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, source: str = "tokenizer"):
        self.tokenizer = tokenizer
        self.source = source
        self.eos_ids = tuple(i for i in (tokenizer.token_to_id(t) for t in END_TOKENS) if i is not None)
        if not self.eos_ids:
            raise ValueError(f"{source}: none of the end tokens {END_TOKENS} is in the vocabulary; generation "
                             "could never stop early")
        self.fim_ids: tuple[int, int, int] | None = None
        for names in FIM_TOKEN_SETS:
            ids = tuple(tokenizer.token_to_id(t) for t in names)
            if all(i is not None for i in ids):
                self.fim_ids = ids
                break

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        return cls(tokenizers.Tokenizer.from_file(str(path)), str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def tokenizer_for_checkpoint(path: str | os.PathLike, config: ModelConfig) -> Tokenizer:
    """The checkpoint's own tokenizer.json, else the Qwen2.5 tokenizer for a Qwen-vocabulary model."""
    directory = checkpoints.resolve_checkpoint_dir(path)
    for candidate in (directory / TOKENIZER_FILE, Path(path).absolute() / TOKENIZER_FILE):
        if candidate.is_file():
            return Tokenizer.from_file(candidate)
    if config.vocab_size == QWEN_VOCAB_SIZE:
        return Tokenizer.from_file(assets.qwen_tokenizer_json())
    raise FileNotFoundError(f"checkpoint {directory} has no {TOKENIZER_FILE} and its vocabulary ({config.vocab_size}) "
                            f"is not Qwen2.5's ({QWEN_VOCAB_SIZE}); pass tokenizer=/path/to/tokenizer.json")


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def _cpu_decoding(mesh) -> bool:
    """Unsharded decoding on CPU takes the CPU kernels (they have no sharding rule and no TPU/GPU lowering)."""
    return mesh is None and jax.default_backend() == "cpu"


def _cpu_decode():
    # imported here: the CPU decode stack (C++ kernels, packed weights) stays out of TPU/GPU processes
    from qwencoder_jax.cpu_decode import packed_weights

    return packed_weights


def _load_packed(path, packed_weights: bool | None) -> dict[str, Any] | None:
    """The checkpoint's packed weights if decoding should use them: True always, None where the kernel is fast."""
    cpu_decode = _cpu_decode()
    if packed_weights is False or not cpu_decode.present(path):
        return None
    if packed_weights is None and not cpu_decode.few_rows.packed_kernel_is_fast():  # decided before reading them
        print("[generate] decoding from the float32 params, not the packed weights: the packed kernel is not "
              "vectorised on this CPU (no AVX-512) and would be slower; packed_weights=True forces it",
              file=sys.stderr, flush=True)
        return None
    return cpu_decode.load(path)


class Generator:
    def __init__(self, model: Transformer, params: Any, tokenizer: Any, *, mesh=None, max_batch_size: int = 8,
                 packed: dict[str, Any] | None = None, chat_template: str | None = None):
        """packed: block-quantised weights by Hugging Face name (a GGUF conversion's, `packed_weights.load`):
        decode steps multiply by them instead of the float params, reading 4.5-10 bits per weight instead of 32
        (same values, qwencoder_jax.cpu_decode.packed). Unsharded CPU decoding only: elsewhere they are not used.
        chat_template: the checkpoint's Jinja chat template (qwencoder_jax.eval.chat), for instruct prompts."""
        self.chat_template = chat_template
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        config = model.config
        if config.scan_layers:
            # Decoding runs one module per layer: under nn.scan every step copies each layer's cache slice in and
            # out of the stacked cache (slower: `--layouts scan` of benchmarks/decode_throughput.py).
            config = config.replace(scan_layers=False)
            model, params = Transformer(config), checkpoints.unstack_layers(params, config.num_layers)
        self.model, self.tokenizer, self.mesh, self.max_batch_size = model, tokenizer, mesh, max_batch_size
        self.eos_ids = tuple(getattr(tokenizer, "eos_ids", None) or (tokenizer.eos_token_id,))
        self.max_positions = config.max_position_embeddings
        if config.yarn is not None:  # YaRN stretches the trained window by its factor
            self.max_positions = max(self.max_positions,
                                     int(config.yarn.factor * config.yarn.original_max_position_embeddings))
        self._batch_parts = 1
        if mesh is not None:
            boxed = sharding.abstract_boxed_params(model, jnp.zeros((1, 8), jnp.int32))
            params = jax.device_put(params, sharding.shard_params(boxed, mesh))
            self._batch_parts = math.prod(mesh.shape[axis] for axis in sharding.BATCH_AXES)
        self.params = params
        self.packed, self.cpu_decode = None, None  # cpu_decode: the module whose `use` the decode steps enter
        if _cpu_decoding(mesh):
            self.cpu_decode = _cpu_decode()
            if packed:
                self.cpu_decode.check(model.config, packed)
                self.packed = jax.tree.map(jnp.asarray, packed)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, tokenizer: Any = None, mesh=None, max_batch_size: int = 8,
                        packed_weights: bool | None = None, **model_overrides: Any) -> "Generator":
        """A generator on a converted or training checkpoint; `tokenizer` is a tokenizer object or a path to a
        tokenizer.json (default: see `tokenizer_for_checkpoint`); overrides are execution options.
        packed_weights: decode from the checkpoint's packed weights (GGUF conversions): True when it has them, None
        (default) when it has them and the packed kernel is vectorised on this CPU, False never."""
        model, params = checkpoints.load(path, **{"scan_layers": False, **model_overrides})
        if tokenizer is None:
            tokenizer = tokenizer_for_checkpoint(path, model.config)
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = Tokenizer.from_file(tokenizer)
        packed = _load_packed(path, packed_weights) if _cpu_decoding(mesh) else None
        return cls(model, params, tokenizer, mesh=mesh, max_batch_size=max_batch_size, packed=packed,
                   chat_template=chat.load_template(path))

    # --- ids ---------------------------------------------------------------------------------------------

    def _check_prompts(self, prompts_ids: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        vocab = self.model.config.vocab_size
        checked = []
        for n, ids in enumerate(prompts_ids):
            ids = [int(i) for i in ids]
            if not ids:
                raise ValueError(f"prompt {n} is empty; generation needs at least one prompt token")
            if min(ids) < 0 or max(ids) >= vocab:
                raise ValueError(f"prompt {n} holds token id {min(ids) if min(ids) < 0 else max(ids)}, outside the "
                                 f"model's vocabulary 0..{vocab - 1}; was it encoded with another tokenizer?")
            if len(ids) + max_new_tokens > self.max_positions:
                raise ValueError(f"prompt {n} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} it needs "
                                 f"{len(ids) + max_new_tokens} positions but the model has {self.max_positions}; "
                                 "shorten the prompt or lower max_new_tokens")
            checked.append(ids)
        return checked

    def _batch_rows(self, n: int) -> int:
        rows = 1 << (n - 1).bit_length()  # powers of two: few distinct batch shapes, few compilations
        return -(-rows // self._batch_parts) * self._batch_parts

    def _run_batch(self, prompts: list[list[int]], sample_ids: list[int], sampling: SamplingConfig) -> list[list[int]]:
        longest = max(len(p) for p in prompts)
        prompt_slots = kv_cache.bucket_length(longest)
        cache_length = kv_cache.bucket_length(prompt_slots + sampling.max_new_tokens)
        rows = self._batch_rows(len(prompts))
        ids_bp = np.zeros((rows, prompt_slots), np.int32)
        lengths_b = np.ones((rows,), np.int32)
        active_b = np.zeros((rows,), bool)
        sample_ids_b = np.zeros((rows,), np.int32)
        for r, (ids, sample_id) in enumerate(zip(prompts, sample_ids)):
            ids_bp[r, prompt_slots - len(ids):] = ids
            lengths_b[r], active_b[r], sample_ids_b[r] = len(ids), True, sample_id
        inputs = (ids_bp, lengths_b, active_b, sample_ids_b)
        step_scope = self.cpu_decode.use if self.cpu_decode else None
        end_ids = self.eos_ids + tuple(int(i) for i in sampling.end_ids if int(i) not in self.eos_ids)
        decode = kv_cache.make_decoder(self.model, cache_length, end_ids, step_scope=step_scope)
        options = (np.int32(sampling.max_new_tokens), np.uint32(sampling.seed), np.float32(sampling.temperature),
                   np.int32(sampling.top_k), np.float32(sampling.top_p))
        if self.mesh is None:
            tokens_bn, _ = decode(self.params, *inputs, *options, packed=self.packed)
        else:
            with sharding.activate(self.mesh):
                placed = [jax.device_put(x, sharding.data_sharding(self.mesh, x.ndim)) for x in inputs]
                tokens_bn, _ = decode(self.params, *placed, *options)
        tokens_bn = np.asarray(tokens_bn)
        results = []
        for r in range(len(prompts)):
            row = tokens_bn[r, :sampling.max_new_tokens].tolist()
            end = next((i for i, t in enumerate(row) if t == kv_cache.FINISHED or t in end_ids), len(row))
            results.append(row[:end])
        return results

    def generate_ids(self, prompts_ids: Sequence[Sequence[int]], sampling: SamplingConfig) -> list[list[int]]:
        """New token ids per prompt (end token excluded); stop strings are not applied to ids."""
        prompts = self._check_prompts(prompts_ids, sampling.max_new_tokens)
        if sampling.max_new_tokens == 0:
            return [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda n: -len(prompts[n]))
        results: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start:start + self.max_batch_size]
            for n, ids in zip(chunk, self._run_batch([prompts[n] for n in chunk], chunk, sampling)):
                results[n] = ids
        return results

    # --- text --------------------------------------------------------------------------------------------

    def _complete(self, prompts_ids: list[list[int]], sampling: SamplingConfig) -> list[str]:
        return [cut_at_stop(self.tokenizer.decode(ids), sampling.stop)
                for ids in self.generate_ids(prompts_ids, sampling)]

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[str]:
        """The completion of each prompt (without the prompt)."""
        if isinstance(prompts, str):
            raise ValueError("Generator.generate takes a sequence of prompts, got one string; wrap it in a list")
        return self._complete([self.tokenizer.encode(p) for p in prompts], sampling)

    def fim_prompt_ids(self, prefix: str, suffix: str) -> list[int]:
        """PSM fill-in-the-middle: <fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle> (the tokenizer's spelling)."""
        fim_ids = getattr(self.tokenizer, "fim_ids", None)
        if fim_ids is None:
            raise ValueError(f"the tokenizer ({getattr(self.tokenizer, 'source', type(self.tokenizer).__name__)}) has "
                             f"no fill-in-the-middle tokens ({' / '.join(FIM_TOKEN_SETS[0])} or the StarCoder "
                             "spelling), so this model cannot infill; use a Qwen2.5-vocabulary model")
        prefix_id, suffix_id, middle_id = fim_ids
        return [prefix_id, *self.tokenizer.encode(prefix), suffix_id, *self.tokenizer.encode(suffix), middle_id]

    def infill(self, prefixes: Sequence[str], suffixes: Sequence[str], sampling: SamplingConfig) -> list[str]:
        """The middle that goes between each prefix and suffix."""
        if len(prefixes) != len(suffixes):
            raise ValueError(f"infill got {len(prefixes)} prefixes but {len(suffixes)} suffixes; pass one of each "
                             "per request")
        return self._complete([self.fim_prompt_ids(p, s) for p, s in zip(prefixes, suffixes)], sampling)
