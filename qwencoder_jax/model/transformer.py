"""The Qwen2 decoder-only transformer (Flax linen).

    model = Transformer(get_preset("qwen2.5-coder-0.5b"))
    logits_btv = model.apply({"params": params}, input_ids_bt)                   # one document per row
    logits_btv = model.apply({"params": params}, input_ids_bt, segment_ids_bt, positions_bt)   # packed rows

Design notes: docs/MODEL.md, section `qwencoder_jax/model/transformer.py`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwencoder_jax.model.attention import Attention
from qwencoder_jax.model.config import ModelConfig
from qwencoder_jax.model.layers import MLP, RMSNorm, dense_init, dtype_of, rope_cos_sin

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class DecoderLayer(nn.Module):
    config: ModelConfig
    decode: str | None = None  # KV-cache mode of the attention (see Attention); None when training

    @nn.compact
    def __call__(self, x_btd, segment_ids_bt, cos_bte, sin_bte):
        cfg = self.config
        param = dtype_of(cfg.param_dtype)
        x_btd = nn.with_logical_constraint(x_btd, ("act_batch", "act_length", "act_embed"))
        h_btd = RMSNorm(cfg.rms_norm_eps, param, name="input_norm")(x_btd)
        x_btd = x_btd + Attention(cfg, self.decode, name="attention")(h_btd, segment_ids_bt, cos_bte, sin_bte)
        h_btd = RMSNorm(cfg.rms_norm_eps, param, name="post_attention_norm")(x_btd)
        x_btd = x_btd + MLP(cfg, name="mlp")(h_btd)
        return x_btd, None  # the (carry, output) form nn.scan wants


def _layer_class(config: ModelConfig, decode: str | None = None):
    if config.remat_policy == "none" or decode is not None:  # remat only trades memory in backward passes
        return DecoderLayer
    return nn.remat(DecoderLayer, policy=_REMAT_POLICIES[config.remat_policy], prevent_cse=not config.scan_layers)


class Embed(nn.Module):
    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(dense_init(), ("vocab", "embed")),
            (cfg.vocab_size, cfg.hidden_size), dtype_of(cfg.param_dtype))

    def __call__(self, input_ids_bt):
        # Gathering rows of a table sharded on both axes (vocab over tensor, embed over fsdp) into batch-sharded
        # activations is a layout change XLA's partitioner can only do by rematerialising the whole gather on
        # every device. So: all-gather the embed axis first (as FSDP does for every weight it uses), gather locally
        # from the vocabulary shard (a masked lookup plus one all-reduce over tensor), and pin the result's layout.
        table_vd = nn.with_logical_constraint(self.embedding, ("vocab", None))
        x_btd = jnp.take(table_vd, input_ids_bt, axis=0).astype(dtype_of(self.config.compute_dtype))
        return nn.with_logical_constraint(x_btd, ("act_batch", "act_length", "act_embed"))

    def attend(self, x_btd):
        return head_logits(x_btd, self.embedding.astype(x_btd.dtype), transposed=True)


def head_logits(x_btd: jnp.ndarray, projection: jnp.ndarray, transposed: bool = False,
                dot_general=jax.lax.dot_general) -> jnp.ndarray:
    """Float32 logits [b, t, v] of hidden states against the head's matrix: [d, v], or [v, d] when `transposed`
    (a tied embedding table). `dot_general`: the CPU decode step passes its kernel's (cpu_decode)."""
    dims = (((2,), (1,) if transposed else (0,)), ((), ()))
    return dot_general(x_btd, projection, dims, preferred_element_type=jnp.float32)


class LMHead(nn.Module):
    """The output projection of untied models; logits come out in float32 whatever the compute dtype."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_btd):
        cfg = self.config
        kernel_dv = self.param("kernel", nn.with_logical_partitioning(dense_init(), ("embed", "vocab")),
                               (cfg.hidden_size, cfg.vocab_size), dtype_of(cfg.param_dtype))
        return head_logits(x_btd, kernel_dv.astype(x_btd.dtype))


class Transformer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids_bt, segment_ids_bt=None, positions_bt=None, return_hidden: bool = False,
                 decode: str | None = None):
        """Float32 logits [b, t, v]. Without segment ids each row is one document starting at position 0.

        return_hidden: return the final-normed hidden states [b, t, d] instead of logits (for losses that apply
        the output projection themselves, a vocabulary chunk at a time; `output_projection` gives its matrix).

        segment_ids_bt: documents of a packed row (equal ids attend to each other; 0 is padding by convention).
        positions_bt: each token's position inside its document (restarts at 0 for each packed document).
        decode: None, or "prefill" / "step" to fill / extend the KV cache held in the mutable "cache" collection
            (`qwencoder_jax.model.kv_cache` builds it and runs the decoding loop).
        """
        cfg = self.config
        input_ids_bt = jnp.asarray(input_ids_bt)
        if input_ids_bt.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids_bt.shape}")
        if not jnp.issubdtype(input_ids_bt.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integers, got {input_ids_bt.dtype}")
        if segment_ids_bt is None:
            segment_ids_bt = jnp.ones_like(input_ids_bt, dtype=jnp.int32)
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(input_ids_bt.shape[1], dtype=jnp.int32), input_ids_bt.shape)

        embed = Embed(cfg, name="embed")
        x_btd = embed(input_ids_bt)
        cos_bte, sin_bte = rope_cos_sin(cfg, positions_bt)

        if cfg.scan_layers:
            layers = nn.scan(_layer_class(cfg, decode), variable_axes={"params": 0, "cache": 0},
                             split_rngs={"params": True},
                             in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                             metadata_params={nn.PARTITION_NAME: "layers"})
            x_btd, _ = layers(cfg, decode, name="layers")(x_btd, segment_ids_bt, cos_bte, sin_bte)
        else:
            layer_class = _layer_class(cfg, decode)
            for i in range(cfg.num_layers):
                x_btd, _ = layer_class(cfg, decode, name=f"layers_{i}")(x_btd, segment_ids_bt, cos_bte, sin_bte)

        x_btd = RMSNorm(cfg.rms_norm_eps, dtype_of(cfg.param_dtype), name="final_norm")(x_btd)
        if return_hidden:
            if not cfg.tie_embeddings and self.is_initializing():
                LMHead(cfg, name="lm_head")(x_btd)  # create the head's parameters even when only hidden states are asked
            return x_btd
        if cfg.tie_embeddings:
            logits_btv = embed.attend(x_btd)
        else:
            logits_btv = LMHead(cfg, name="lm_head")(x_btd)
        return nn.with_logical_constraint(logits_btv, ("act_batch", "act_length", "act_vocab"))


def output_projection(config: ModelConfig, params) -> jnp.ndarray:
    """The [d, v] matrix that turns final hidden states into logits (the embedding table, transposed, when tied)."""
    if config.tie_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]["kernel"]


def init_params(config: ModelConfig, rng: jax.Array, sequence_length: int = 8) -> dict[str, Any]:
    """Random parameters (unboxed from their logical-axis metadata)."""
    ids = jnp.zeros((1, sequence_length), jnp.int32)
    variables = Transformer(config).init(rng, ids)
    return nn.meta.unbox(variables)["params"]


def abstract_params(config: ModelConfig, sequence_length: int = 8):
    """Parameter shapes and dtypes without allocating them (for big presets and memory estimates)."""
    return jax.eval_shape(lambda rng: init_params(config, rng, sequence_length), jax.random.key(0))
