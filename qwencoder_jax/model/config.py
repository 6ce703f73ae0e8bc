"""Model configuration: one frozen dataclass, and the presets as values of it.

The published Qwen2.5-Coder sizes use the numbers of their config.json files; the small presets exist for
tests and CPU runs. `ModelConfig.to_dict` / `from_dict` is the form that travels with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

ATTENTION_BACKENDS = ("xla", "splash", "cudnn")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
DTYPES = ("float32", "bfloat16", "float16")
# How queries are laid out over the sequence shards under context parallelism: "zigzag" (balanced causal work,
# two ppermutes of q in and of the output back per layer) or "contiguous" (no exchange, unbalanced).
CONTEXT_PARALLEL_LAYOUTS = ("zigzag", "contiguous")

QWEN_VOCAB_SIZE = 151_936  # padded embedding size of the published checkpoints


@dataclasses.dataclass(frozen=True)
class YarnScaling:
    """YaRN RoPE scaling, as transformers implements `rope_scaling={"type": "yarn", ...}`."""

    factor: float = 4.0
    original_max_position_embeddings: int = 32_768
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    # None: derived from `factor` as 0.1 * ln(factor) + 1 (about 1.1386 for factor 4).
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self):
        if self.factor <= 0:
            raise ValueError(f"YarnScaling.factor must be positive, got {self.factor}")
        if self.original_max_position_embeddings <= 0:
            raise ValueError("YarnScaling.original_max_position_embeddings must be positive, got "
                             f"{self.original_max_position_embeddings}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Qwen2-family decoder. Field names follow the model, not any one file format."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_embeddings: bool
    rope_theta: float = 1_000_000.0
    yarn: YarnScaling | None = None
    rms_norm_eps: float = 1e-6
    attention_bias: bool = True  # q/k/v projections carry a bias in Qwen2; Llama-family checkpoints do not
    max_position_embeddings: int = 32_768
    # Execution choices: they change how the model runs, never what it computes.
    attention_backend: str = "xla"
    scan_layers: bool = True
    remat_policy: str = "none"
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    splash_block_size: int = 512  # query/key block of the splash kernel (clipped to the sequence length)
    context_parallel_layout: str = "zigzag"  # splash with the sequence sharded: CONTEXT_PARALLEL_LAYOUTS

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads}) for grouped-query attention")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention_backend {self.attention_backend!r}; "
                             f"choose one of {ATTENTION_BACKENDS}")
        if self.context_parallel_layout not in CONTEXT_PARALLEL_LAYOUTS:
            raise ValueError(f"unknown context_parallel_layout {self.context_parallel_layout!r}; "
                             f"choose one of {CONTEXT_PARALLEL_LAYOUTS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"unknown remat_policy {self.remat_policy!r}; choose one of {REMAT_POLICIES}")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} is not one of {DTYPES}")
        if isinstance(self.yarn, Mapping):  # from_dict / gin may hand a plain mapping
            object.__setattr__(self, "yarn", YarnScaling(**self.yarn))

    @property
    def num_query_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of the model this config builds."""
        d, f = self.hidden_size, self.intermediate_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attention = d * q + 2 * d * kv + q * d + (q + 2 * kv if self.attention_bias else 0)
        per_layer = attention + 3 * d * f + 2 * d
        total = self.num_layers * per_layer + d  # + final norm
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        elif not self.tie_embeddings:
            total += self.vocab_size * d  # the output head is a matmul like any other
        return total

    def flops_per_token(self, sequence_length: int, training: bool = True) -> float:
        """Model FLOPs per token (the MFU numerator): 2 per multiply-add, backward = 2x forward.

        Counts every matmul: the layers' projections, the output head (tied or not: it is a matmul either way)
        and the attention scores and values under the causal mask (on average T/2 keys per query).
        Excludes the embedding lookup, norms, rotary and elementwise work, and any rematerialised recompute.
        """
        d, f, e = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * e, self.num_kv_heads * e
        layer_matmul_params = d * q + 2 * d * kv + q * d + 3 * d * f
        dense = 2 * (self.num_layers * layer_matmul_params + self.vocab_size * d)
        attention = self.num_layers * 2 * 2 * q * sequence_length / 2
        return (dense + attention) * (3 if training else 1)


def _qwen(hidden, layers, heads, kv_heads, intermediate, tied) -> ModelConfig:
    # Published config.json files carry no head_dim: it is hidden / heads, 128 for every size but 0.5B (64).
    return ModelConfig(vocab_size=QWEN_VOCAB_SIZE, hidden_size=hidden, num_layers=layers, num_heads=heads,
                       num_kv_heads=kv_heads, head_dim=hidden // heads, intermediate_size=intermediate,
                       tie_embeddings=tied, rope_theta=1_000_000.0, max_position_embeddings=32_768)


PRESETS: dict[str, ModelConfig] = {
    "qwen2.5-coder-0.5b": _qwen(896, 24, 14, 2, 4864, True),
    "qwen2.5-coder-1.5b": _qwen(1536, 28, 12, 2, 8960, True),
    "qwen2.5-coder-3b": _qwen(2048, 36, 16, 2, 11008, True),
    "qwen2.5-coder-7b": _qwen(3584, 28, 28, 4, 18944, False),
    "qwen2.5-coder-14b": _qwen(5120, 48, 40, 8, 13824, False),
    "qwen2.5-coder-32b": _qwen(5120, 64, 40, 8, 27648, False),
    # Small presets: the Qwen2 block at sizes a CPU trains in minutes. `tiny` is for unit tests.
    "tiny": ModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                        intermediate_size=128, tie_embeddings=True, rope_theta=10_000.0,
                        max_position_embeddings=2048),
    "small": ModelConfig(vocab_size=QWEN_VOCAB_SIZE, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                         head_dim=64, intermediate_size=768, tie_embeddings=True, rope_theta=10_000.0,
                         max_position_embeddings=8192),
    # The MaxText reference CPU configuration (training issue): 2 layers, hidden 256, 4/2 heads, MLP 512, 32k vocab.
    "maxtext-reference": ModelConfig(vocab_size=32_000, hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                                     head_dim=64, intermediate_size=512, tie_embeddings=False,
                                     rope_theta=10_000.0, max_position_embeddings=2048,
                                     compute_dtype="bfloat16"),
}

# Aliases users type: "0.5B", "7b", ...
_ALIASES = {name.split("-")[-1]: name for name in PRESETS if name.startswith("qwen2.5-coder-")}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name ("qwen2.5-coder-7b", "7b", "7B", "small", ...), with field overrides."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)} "
                         f"(or the short forms {sorted(_ALIASES)})")
    return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]


def yarn_attention_factor(yarn: YarnScaling) -> float:
    if yarn.attention_factor is not None:
        return yarn.attention_factor
    return 1.0 if yarn.factor <= 1 else 0.1 * math.log(yarn.factor) + 1.0
