"""The task models: the backbone with its heads for pre-training, QA and NLVR2.

Names follow transformers (`lxmert`, `cls`, `obj_predict_head`,
`answer_head`) so that checkpoints convert by renaming.
"""

from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.encoders import LxmertModel, dummy_inputs
from lxmert_jax.model.gather import take_rows
from lxmert_jax.model.heads import AnswerHead, PreTrainingHeads, VisualObjHead
from lxmert_jax.model.outputs import (LxmertForNLVR2Output, LxmertForPreTrainingOutput,
                                      LxmertForQuestionAnsweringOutput, LxmertModelOutput)
from lxmert_jax.objectives import losses

Array = jax.Array


def _word_embeddings(backbone: LxmertModel) -> Array:
  return nn.meta.unbox(
      backbone.variables["params"]["embeddings"]["word_embeddings"]["embedding"])


class LxmertForPreTraining(nn.Module):
  """HF `LxmertForPreTraining`: the backbone and all five pre-training heads.

  With labels it also returns the summed loss and its terms, with the same
  conventions as transformers (`labels` = masked-LM labels, `obj_labels` =
  `{name: (labels_or_targets, weights_or_mask)}`, `matched_label`, `ans`).
  `encode` (the backbone) and `decode` (the heads) can also be applied on
  their own (`model.apply(..., method=LxmertForPreTraining.decode)`), so a
  training step can differentiate the two separately.
  """

  config: LxmertConfig

  def setup(self):
    cfg = self.config
    self.lxmert = LxmertModel(cfg)
    self.cls = PreTrainingHeads(cfg)
    self.obj_predict_head = VisualObjHead(cfg) if cfg.task_obj_predict else None
    self.answer_head = AnswerHead(cfg, cfg.num_qa_labels) if cfg.task_qa else None

  def __call__(self, input_ids: Array, visual_feats: Array, visual_pos: Array,
               attention_mask: Optional[Array] = None,
               token_type_ids: Optional[Array] = None,
               visual_attention_mask: Optional[Array] = None, *,
               labels: Optional[Array] = None,
               obj_labels: Optional[Mapping[str, tuple[Array, Array]]] = None,
               matched_label: Optional[Array] = None, ans: Optional[Array] = None,
               mlm_positions: Optional[Array] = None,
               feat_positions: Optional[Array] = None,
               deterministic: bool = True, output_hidden_states: bool = False,
               output_attentions: bool = False) -> LxmertForPreTrainingOutput:
    """Runs the backbone and every enabled pre-training head.

    `mlm_positions` ([G, K] indices into the text positions of each of G
    equal blocks of examples, see `masked_decoding.gather_masked_positions`)
    restricts the masked-LM decoder to those positions: `prediction_logits`
    is then [G, K, V] and `labels`, if given, are the [G, K] labels of those
    positions. The loss is unchanged, the decoder's cost falls by B*T/(G*K).
    `feat_positions` ([G, K'] indices into each block's boxes,
    `masked_decoding.gather_masked_boxes`) does the same for the
    feature-regression decoder: `visual_prediction["feat"]` is [G, K', F];
    `obj_labels["feat"]`, if given, are then the [G, K', F] targets and
    [G, K'] mask of those boxes.
    """
    cfg = self.config
    base = self.encode(input_ids, visual_feats, visual_pos, attention_mask, token_type_ids,
                       visual_attention_mask, deterministic=deterministic,
                       output_hidden_states=output_hidden_states,
                       output_attentions=output_attentions)
    out = self.decode(base.language_output, base.vision_output, base.pooled_output,
                      mlm_positions=mlm_positions, feat_positions=feat_positions)
    heads = dict(prediction_logits=out.prediction_logits,
                 cross_relationship_score=out.cross_relationship_score,
                 question_answering_score=out.question_answering_score,
                 visual_prediction=out.visual_prediction)
    loss = terms = None
    if any(x is not None for x in (labels, obj_labels, matched_label, ans)):
      num_boxes = None if feat_positions is None else visual_feats.shape[0] * visual_feats.shape[1]
      terms = losses.pretraining_terms(cfg, masked_lm_labels=labels,
                                       matched_label=matched_label, obj_labels=obj_labels,
                                       ans=ans, feat_num_boxes=num_boxes, **heads)
      loss = sum(terms.values(), jnp.zeros((), jnp.float32))
    return LxmertForPreTrainingOutput(**vars(base), **heads, loss=loss, loss_terms=terms)

  def encode(self, input_ids: Array, visual_feats: Array, visual_pos: Array,
             attention_mask: Optional[Array] = None,
             token_type_ids: Optional[Array] = None,
             visual_attention_mask: Optional[Array] = None, *,
             deterministic: bool = True, output_hidden_states: bool = False,
             output_attentions: bool = False) -> LxmertModelOutput:
    """The backbone (`LxmertModel`) alone."""
    return self.lxmert(input_ids, visual_feats, visual_pos, attention_mask, token_type_ids,
                       visual_attention_mask, deterministic=deterministic,
                       output_hidden_states=output_hidden_states,
                       output_attentions=output_attentions)

  def decode(self, language_output: Array, vision_output: Array, pooled_output: Array, *,
             mlm_positions: Optional[Array] = None,
             feat_positions: Optional[Array] = None) -> LxmertForPreTrainingOutput:
    """The heads on the backbone's outputs (no losses; positions as in `__call__`).

    Reads the word embeddings (the tied masked-LM decoder) and the heads'
    parameters only.
    """
    lang = language_output
    if mlm_positions is not None:
      lang = take_rows(lang, mlm_positions)
    mlm, match = self.cls(lang, pooled_output, _word_embeddings(self.lxmert))
    visual = (self.obj_predict_head(vision_output, feat_positions)
              if self.obj_predict_head is not None else None)
    answer = self.answer_head(pooled_output) if self.answer_head is not None else None
    return LxmertForPreTrainingOutput(
        language_output=language_output, vision_output=vision_output,
        pooled_output=pooled_output, prediction_logits=mlm, cross_relationship_score=match,
        question_answering_score=answer, visual_prediction=visual)


