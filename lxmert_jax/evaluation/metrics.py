"""Evaluation metrics of the downstream tasks (the reference's local evaluators).

* VQA: the soft score of the predicted answer (the precomputed min(1, n/3)
  style scores in the targets), averaged over questions.
* GQA: exact match of the predicted answer with the single gold answer.
* NLVR2: accuracy, and consistency = fraction of sentences for which every
  image pair is predicted correctly; pairs of one sentence share their
  identifier up to the pair field (`split-set-pair-sentence`, as in the
  official `metrics.py`).

All functions take an optional `mask` (the eval loader's `_mask`) so padded
examples of the last batch are ignored.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np


def _real(n: int, mask: np.ndarray | None) -> np.ndarray:
  if mask is None:
    return np.ones((n,), bool)
  return np.asarray(mask).reshape(-1) > 0


def vqa_score(pred_ids: np.ndarray, answer_targets: np.ndarray,
              mask: np.ndarray | None = None) -> float:
  """Mean soft score of the predicted answers.

  Args:
    pred_ids: int [N] argmax answer ids.
    answer_targets: float [N, A] soft scores (the loader's `answer_targets`).
    mask: [N], >0 for real examples.
  """
  pred_ids = np.asarray(pred_ids).reshape(-1)
  real = _real(pred_ids.shape[0], mask)
  scores = np.asarray(answer_targets)[np.arange(pred_ids.shape[0]), pred_ids]
  return float(scores[real].mean()) if real.any() else 0.0


def gqa_accuracy(pred_ids: np.ndarray, answer_targets: np.ndarray,
                 mask: np.ndarray | None = None) -> float:
  """Exact-match accuracy from the targets (the gold answer has score 1).

  A gold answer outside the vocabulary has an all-zero target row and so can
  never be matched, as with string comparison.
  """
  pred_ids = np.asarray(pred_ids).reshape(-1)
  real = _real(pred_ids.shape[0], mask)
  hit = np.asarray(answer_targets)[np.arange(pred_ids.shape[0]), pred_ids] > 0
  return float(hit[real].mean()) if real.any() else 0.0


def exact_match(predicted: Sequence[str], gold: Sequence[str]) -> float:
  """Fraction of predicted answer strings equal to the gold strings."""
  if len(predicted) != len(gold):
    raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold answers")
  if not gold:
    return 0.0
  return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


def _sentence_key(identifier: str) -> str:
  fields = identifier.split("-")
  if len(fields) >= 4:
    fields[2] = ""
  return "-".join(fields)


def nlvr2_metrics(identifiers: Sequence[str], predictions: np.ndarray, labels: np.ndarray,
                  mask: np.ndarray | None = None) -> dict[str, float]:
  """NLVR2 accuracy and consistency.

  Args:
    identifiers: the loader's `question_id` (NLVR2 identifiers) [N].
    predictions: int [N] predicted labels (1 = true).
    labels: int [N] gold labels.
    mask: [N], >0 for real examples.

  Returns:
    `{"accuracy": ..., "consistency": ...}`.
  """
  predictions = np.asarray(predictions).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  real = _real(predictions.shape[0], mask)
  correct = predictions == labels
  groups = collections.defaultdict(lambda: True)
  for ident, ok, is_real in zip(identifiers, correct, real):
    if is_real:
      key = _sentence_key(str(ident))
      groups[key] = groups[key] and bool(ok)
  accuracy = float(correct[real].mean()) if real.any() else 0.0
  consistency = float(np.mean(list(groups.values()))) if groups else 0.0
  return {"accuracy": accuracy, "consistency": consistency}
