"""The LXMERT encoder: language, object-relationship and cross-modality layers.

Layer order and sub-layer order follow the reference exactly (spec §3): the
visual feature encoder, N_L language layers on the text embeddings, N_R
relationship layers on the objects, then N_X cross-modality layers in which
both cross-attention directions read the same layer inputs and share one set
of weights (`visual_attention`).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lxmert_jax.model import layers
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.outputs import LxmertModelOutput

Array = jax.Array


class LxmertLayer(nn.Module):
  """A post-LN BERT layer: self-attention then feed-forward."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, h: Array, bias: Optional[Array],
               deterministic: bool) -> tuple[Array, Array]:
    cfg = self.config
    a, probs = layers.AttentionBlock(cfg, "self", name="attention")(
        h, h, bias, deterministic)
    inter = layers.Intermediate(cfg, name="intermediate")(a)
    out = layers.ResidualOutput(cfg, in_axis="mlp", name="output")(inter, a, deterministic)
    return out, probs


class LxmertXLayer(nn.Module):
  """Cross-modality layer: shared cross-attention, self-attention, FFN per stream."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, lang: Array, lang_bias: Optional[Array], visn: Array,
               visn_bias: Optional[Array],
               deterministic: bool) -> tuple[Array, Array, Array, Array]:
    """Returns both streams' outputs and the text-to-vision then vision-to-text probabilities."""
    cfg = self.config
    cross = layers.AttentionBlock(cfg, "att", name="visual_attention")
    lang1, lang_probs = cross(lang, visn, visn_bias, deterministic)
    visn1, visn_probs = cross(visn, lang, lang_bias, deterministic)
    lang2, _ = layers.AttentionBlock(cfg, "self", name="lang_self_att")(
        lang1, lang1, lang_bias, deterministic)
    visn2, _ = layers.AttentionBlock(cfg, "self", name="visn_self_att")(
        visn1, visn1, visn_bias, deterministic)

    def ffn(x: Array, prefix: str) -> Array:
      inter = layers.Intermediate(cfg, name=f"{prefix}_inter")(x)
      return layers.ResidualOutput(cfg, in_axis="mlp", name=f"{prefix}_output")(
          inter, x, deterministic)

    return ffn(lang2, "lang"), ffn(visn2, "visn"), lang_probs, visn_probs


class LxmertEncoder(nn.Module):
  """Visual feature encoder followed by the L, R and X layer stacks."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, lang: Array, lang_bias: Optional[Array], visual_feats: Array,
               visual_pos: Array, visn_bias: Optional[Array],
               deterministic: bool) -> dict[str, tuple[Array, ...]]:
    cfg = self.config
    visn = layers.VisualFeatureEncoder(cfg, name="visn_fc")(
        visual_feats, visual_pos, deterministic)
    lang_states, visn_states = [], []
    lang_att, visn_att, cross_att, cross_visn_att = [], [], [], []
    for i in range(cfg.l_layers):
      lang, probs = LxmertLayer(cfg, name=f"layer_{i}")(lang, lang_bias, deterministic)
      lang_states.append(lang)
      lang_att.append(probs)
    for i in range(cfg.r_layers):
      visn, probs = LxmertLayer(cfg, name=f"r_layers_{i}")(visn, visn_bias, deterministic)
      visn_states.append(visn)
      visn_att.append(probs)
    for i in range(cfg.x_layers):
      lang, visn, probs, visn_probs = LxmertXLayer(cfg, name=f"x_layers_{i}")(
          lang, lang_bias, visn, visn_bias, deterministic)
      lang_states.append(lang)
      visn_states.append(visn)
      cross_att.append(probs)
      cross_visn_att.append(visn_probs)
    return dict(language_hidden_states=tuple(lang_states),
                vision_hidden_states=tuple(visn_states),
                language_attentions=tuple(lang_att),
                vision_attentions=tuple(visn_att),
                cross_encoder_attentions=tuple(cross_att),
                cross_encoder_vision_attentions=tuple(cross_visn_att))


class LxmertModel(nn.Module):
  """The LXMERT backbone (HF `LxmertModel`): embeddings, encoder, pooler."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, input_ids: Array, visual_feats: Array, visual_pos: Array,
               attention_mask: Optional[Array] = None,
               token_type_ids: Optional[Array] = None,
               visual_attention_mask: Optional[Array] = None, *,
               deterministic: bool = True, output_hidden_states: bool = False,
               output_attentions: bool = False) -> LxmertModelOutput:
    """Encodes a batch of sentences and their objects.

    Args:
      input_ids: [B, T] WordPiece ids, `[CLS] ... [SEP]` then 0-padding.
      visual_feats: [B, O, F] RoI features.
      visual_pos: [B, O, 4] boxes (x1, y1, x2, y2) in [0, 1].
      attention_mask: [B, T] 1 for real tokens; all ones when omitted.
      token_type_ids: [B, T]; zeros when omitted.
      visual_attention_mask: [B, O] 1 for real boxes; no mask when omitted.
      deterministic: no dropout when True; otherwise the `dropout` rng is used.
      output_hidden_states: also return every layer's outputs.
      output_attentions: also return attention probabilities.

    Returns:
      An `LxmertModelOutput`.
    """
    cfg = self.config
    if output_attentions and cfg.attention_implementation != "reference":
      raise ValueError("output_attentions needs attention_implementation='reference'; "
                       f"{cfg.attention_implementation!r} returns no attention maps")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if token_type_ids is None:
      token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
    token_type_ids = jnp.asarray(token_type_ids, jnp.int32)
    visual_feats = jnp.asarray(visual_feats)
    visual_pos = jnp.asarray(visual_pos)

    emb = layers.Embeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic)
    states = LxmertEncoder(cfg, name="encoder")(
        emb, layers.attention_bias(attention_mask), visual_feats, visual_pos,
        layers.attention_bias(visual_attention_mask), deterministic)
    lang = states["language_hidden_states"][-1]
    visn = states["vision_hidden_states"][-1]
    pooled = Pooler(cfg, name="pooler")(lang)
    hidden = {k: states[k] if output_hidden_states else None
              for k in ("language_hidden_states", "vision_hidden_states")}
    attn = {k: states[k] if output_attentions else None
            for k in ("language_attentions", "vision_attentions",
                      "cross_encoder_attentions", "cross_encoder_vision_attentions")}
    return LxmertModelOutput(language_output=lang, vision_output=visn,
                             pooled_output=pooled, **hidden, **attn)


class Pooler(nn.Module):
  """`tanh(Dense(h[:, 0]))` on the language stream's [CLS] position."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, lang: Array) -> Array:
    cfg = self.config
    return jnp.tanh(layers.dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(lang[:, 0]))


def dummy_inputs(config: LxmertConfig, batch_size: int = 2, seq_len: int = 20,
                 num_objects: int = 36) -> dict[str, np.ndarray]:
  """Inputs of the right shapes and dtypes for `Module.init`."""
  return dict(
      input_ids=np.ones((batch_size, seq_len), np.int32),
      visual_feats=np.zeros((batch_size, num_objects, config.visual_feat_dim), np.float32),
      visual_pos=np.zeros((batch_size, num_objects, config.visual_pos_dim), np.float32),
      attention_mask=np.ones((batch_size, seq_len), np.int32),
      token_type_ids=np.zeros((batch_size, seq_len), np.int32),
      visual_attention_mask=np.ones((batch_size, num_objects), np.int32),
  )
