"""Building blocks of LXMERT: embeddings, attention, feed-forward and LayerNorm.

Module and parameter names mirror Hugging Face's `modeling_lxmert.py`
(`attention/self/query/kernel` is `attention.self.query.weight`), so that
checkpoint conversion is a renaming plus transposes. Every parameter carries
logical axis names (`vocab`, `embed`, `embed_out`, `mlp`, `heads`, `pos`,
`type`, `vis_feat`, `box`, `classes`) for sharding rules to map onto a device
mesh. A square hidden-to-hidden kernel is (`embed`, `embed_out`): each
dimension needs its own name for Flax to map it.

Numerics: matmuls run in `config.dtype`; LayerNorm statistics, attention
scores and softmax run in float32.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lxmert_jax.model.config import LxmertConfig

Array = jax.Array


def normal_init(config: LxmertConfig, axes: Sequence[Optional[str]]):
  """The reference's N(0, initializer_range) init, with logical axis names."""
  return nn.with_logical_partitioning(
      nn.initializers.normal(stddev=config.initializer_range), tuple(axes))


def zeros_init(axes: Sequence[Optional[str]]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(axes))


def ones_init(axes: Sequence[Optional[str]]):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(axes))


def dense(config: LxmertConfig, features: int, axes: tuple[str, str], name: str,
          use_bias: bool = True) -> nn.Dense:
  """A Linear layer: kernel [in, out] ~ N(0, 0.02), zero bias."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=config.compute_dtype,
      param_dtype=config.storage_dtype, kernel_init=normal_init(config, axes),
      bias_init=zeros_init((axes[1],)), name=name)


def layer_norm(config: LxmertConfig, axis_name: str = "embed",
               name: str = "LayerNorm") -> nn.LayerNorm:
  """LayerNorm with `config.layer_norm_eps` and two-pass float32 variance.

  The reference builds every LayerNorm with eps 1e-12, which is also the
  config's default.
  """
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps, use_fast_variance=False, dtype=config.compute_dtype,
      param_dtype=config.storage_dtype, scale_init=ones_init((axis_name,)),
      bias_init=zeros_init((axis_name,)), name=name)


def activation(name: str, x: Array) -> Array:
  """The activations transformers' ACT2FN offers for LXMERT configs."""
  if name in ("gelu", "gelu_python"):
    return jax.nn.gelu(x, approximate=False)
  if name == "gelu_new":
    return jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu(x)
  raise ValueError(f"unsupported activation {name!r}")


def attention_bias(mask: Optional[Array]) -> Optional[Array]:
  """Turns a [B, S] {0,1} key mask into an additive [B, 1, 1, S] float32 bias.

  Masked keys get float32's most negative value, as current transformers does.
  """
  if mask is None:
    return None
  mask = jnp.asarray(mask, jnp.float32)
  return ((1.0 - mask) * jnp.finfo(jnp.float32).min)[:, None, None, :]


class Embeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout.

  Row 0 of each table gets no gradient through the lookup, as with PyTorch's
  `padding_idx=0` in the reference; the tied MLM decoder still trains the word
  table's row 0.
  """

  config: LxmertConfig

  @nn.compact
  def __call__(self, input_ids: Array, token_type_ids: Array,
               deterministic: bool) -> Array:
    cfg = self.config

    # Lookups and their sum stay in the storage dtype (float32 normally): they
    # cost no matmul, and the LayerNorm after them casts to the compute dtype.
    def table(num: int, axis: str, name: str) -> nn.Embed:
      return nn.Embed(num, cfg.hidden_size, dtype=cfg.storage_dtype,
                      param_dtype=cfg.storage_dtype,
                      embedding_init=normal_init(cfg, (axis, "embed")), name=name)

    def lookup(embed: nn.Embed, ids: Array) -> Array:
      rows = embed(ids)
      return jnp.where((ids == 0)[..., None], jax.lax.stop_gradient(rows), rows)

    position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    x = (lookup(table(cfg.vocab_size, "vocab", "word_embeddings"), input_ids)
         + lookup(table(cfg.max_position_embeddings, "pos", "position_embeddings"),
                  position_ids)
         + lookup(table(cfg.type_vocab_size, "type", "token_type_embeddings"),
                  token_type_ids))
    x = layer_norm(cfg)(x)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class VisualFeatureEncoder(nn.Module):
  """Projects RoI features and boxes to the hidden size; averages the two."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, visual_feats: Array, visual_pos: Array,
               deterministic: bool) -> Array:
    cfg = self.config
    x = dense(cfg, cfg.hidden_size, ("vis_feat", "embed"), "visn_fc")(visual_feats)
    x = layer_norm(cfg, name="visn_layer_norm")(x)
    y = dense(cfg, cfg.hidden_size, ("box", "embed"), "box_fc")(visual_pos)
    y = layer_norm(cfg, name="box_layer_norm")(y)
    out = (x + y) / 2
    return nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=deterministic)


