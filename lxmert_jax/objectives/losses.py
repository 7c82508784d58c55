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


def visual_label_loss_sum(logits: Array, labels: Array, weights: Array,
                          normalizer: float) -> Array:
  """Confidence-weighted per-box cross-entropy, summed over boxes (mean: / boxes).

  Args:
    logits: [B, O, C] object or attribute scores.
    labels: [B, O] detector labels (negative = ignored, counts as zero loss).
    weights: [B, O] detector confidences.
    normalizer: the visual loss factor (1/0.15 in the original).
  """
  valid = labels >= 0
  per_box = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0)) * valid
  return jnp.sum(per_box * weights.astype(jnp.float32)) * normalizer


def feature_regression_loss_sum(prediction: Array, target: Array, mask: Array,
                                normalizer: float) -> Array:
  """SmoothL1 (beta 1) averaged over features, on masked boxes, summed over boxes.

  The reference averages it over all boxes, masked or not (divide by B*O).

  Args:
    prediction, target: [..., F] decoded and original features.
    mask: [...] box weights (1 on masked boxes).
    normalizer: the visual loss factor.
  """
  per_box = jnp.mean(optax.huber_loss(prediction.astype(jnp.float32),
                                      target.astype(jnp.float32), delta=1.0), axis=-1)
  return jnp.sum(per_box * mask.astype(jnp.float32)) * normalizer


def soft_target_bce_loss(logits: Array, targets: Array) -> Array:
  """The original VQA/GQA fine-tuning loss: BCE-with-logits mean over B×A, × A."""
  per_item = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                                targets.astype(jnp.float32))
  return jnp.mean(per_item) * logits.shape[-1]


def _count(labels: Array) -> Array:
  return jnp.sum(labels >= 0).astype(jnp.float32)


def pretraining_counts(config: LxmertConfig, *, masked_lm_labels: Optional[Array] = None,
                       matched_label: Optional[Array] = None,
                       obj_labels: Optional[Mapping[str, tuple[Array, Array]]] = None,
                       ans: Optional[Array] = None,
                       feat_num_boxes: Optional[int] = None) -> dict[str, Array]:
  """What each per-task loss is averaged over, read from the labels alone.

  The labelled words, matching labels and answers for the cross-entropies;
  every box for the visual losses (`feat_num_boxes` when the feature targets
  hold the masked boxes only). A term is present when its labels are given
  and its task is on, as in `pretraining_terms`.

  Because only labels are read, the counts of a whole batch can be taken
  before its micro-batches are run: dividing each micro-batch's loss sums by
  the whole batch's counts makes the micro-batches' gradients add up to the
  whole batch's.
  """
  counts: dict[str, Array] = {}
  if masked_lm_labels is not None and config.task_mask_lm:
    counts["mlm"] = _count(masked_lm_labels)
  if matched_label is not None and config.task_matched:
    counts["matched"] = _count(matched_label)
  if obj_labels is not None and config.task_obj_predict:
    for key in config.visual_losses:
      target, weight = obj_labels[key]
      boxes = weight.size if key != "feat" or feat_num_boxes is None else feat_num_boxes
      counts[key] = jnp.float32(boxes)
  if ans is not None and config.task_qa:
    counts["qa"] = _count(ans)
  return counts


