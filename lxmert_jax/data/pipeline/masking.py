"""The reference's random pre-training corruptions, as pure numpy functions.

Each takes an explicit `np.random.Generator`, so a pipeline that derives one
generator per record (from the seed and the record's position) gets the same
corruptions whatever the number of workers. Probabilities follow the
reference exactly: a word piece (or box) is selected with probability p; a
selected one is replaced by [MASK] (or zeroed) with probability 0.8, by a
random token (or another image's box feature) with probability 0.1, and kept
with probability 0.1. Labels are -100 where nothing is predicted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE = -100


def mask_tokens(pieces: np.ndarray, rng: np.random.Generator, *, vocab_size: int,
                mask_id: int, mask_prob: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
  """Word masking of word-piece ids (no special tokens).

  Args:
    pieces: int32 [n] word-piece ids, already truncated to T-2.
    rng: the record's generator.
    vocab_size: random replacements are uniform over [0, vocab_size), special
      and unused entries included, as in the reference.
    mask_id: the [MASK] id.
    mask_prob: selection probability per word piece.

  Returns:
    `(ids, labels)`, int32 [n]: corrupted ids, and the original id at selected
    positions (-100 elsewhere).
  """
  pieces = np.asarray(pieces, dtype=np.int32)
  u = rng.random(pieces.shape[0])
  selected = u < mask_prob
  v = u / mask_prob if mask_prob > 0 else np.ones_like(u)
  to_mask = selected & (v < 0.8)
  to_random = selected & (v >= 0.8) & (v < 0.9)
  ids = pieces.copy()
  ids[to_mask] = mask_id
  num_random = int(to_random.sum())
  if num_random:
    ids[to_random] = rng.integers(0, vocab_size, size=num_random)
  labels = np.where(selected, pieces, IGNORE).astype(np.int32)
  return ids, labels


def frame_with_labels(ids: np.ndarray, labels: np.ndarray, max_length: int, *, cls_id: int,
                      sep_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`[CLS] ids [SEP]` padded to T, with -100 labels on CLS/SEP/padding.

  Returns:
    `(input_ids, attention_mask, masked_lm_labels)`, int32 [T].
  """
  n = ids.shape[0]
  if n > max_length - 2:
    raise ValueError(f"{n} word pieces do not fit in T={max_length} with [CLS] and [SEP]")
  input_ids = np.full((max_length,), pad_id, np.int32)
  input_ids[0] = cls_id
  input_ids[1:n + 1] = ids
  input_ids[n + 1] = sep_id
  attention_mask = np.zeros((max_length,), np.int32)
  attention_mask[:n + 2] = 1
  lm_labels = np.full((max_length,), IGNORE, np.int32)
  lm_labels[1:n + 1] = labels
  return input_ids, attention_mask, lm_labels


def select_objects(box_mask: np.ndarray, rng: np.random.Generator,
                   obj_mask_prob: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Which boxes to corrupt, among the real ones.

  Args:
    box_mask: [O], 1 for real boxes (padding boxes are never selected).
    rng: the record's generator.
    obj_mask_prob: selection probability per box.

  Returns:
    Boolean [O] arrays `(zero, replace, selected)`: zero the feature (80% of
    selected), replace it by another image's box feature (10%), and all
    selected boxes (the feature loss mask; the remaining 10% keep their
    feature).
  """
  u = rng.random(box_mask.shape[0])
  selected = (u < obj_mask_prob) & (box_mask > 0)
  v = u / obj_mask_prob if obj_mask_prob > 0 else np.ones_like(u)
  zero = selected & (v < 0.8)
  replace = selected & (v >= 0.8) & (v < 0.9)
  return zero, replace, selected


def sample_answer(ans_ids: Sequence[int], scores: Sequence[float],
                  rng: np.random.Generator) -> int:
  """The QA target: -100 without answers, the answer if one, else ∝ score."""
  n = len(ans_ids)
  if n == 0:
    return IGNORE
  if n == 1:
    return int(ans_ids[0])
  p = np.asarray(scores, dtype=np.float64)
  total = p.sum()
  p = p / total if total > 0 else np.full((n,), 1.0 / n)
  return int(ans_ids[int(rng.choice(n, p=p))])


def draw_other(image_keys: np.ndarray, own_key: int, rng: np.random.Generator) -> int:
  """Index of a uniformly random datum whose image differs from `own_key`.

  The caller guarantees that `image_keys` holds at least two images.
  """
  n = image_keys.shape[0]
  while True:
    k = int(rng.integers(n))
    if image_keys[k] != own_key:
      return k
