"""LXMERT losses and metrics as pure functions, computed in float32.

The definitions are the reference's (spec §6): softmax cross-entropy for the
masked words, the matching label and the answer; per-box cross-entropy for
object and attribute labels weighted by the detector's confidence and
averaged over all boxes; SmoothL1 feature regression on the masked boxes
averaged over all boxes; the visual losses scaled by `visual_loss_normalizer`.
Labels below zero (transformers' -100, the original's -1) are ignored.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from lxmert_jax.model.config import LxmertConfig

Array = jax.Array
IGNORE_INDEX = -100

# Names of the per-task loss terms, in the order of the original's stacked
# loss vector (Mask_LM, Matched, Obj, Attr, Feat, QA).
LOSS_TERMS = ("mlm", "matched", "obj", "attr", "feat", "qa")
# Batch key set when the feature targets hold only the masked boxes (see
# `masked_decoding`): the number of boxes the feature loss averages over.
FEAT_NUM_BOXES = "feat_num_boxes"


def cross_entropy_sum(logits: Array, labels: Array) -> tuple[Array, Array]:
  """Summed softmax cross-entropy over labelled positions, and their count.

  Args:
    logits: [..., C] scores.
    labels: [...] integer classes; negative values are ignored.

  Returns:
    (sum of losses, number of labelled positions), both float32 scalars.
  """
  valid = labels >= 0
  per_item = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return jnp.sum(per_item * valid), jnp.sum(valid).astype(jnp.float32)


def mean_cross_entropy(logits: Array, labels: Array) -> Array:
  """PyTorch's `CrossEntropyLoss()` mean over labelled positions (0 if none)."""
  total, count = cross_entropy_sum(logits, labels)
  return total / jnp.maximum(count, 1.0)


def visual_label_loss(logits: Array, labels: Array, weights: Array,
                      normalizer: float) -> Array:
  """Confidence-weighted per-box cross-entropy, mean over all boxes.

  Args:
    logits: [B, O, C] object or attribute scores.
    labels: [B, O] detector labels (negative = ignored, counts as zero loss).
    weights: [B, O] detector confidences.
    normalizer: the visual loss factor (1/0.15 in the original).
  """
  valid = labels >= 0
  per_box = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0)) * valid
  return jnp.mean(per_box * weights.astype(jnp.float32)) * normalizer


def feature_regression_loss(prediction: Array, target: Array, mask: Array,
                            normalizer: float, num_boxes: Optional[int] = None) -> Array:
  """SmoothL1 (beta 1) averaged over features, on masked boxes, mean over all boxes.

  Args:
    prediction, target: [..., F] decoded and original features.
    mask: [...] box weights (1 on masked boxes).
    normalizer: the visual loss factor.
    num_boxes: the number of boxes to average over, when `prediction` holds
      only some of them (the masked ones); default: every box given.
  """
  per_box = jnp.mean(optax.huber_loss(prediction.astype(jnp.float32),
                                      target.astype(jnp.float32), delta=1.0), axis=-1)
  weighted = per_box * mask.astype(jnp.float32)
  if num_boxes is None:
    return jnp.mean(weighted) * normalizer
  return jnp.sum(weighted) / num_boxes * normalizer


def soft_target_bce_loss(logits: Array, targets: Array) -> Array:
  """The original VQA/GQA fine-tuning loss: BCE-with-logits mean over B×A, × A."""
  per_item = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                                targets.astype(jnp.float32))
  return jnp.mean(per_item) * logits.shape[-1]


