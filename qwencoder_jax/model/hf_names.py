"""The one table between Hugging Face tensor names and our parameter tree (converters and CPU decoding use it).

Every source format is brought to Hugging Face's tensor names and layouts first (a GGUF file is renamed and its
Llama Q/K rows un-permuted), so the mapping onto our parameter tree is written once, here:

    HF name                                          HF shape        our path                          our shape
    model.embed_tokens.weight                        [v, d]          embed/embedding                   [v, d]
    model.layers.{i}.input_layernorm.weight          [d]             layers/input_norm/scale           [L, d]
    model.layers.{i}.self_attn.q_proj.weight         [h*e, d]        layers/attention/q_proj/kernel    [L, d, h, e]
    model.layers.{i}.self_attn.q_proj.bias           [h*e]           layers/attention/q_proj/bias      [L, h, e]
    (k_proj, v_proj the same with k heads)
    model.layers.{i}.self_attn.o_proj.weight         [d, h*e]        layers/attention/o_proj/kernel    [L, h, e, d]
    model.layers.{i}.post_attention_layernorm.weight [d]             layers/post_attention_norm/scale  [L, d]
    model.layers.{i}.mlp.{gate,up}_proj.weight       [f, d]          layers/mlp/{gate,up}_proj/kernel  [L, d, f]
    model.layers.{i}.mlp.down_proj.weight            [d, f]          layers/mlp/down_proj/kernel       [L, f, d]
    model.norm.weight                                [d]             final_norm/scale                  [d]
    lm_head.weight                                   [v, d]          lm_head/kernel                    [d, v]  (untied)

The maps are transposes and reshapes only, so values (and dtypes) pass through bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from qwencoder_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class TensorRule:
    hf_name: str  # "{i}" stands for the layer index in per-layer rules
    path: tuple[str, ...]  # inside `layers` for per-layer rules, from the root otherwise
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
    return x


def _transpose(x):
    return x.T


def layer_rules(config: ModelConfig) -> list[TensorRule]:
    d, e, f = config.hidden_size, config.head_dim, config.intermediate_size
    rules = [
        TensorRule("model.layers.{i}.input_layernorm.weight", ("input_norm", "scale"), (d,), _identity, _identity),
        TensorRule("model.layers.{i}.post_attention_layernorm.weight", ("post_attention_norm", "scale"), (d,),
                   _identity, _identity),
    ]
    for name, heads in (("q_proj", config.num_heads), ("k_proj", config.num_kv_heads),
                        ("v_proj", config.num_kv_heads)):
        # HF rows are (head, head_dim) flattened head-major, which is exactly our [heads, e] after a transpose.
        rules.append(TensorRule(f"model.layers.{{i}}.self_attn.{name}.weight", ("attention", name, "kernel"),
                                (heads * e, d), lambda x, h=heads: x.T.reshape(d, h, e),
                                lambda x, h=heads: x.reshape(d, h * e).T))
        if config.attention_bias:
            rules.append(TensorRule(f"model.layers.{{i}}.self_attn.{name}.bias", ("attention", name, "bias"),
                                    (heads * e,), lambda x, h=heads: x.reshape(h, e), lambda x: x.reshape(-1)))
    h = config.num_heads
    rules += [
        TensorRule("model.layers.{i}.self_attn.o_proj.weight", ("attention", "o_proj", "kernel"), (d, h * e),
                   lambda x: x.T.reshape(h, e, d), lambda x: x.reshape(h * e, d).T),
        TensorRule("model.layers.{i}.mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), (f, d),
                   _transpose, _transpose),
        TensorRule("model.layers.{i}.mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), (f, d),
                   _transpose, _transpose),
        TensorRule("model.layers.{i}.mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), (d, f),
                   _transpose, _transpose),
    ]
    return rules


def global_rules(config: ModelConfig) -> list[TensorRule]:
    v, d = config.vocab_size, config.hidden_size
    rules = [
        TensorRule("model.embed_tokens.weight", ("embed", "embedding"), (v, d), _identity, _identity),
        TensorRule("model.norm.weight", ("final_norm", "scale"), (d,), _identity, _identity),
    ]
    if not config.tie_embeddings:
        rules.append(TensorRule("lm_head.weight", ("lm_head", "kernel"), (v, d), _transpose, _transpose))
    return rules


def expected_hf_names(config: ModelConfig) -> list[str]:
    names = [rule.hf_name for rule in global_rules(config)]
    for i in range(config.num_layers):
        names += [rule.hf_name.format(i=i) for rule in layer_rules(config)]
    return names


def matrix_names(config: ModelConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """The weights a decode step multiplies by, as HF name -> (module path in the unrolled layer layout, HF
    [out, in] shape): every layer projection, and the head (the embedding table when tied, else lm_head)."""
    names = {}
    for rule in layer_rules(config):
        if rule.path[-1] == "kernel":
            for i in range(config.num_layers):
                names[rule.hf_name.format(i=i)] = ((f"layers_{i}", *rule.path[:-1]), rule.hf_shape)
    head = ("embed", "embedding") if config.tie_embeddings else ("lm_head", "kernel")
    for rule in global_rules(config):
        if rule.path == head:
            names[rule.hf_name] = (rule.path[:-1], rule.hf_shape)
    return names