class LxmertForQuestionAnswering(nn.Module):
  """HF `LxmertForQuestionAnswering`: the backbone and an answer head.

  `labels` are integer answers (transformers' cross-entropy); for the
  original's soft-score BCE use `losses.soft_target_bce_loss`.
  """

  config: LxmertConfig

  @nn.compact
  def __call__(self, input_ids: Array, visual_feats: Array, visual_pos: Array,
               attention_mask: Optional[Array] = None,
               token_type_ids: Optional[Array] = None,
               visual_attention_mask: Optional[Array] = None, *,
               labels: Optional[Array] = None, deterministic: bool = True,
               output_hidden_states: bool = False,
               output_attentions: bool = False) -> LxmertForQuestionAnsweringOutput:
    cfg = self.config
    base = LxmertModel(cfg, name="lxmert")(
        input_ids, visual_feats, visual_pos, attention_mask, token_type_ids,
        visual_attention_mask, deterministic=deterministic,
        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
    scores = AnswerHead(cfg, cfg.num_qa_labels, name="answer_head")(base.pooled_output)
    loss = None if labels is None else losses.mean_cross_entropy(scores, labels)
    return LxmertForQuestionAnsweringOutput(**vars(base), question_answering_score=scores,
                                            loss=loss)


class LxmertForNLVR2(nn.Module):
  """The original repository's NLVR2 classifier: one statement, two images.

  The batch is flattened to 2B (statement repeated; image 0 then image 1),
  the two pooled outputs are concatenated and classified by `logit_fc`.
  """

  config: LxmertConfig

  @nn.compact
  def __call__(self, input_ids: Array, visual_feats: Array, visual_pos: Array,
               attention_mask: Optional[Array] = None,
               token_type_ids: Optional[Array] = None,
               visual_attention_mask: Optional[Array] = None, *,
               labels: Optional[Array] = None,
               deterministic: bool = True) -> LxmertForNLVR2Output:
    """Classifies statements against image pairs.

    Args:
      input_ids: [B, T].
      visual_feats: [B, 2, O, F]; visual_pos: [B, 2, O, 4].
      attention_mask, token_type_ids: [B, T] or None.
      visual_attention_mask: [B, 2, O] or None.
      labels: [B] in {0, 1} (1 = true), for the cross-entropy loss.
      deterministic: no dropout when True.
    """
    cfg = self.config

    def pairs(x: Optional[Array]) -> Optional[Array]:
      return None if x is None else jnp.repeat(jnp.asarray(x), 2, axis=0)

    def flat(x: Optional[Array]) -> Optional[Array]:
      return None if x is None else jnp.asarray(x).reshape(-1, *x.shape[2:])

    base = LxmertModel(cfg, name="lxmert")(
        pairs(input_ids), flat(visual_feats), flat(visual_pos), pairs(attention_mask),
        pairs(token_type_ids), flat(visual_attention_mask), deterministic=deterministic)
    pooled = base.pooled_output.reshape(-1, 2 * cfg.hidden_size)
    # Named like the QA head so that the original `logit_fc.*` keys convert the
    # same way for every fine-tuned task.
    logits = AnswerHead(cfg, 2, input_axis=None, name="answer_head")(pooled)
    loss = None if labels is None else losses.mean_cross_entropy(logits, labels)
    return LxmertForNLVR2Output(logits=logits, pooled_output=pooled, loss=loss)


def init_inputs(model: nn.Module, batch_size: int = 1) -> dict[str, np.ndarray]:
  """Small inputs that `model.init` accepts (NLVR2 takes image pairs)."""
  inputs = dummy_inputs(model.config, batch_size, seq_len=4, num_objects=2)
  if isinstance(model, LxmertForNLVR2):
    for name in ("visual_feats", "visual_pos", "visual_attention_mask"):
      inputs[name] = np.stack([inputs[name]] * 2, axis=1)
  return inputs