def pretraining_terms(config: LxmertConfig, *, prediction_logits: Optional[Array],
                      cross_relationship_score: Optional[Array],
                      question_answering_score: Optional[Array],
                      visual_prediction: Optional[Mapping[str, Array]],
                      masked_lm_labels: Optional[Array] = None,
                      matched_label: Optional[Array] = None,
                      obj_labels: Optional[Mapping[str, tuple[Array, Array]]] = None,
                      ans: Optional[Array] = None,
                      feat_num_boxes: Optional[int] = None) -> dict[str, Array]:
  """The per-task pre-training losses whose labels are given and tasks enabled.

  Mirrors transformers' `LxmertForPreTraining.forward`: a term is computed
  only when its labels are passed and its `task_*` switch is on; `obj_labels`
  maps each visual loss name to `(labels_or_targets, weights_or_mask)`.
  `feat_num_boxes`: see `feature_regression_loss` (set when the feature
  decoder ran on gathered boxes only).
  """
  terms: dict[str, Array] = {}
  if masked_lm_labels is not None and config.task_mask_lm:
    terms["mlm"] = mean_cross_entropy(prediction_logits, masked_lm_labels)
  if matched_label is not None and config.task_matched:
    terms["matched"] = mean_cross_entropy(cross_relationship_score, matched_label)
  if obj_labels is not None and config.task_obj_predict:
    norm = config.visual_loss_normalizer
    for key in config.visual_losses:
      target, weight = obj_labels[key]
      if key == "feat":
        terms[key] = feature_regression_loss(visual_prediction[key], target, weight, norm,
                                             feat_num_boxes)
      else:
        terms[key] = visual_label_loss(visual_prediction[key], target, weight, norm)
  if ans is not None and config.task_qa:
    terms["qa"] = mean_cross_entropy(question_answering_score, ans)
  return terms


def batch_visual_labels(batch: Mapping[str, Array]) -> dict[str, tuple[Array, Array]]:
  """The `obj_labels` dict of the pre-training batch format."""
  return {"obj": (batch["obj_labels"], batch["obj_conf"]),
          "attr": (batch["attr_labels"], batch["attr_conf"]),
          "feat": (batch["feat_targets"], batch["feat_mask"])}


def pretraining_losses(outputs: Any, batch: Mapping[str, Array], config: LxmertConfig,
                       weights: Optional[Mapping[str, float]] = None
                       ) -> tuple[Array, dict[str, Array]]:
  """Summed pre-training loss of a batch in the pipeline's format.

  Args:
    outputs: an `LxmertForPreTrainingOutput`.
    batch: keys `masked_lm_labels`, `matched_label`, `ans`, `obj_labels`,
      `obj_conf`, `attr_labels`, `attr_conf`, `feat_targets`, `feat_mask`.
    config: the model config (task switches, visual normaliser).
    weights: optional per-term factors (missing terms weigh 1).

  Returns:
    (total loss, dict of unweighted per-term losses).
  """
  terms = pretraining_terms(
      config, prediction_logits=outputs.prediction_logits,
      cross_relationship_score=outputs.cross_relationship_score,
      question_answering_score=outputs.question_answering_score,
      visual_prediction=outputs.visual_prediction,
      masked_lm_labels=batch["masked_lm_labels"], matched_label=batch["matched_label"],
      obj_labels=batch_visual_labels(batch), ans=batch["ans"],
      feat_num_boxes=batch.get(FEAT_NUM_BOXES))
  weights = weights or {}
  total = sum(terms[k] * weights.get(k, 1.0) for k in terms)
  return jnp.asarray(total, jnp.float32), terms


def _accuracy_counts(logits: Array, labels: Array,
                     where: Optional[Array] = None) -> tuple[Array, Array]:
  valid = labels >= 0
  if where is not None:
    valid = valid & (where > 0)
  correct = (jnp.argmax(logits, axis=-1) == labels) & valid
  return jnp.sum(correct).astype(jnp.float32), jnp.sum(valid).astype(jnp.float32)


def pretraining_metrics(outputs: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
  """Correct-prediction counts per task, as `{name_correct, name_count}` sums.

  Sums rather than ratios, so that they can be added over steps and hosts
  before dividing.
  """
  metrics = {}
  pairs = [("mlm", outputs.prediction_logits, batch["masked_lm_labels"], None),
           ("matched", outputs.cross_relationship_score, batch["matched_label"], None),
           ("qa", outputs.question_answering_score, batch["ans"], None)]
  if outputs.visual_prediction is not None:
    box_mask = batch.get("visual_attention_mask")
    for key, labels in (("obj", "obj_labels"), ("attr", "attr_labels")):
      if key in outputs.visual_prediction:
        pairs.append((key, outputs.visual_prediction[key], batch[labels], box_mask))
  for name, logits, labels, where in pairs:
    if logits is None:
      continue
    metrics[f"{name}_correct"], metrics[f"{name}_count"] = _accuracy_counts(
        logits, labels, where)
  return metrics
