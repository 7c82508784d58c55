"""The heads on LXMERT's outputs: masked LM, matching, visual decoders, answers.

Names follow transformers (`cls.predictions`, `cls.seq_relationship`,
`obj_predict_head`, `answer_head.logit_fc`) and, for NLVR2, the original
repository (`logit_fc`), so checkpoints convert by renaming.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lxmert_jax.model import layers
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.gather import take_rows

Array = jax.Array


class PredictionHeadTransform(nn.Module):
  """Dense -> activation -> LayerNorm (HF `LxmertPredictionHeadTransform`)."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, h: Array) -> Array:
    cfg = self.config
    h = layers.dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(h)
    return layers.layer_norm(cfg)(layers.activation(cfg.hidden_act, h))


class LMPredictionHead(nn.Module):
  """Masked-LM head whose decoder is the (tied) word-embedding matrix."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, h: Array, word_embeddings: Array) -> Array:
    cfg = self.config
    h = PredictionHeadTransform(cfg, name="transform")(h)
    bias = self.param("bias", layers.zeros_init(("vocab",)), (cfg.vocab_size,),
                      cfg.storage_dtype)
    logits = jnp.einsum("...d,vd->...v", h, word_embeddings.astype(h.dtype),
                        preferred_element_type=jnp.float32)
    return logits + bias.astype(jnp.float32)


class PreTrainingHeads(nn.Module):
  """HF `LxmertPreTrainingHeads`: `predictions` (MLM) and `seq_relationship`."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, lang: Array, pooled: Array,
               word_embeddings: Array) -> tuple[Array, Array]:
    cfg = self.config
    mlm = LMPredictionHead(cfg, name="predictions")(lang, word_embeddings)
    match = layers.dense(cfg, 2, ("embed", "classes"), "seq_relationship")(pooled)
    return mlm, match.astype(jnp.float32)


class VisualObjHead(nn.Module):
  """Object-label, attribute and feature-regression decoders on the vision stream."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, visn: Array, feat_positions: Optional[Array] = None) -> dict[str, Array]:
    cfg = self.config
    h = PredictionHeadTransform(cfg, name="transform")(visn)
    return VisualDecoders(cfg, name="decoder_dict")(h, feat_positions)


class VisualDecoders(nn.Module):
  """One Dense decoder per enabled visual loss (HF `decoder_dict`)."""

  config: LxmertConfig

  @nn.compact
  def __call__(self, h: Array, feat_positions: Optional[Array] = None) -> dict[str, Array]:
    """Decodes every box; the feature decoder only `feat_positions` when given.

    Args:
      h: [B, O, D] transformed vision states.
      feat_positions: [G, K] indices into each of G equal blocks of
        examples' boxes (`masked_decoding.gather_masked_boxes`); `feat` is
        then [G, K, F] (the object and attribute losses read every box).
    """
    cfg = self.config
    sizes = {"obj": (cfg.num_object_labels, "classes"),
             "attr": (cfg.num_attr_labels, "classes"),
             "feat": (cfg.visual_feat_dim, "vis_feat")}
    out = {}
    for key in cfg.visual_losses:
      num, axis = sizes[key]
      rows = h
      if key == "feat" and feat_positions is not None:
        rows = take_rows(h, feat_positions)
      out[key] = layers.dense(cfg, num, ("embed", axis), key)(rows).astype(jnp.float32)
    return out


class AnswerHead(nn.Module):
  """`logit_fc`: Dense(D->2D) -> GeLU -> LayerNorm -> Dense(2D->num_answers)."""

  config: LxmertConfig
  num_answers: int
  input_axis: Optional[str] = "embed"

  @nn.compact
  def __call__(self, pooled: Array) -> Array:
    cfg = self.config
    hid = pooled.shape[-1] * 2 if self.input_axis == "embed" else pooled.shape[-1]
    h = layers.dense(cfg, hid, (self.input_axis, "mlp"), "logit_fc_0")(pooled)
    h = layers.layer_norm(cfg, "mlp", name="logit_fc_2")(layers.activation("gelu", h))
    out = layers.dense(cfg, self.num_answers, ("mlp", "classes"), "logit_fc_3")(h)
    return out.astype(jnp.float32)