class Attention(nn.Module):
  """Multi-head attention without output projection (`LxmertAttention`).

  Returns the merged context [B, T, D] and the attention probabilities
  [B, N, T, S] after dropout (what transformers returns as attentions); the
  fused implementations return None for the probabilities.
  """

  config: LxmertConfig

  @nn.compact
  def __call__(self, hidden: Array, context: Array, bias: Optional[Array],
               deterministic: bool) -> tuple[Array, Array]:
    cfg = self.config
    n, h = cfg.num_attention_heads, cfg.head_dim

    def project(x: Array, name: str) -> Array:
      y = dense(cfg, cfg.hidden_size, ("embed", "heads"), name)(x)
      return y.reshape(*y.shape[:-1], n, h)

    q, k, v = project(hidden, "query"), project(context, "key"), project(context, "value")
    if cfg.attention_implementation != "reference":
      # cuDNN wants the mask at full [B, N, T, S] (or [B, 1, T, S]) shape.
      mask = None if bias is None else jnp.broadcast_to(
          bias == 0, (q.shape[0], 1, q.shape[1], k.shape[1]))
      ctx = jax.nn.dot_product_attention(
          q, k, v, mask=mask, implementation=cfg.attention_implementation)
      return ctx.reshape(*ctx.shape[:-2], n * h), None
    scores = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(h)
    if bias is not None:
      scores = scores + bias
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(cfg.attention_probs_dropout_prob)(
        probs, deterministic=deterministic)
    ctx = jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v)
    return ctx.reshape(*ctx.shape[:-2], n * h), probs


class ResidualOutput(nn.Module):
  """`LN(Dropout(Dense(x)) + residual)`: HF's AttentionOutput and Output."""

  config: LxmertConfig
  in_axis: str = "heads"

  @nn.compact
  def __call__(self, x: Array, residual: Array, deterministic: bool) -> Array:
    cfg = self.config
    x = dense(cfg, cfg.hidden_size, (self.in_axis, "embed"), "dense")(x)
    x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
    return layer_norm(cfg)(x + residual.astype(x.dtype))


class Intermediate(nn.Module):
  """`act(Dense_D->F(x))`."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    x = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "dense")(x)
    return activation(cfg.hidden_act, x)


class AttentionBlock(nn.Module):
  """Attention followed by its residual output block.

  Serves as HF's `LxmertSelfAttentionLayer` (submodules `self`, `output`) and
  `LxmertCrossAttentionLayer` (submodules `att`, `output`).
  """

  config: LxmertConfig
  attention_name: str = "self"

  @nn.compact
  def __call__(self, hidden: Array, context: Array, bias: Optional[Array],
               deterministic: bool) -> tuple[Array, Array]:
    ctx, probs = Attention(self.config, name=self.attention_name)(
        hidden, context, bias, deterministic)
    out = ResidualOutput(self.config, name="output")(ctx, hidden, deterministic)
    return out, probs
