"""Statistics of the pure masking functions against the reference's rates."""

import collections

import numpy as np
import pytest

from lxmert_jax.data.pipeline import masking

MASK_ID = 103


def test_word_masking_rates():
  rng = np.random.default_rng(0)
  pieces = rng.integers(1000, 2000, size=200_000).astype(np.int32)
  ids, labels = masking.mask_tokens(pieces, rng, vocab_size=30522, mask_id=MASK_ID)
  selected = labels != masking.IGNORE
  assert abs(selected.mean() - 0.15) < 0.005
  np.testing.assert_array_equal(labels[selected], pieces[selected])
  masked = ids[selected] == MASK_ID
  kept = ids[selected] == pieces[selected]
  other = ~masked & ~kept
  assert abs(masked.mean() - 0.8) < 0.01
  assert abs(kept.mean() - 0.1) < 0.01
  assert abs(other.mean() - 0.1) < 0.01
  np.testing.assert_array_equal(ids[~selected], pieces[~selected])


def test_random_replacements_cover_the_whole_vocab():
  rng = np.random.default_rng(1)
  pieces = np.full(400_000, 2000, np.int32)
  ids, labels = masking.mask_tokens(pieces, rng, vocab_size=30522, mask_id=MASK_ID)
  replaced = ids[(labels != masking.IGNORE) & (ids != MASK_ID) & (ids != 2000)]
  # Uniform over [0, 30522): special/unused ids included, mean ~ V/2.
  assert replaced.min() < 200 and replaced.max() > 30300
  assert abs(replaced.mean() / 30522 - 0.5) < 0.02


def test_frame_with_labels():
  ids = np.array([7, 8, 9], np.int32)
  labels = np.array([-100, 8, -100], np.int32)
  input_ids, mask, lm = masking.frame_with_labels(ids, labels, 8, cls_id=101, sep_id=102,
                                                  pad_id=0)
  np.testing.assert_array_equal(input_ids, [101, 7, 8, 9, 102, 0, 0, 0])
  np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(lm, [-100, -100, 8, -100, -100, -100, -100, -100])
  with pytest.raises(ValueError):
    masking.frame_with_labels(np.arange(7, dtype=np.int32), np.arange(7), 8, cls_id=1,
                              sep_id=2, pad_id=0)


def test_object_selection_rates_and_padding():
  rng = np.random.default_rng(2)
  box_mask = np.ones(36, np.int32)
  box_mask[30:] = 0
  counts = collections.Counter()
  for _ in range(20_000):
    zero, replace, selected = masking.select_objects(box_mask, rng)
    assert not selected[30:].any()
    assert not (zero & replace).any() and (zero | replace)[~selected].sum() == 0
    counts["selected"] += selected.sum()
    counts["zero"] += zero.sum()
    counts["replace"] += replace.sum()
  total = 20_000 * 30
  assert abs(counts["selected"] / total - 0.15) < 0.003
  assert abs(counts["zero"] / counts["selected"] - 0.8) < 0.01
  assert abs(counts["replace"] / counts["selected"] - 0.1) < 0.01


def test_answer_sampling_proportional_to_score():
  rng = np.random.default_rng(3)
  assert masking.sample_answer([], [], rng) == masking.IGNORE
  assert masking.sample_answer([42], [0.3], rng) == 42
  draws = collections.Counter(masking.sample_answer([5, 9], [1.0, 0.3], rng)
                              for _ in range(20_000))
  assert set(draws) == {5, 9}
  assert abs(draws[9] / 20_000 - 0.3 / 1.3) < 0.015
  # All-zero scores fall back to uniform rather than NaN probabilities.
  uniform = collections.Counter(masking.sample_answer([1, 2], [0.0, 0.0], rng)
                                for _ in range(4_000))
  assert set(uniform) == {1, 2} and abs(uniform[1] / 4_000 - 0.5) < 0.04


def test_draw_other_is_uniform_over_other_images():
  rng = np.random.default_rng(4)
  keys = np.array([0, 0, 1, 1, 2, 3])
  draws = collections.Counter(masking.draw_other(keys, 0, rng) for _ in range(12_000))
  assert set(draws) == {2, 3, 4, 5}
  for k in draws:
    assert abs(draws[k] / 12_000 - 0.25) < 0.02