def pretraining_sums(config: LxmertConfig, *, prediction_logits: Optional[Array],
                     cross_relationship_score: Optional[Array],
                     question_answering_score: Optional[Array],
                     visual_prediction: Optional[Mapping[str, Array]],
                     masked_lm_labels: Optional[Array] = None,
                     matched_label: Optional[Array] = None,
                     obj_labels: Optional[Mapping[str, tuple[Array, Array]]] = None,
                     ans: Optional[Array] = None) -> dict[str, Array]:
  """The per-task pre-training losses summed over what they average (see `pretraining_counts`).

  Mirrors transformers' `LxmertForPreTraining.forward`: a term is computed
  only when its labels are passed and its `task_*` switch is on; `obj_labels`
  maps each visual loss name to `(labels_or_targets, weights_or_mask)`.
  """
  sums: dict[str, Array] = {}
  if masked_lm_labels is not None and config.task_mask_lm:
    sums["mlm"] = cross_entropy_sum(prediction_logits, masked_lm_labels)[0]
  if matched_label is not None and config.task_matched:
    sums["matched"] = cross_entropy_sum(cross_relationship_score, matched_label)[0]
  if obj_labels is not None and config.task_obj_predict:
    norm = config.visual_loss_normalizer
    for key in config.visual_losses:
      target, weight = obj_labels[key]
      if key == "feat":
        sums[key] = feature_regression_loss_sum(visual_prediction[key], target, weight, norm)
      else:
        sums[key] = visual_label_loss_sum(visual_prediction[key], target, weight, norm)
  if ans is not None and config.task_qa:
    sums["qa"] = cross_entropy_sum(question_answering_score, ans)[0]
  return sums


def pretraining_terms(config: LxmertConfig, *, feat_num_boxes: Optional[int] = None,
                      **outputs_and_labels: Any) -> dict[str, Array]:
  """The per-task pre-training losses (means), transformers' definitions.

  Takes the keyword arguments of `pretraining_sums` (heads' outputs and
  labels); `feat_num_boxes`: the boxes the feature loss averages over when
  the feature decoder ran on the masked boxes only.
  """
  labels = {k: v for k, v in outputs_and_labels.items()
            if k in ("masked_lm_labels", "matched_label", "obj_labels", "ans")}
  sums = pretraining_sums(config, **outputs_and_labels)
  counts = pretraining_counts(config, feat_num_boxes=feat_num_boxes, **labels)
  return {k: sums[k] / jnp.maximum(counts[k], 1.0) for k in sums}


def batch_visual_labels(batch: Mapping[str, Array]) -> dict[str, tuple[Array, Array]]:
  """The `obj_labels` dict of the pre-training batch format."""
  return {"obj": (batch["obj_labels"], batch["obj_conf"]),
          "attr": (batch["attr_labels"], batch["attr_conf"]),
          "feat": (batch["feat_targets"], batch["feat_mask"])}


def batch_labels(batch: Mapping[str, Array]) -> dict[str, Any]:
  """The label keyword arguments of `pretraining_sums` from a pipeline batch."""
  return dict(masked_lm_labels=batch["masked_lm_labels"], matched_label=batch["matched_label"],
              obj_labels=batch_visual_labels(batch), ans=batch["ans"])


def batch_counts(batch: Mapping[str, Array], config: LxmertConfig) -> dict[str, Array]:
  """`pretraining_counts` of a batch in the pipeline's format."""
  return pretraining_counts(config, feat_num_boxes=batch.get(FEAT_NUM_BOXES),
                            **batch_labels(batch))


def pretraining_losses(outputs: Any, batch: Mapping[str, Array], config: LxmertConfig,
                       weights: Optional[Mapping[str, float]] = None,
                       counts: Optional[Mapping[str, Array]] = None
                       ) -> tuple[Array, dict[str, Array]]:
  """Summed pre-training loss of a batch in the pipeline's format.

  Args:
    outputs: an `LxmertForPreTrainingOutput`.
    batch: keys `masked_lm_labels`, `matched_label`, `ans`, `obj_labels`,
      `obj_conf`, `attr_labels`, `attr_conf`, `feat_targets`, `feat_mask`.
    config: the model config (task switches, visual normaliser).
    weights: optional per-term factors (missing terms weigh 1).
    counts: what each term is averaged over (`batch_counts`); by default
      this batch's own. A micro-batch passes its whole batch's counts.

  Returns:
    (total loss, dict of unweighted per-term losses).
  """
  sums = pretraining_sums(
      config, prediction_logits=outputs.prediction_logits,
      cross_relationship_score=outputs.cross_relationship_score,
      question_answering_score=outputs.question_answering_score,
      visual_prediction=outputs.visual_prediction, **batch_labels(batch))
  counts = batch_counts(batch, config) if counts is None else counts
  terms = {k: sums[k] / jnp.maximum(counts[k], 1.0) for k in sums}
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
