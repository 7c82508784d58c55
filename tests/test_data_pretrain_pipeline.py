"""Pre-training batches: the contract, the reference's construction, determinism."""

import collections

import numpy as np
import pytest

from lxmert_jax.data import layout
from lxmert_jax.data.pipeline import common
from lxmert_jax.data import make_pretrain_loader
from lxmert_jax.data.pipeline import masking
from lxmert_jax.data import store
from lxmert_jax.data import tokenization
from test_data_support import collect, corpus_dir, expected_image, tiny_data, tsv_images

T, O = 20, 8  # O > the corpus's 6 boxes, so padding is exercised.
CONTRACT = {
    "input_ids": (np.int32, (T,)), "attention_mask": (np.int32, (T,)),
    "token_type_ids": (np.int32, (T,)), "masked_lm_labels": (np.int32, (T,)),
    "visual_feats": (np.float32, (O, 16)), "visual_pos": (np.float32, (O, 4)),
    "visual_attention_mask": (np.int32, (O,)), "obj_labels": (np.int32, (O,)),
    "obj_conf": (np.float32, (O,)), "attr_labels": (np.int32, (O,)),
    "attr_conf": (np.float32, (O,)), "feat_targets": (np.float32, (O, 16)),
    "feat_mask": (np.float32, (O,)), "matched_label": (np.int32, ()), "ans": (np.int32, ()),
}
ALL = "+".join(layout.PRETRAIN_SPLITS)


def _loader(**kwargs):
  args = dict(batch_size=16, seed=11, num_objects=O, shard_index=0, shard_count=1)
  args.update(kwargs)
  return make_pretrain_loader(tiny_data(), args.pop("split", ALL), **args)


def _in_order(**kwargs):
  """One pass in record order (padded last batch), real examples only."""
  args = dict(shuffle=False, num_epochs=1, drop_remainder=False)
  args.update(kwargs)
  out = collect(_loader(**args))
  real = out.pop("_mask") > 0
  return {k: v[real] for k, v in out.items()}


def test_batch_contract():
  batch = next(iter(_loader()))
  assert set(batch) == set(CONTRACT)
  for key, (dtype, shape) in CONTRACT.items():
    assert batch[key].dtype == dtype, key
    assert batch[key].shape == (16,) + shape, key
  assert (batch["token_type_ids"] == 0).all()
  assert ((batch["visual_pos"] >= 0) & (batch["visual_pos"] <= 1)).all()


def test_float16_features_are_the_float32_batch_exactly():
  """The training loop's float16 batches hold the same values, over several batches
  (so reused buffers are exercised too)."""
  wide = iter(_loader())
  half = iter(_loader(feature_dtype=np.float16))
  for _ in range(4):
    a, b = next(wide), next(half)
    assert set(a) == set(b)
    for key in a:
      if key in ("visual_feats", "feat_targets"):
        assert b[key].dtype == np.float16, key
        np.testing.assert_array_equal(b[key].astype(np.float32), a[key], err_msg=key)
      else:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
  with pytest.raises(ValueError, match="feature_dtype"):
    next(iter(_loader(feature_dtype=np.int8)))


def test_padding_boxes_are_masked_and_empty():
  batch = next(iter(_loader()))
  np.testing.assert_array_equal(batch["visual_attention_mask"][:, :6], 1)
  np.testing.assert_array_equal(batch["visual_attention_mask"][:, 6:], 0)
  for key in ("visual_feats", "feat_targets", "visual_pos", "obj_labels", "obj_conf",
              "attr_labels", "attr_conf", "feat_mask"):
    assert (batch[key][:, 6:] == 0).all(), key


def test_matched_pairs_keep_their_sentence_and_mismatched_take_another_images():
  data_dir = tiny_data()
  records = store.Records(data_dir, "pretrain", layout.PRETRAIN_SPLITS)
  recs = [records[i] for i in range(len(records))]
  tok = tokenization.make_tokenizer("bert")
  framed = [tok.encode(r["sent"].decode(), T)[0] for r in recs]
  images = np.array([(r["feat_set"], r["feat_index"]) for r in recs])
  out = _in_order(mask_prob=0.0, obj_mask_prob=0.0)
  assert len(out["ans"]) == len(recs)
  matched = out["matched_label"] == 1
  assert 0.35 < matched.mean() < 0.65
  for i in range(len(recs)):
    if matched[i]:
      np.testing.assert_array_equal(out["input_ids"][i], framed[i])
    else:
      sources = [j for j, f in enumerate(framed) if (f == out["input_ids"][i]).all()]
      assert any((images[j] != images[i]).any() for j in sources), i
      assert out["ans"][i] == masking.IGNORE
  # QA targets of matched questions are one of their answers (the only one if
  # there is one); captions have none. How often each answer is drawn is
  # checked in test_qa_targets_are_drawn_in_proportion_to_the_answer_scores.
  for i in np.flatnonzero(matched):
    ids = recs[i]["ans_ids"].tolist()
    if not ids:
      assert out["ans"][i] == masking.IGNORE, i
    elif len(ids) == 1:
      assert out["ans"][i] == ids[0], i
    else:
      assert out["ans"][i] in ids, i


def test_qa_targets_are_drawn_in_proportion_to_the_answer_scores():
  """Each epoch draws a question's target afresh, answer a with probability
  score(a) / sum(scores), as the reference's `np.random.multinomial` does."""
  records = store.Records(tiny_data(), "pretrain", layout.PRETRAIN_SPLITS)
  recs = [records[i] for i in range(len(records))]
  epochs = 10
  out = _in_order(num_epochs=epochs, task_matched=False, mask_prob=0.0, obj_mask_prob=0.0)
  # Unshuffled epochs one after the other, every pair matched: [epoch, record].
  ans = out["ans"].reshape(epochs, len(recs))
  drawn_top, expected_top, variance, lower_drawn = 0, 0.0, 0.0, 0
  for i, rec in enumerate(recs):
    ids, scores = rec["ans_ids"].tolist(), rec["ans_scores"].astype(np.float64)
    if len(ids) < 2:
      np.testing.assert_array_equal(ans[:, i], ids[0] if ids else masking.IGNORE, err_msg=i)
      continue
    assert set(ans[:, i].tolist()) <= set(ids), i
    p_top = scores.max() / scores.sum()
    top = ids[int(scores.argmax())]
    drawn_top += int((ans[:, i] == top).sum())
    lower_drawn += int((ans[:, i] != top).sum())
    expected_top += epochs * p_top
    variance += epochs * p_top * (1 - p_top)
  assert variance > 0, "the corpus should have questions with several answers"
  # On this corpus, always drawing the top answer or drawing uniformly is over 6 sigma off.
  assert abs(drawn_top - expected_top) < 3.5 * np.sqrt(variance), (drawn_top, expected_top)
  assert lower_drawn > 0


def test_matching_and_qa_statistics_over_epochs():
  out = collect(_loader(num_epochs=6))
  matched = out["matched_label"] == 1
  assert abs(matched.mean() - 0.5) < 0.04
  assert (out["ans"][~matched] == masking.IGNORE).all()
  assert (out["ans"][matched] != masking.IGNORE).mean() > 0.3


def test_word_masking_statistics():
  out = collect(_loader(num_epochs=6))
  labels, ids, mask = out["masked_lm_labels"], out["input_ids"], out["attention_mask"]
  assert (labels[:, 0] == masking.IGNORE).all()
  sep = mask.sum(1) - 1
  assert (labels[np.arange(len(sep)), sep] == masking.IGNORE).all()
  assert (labels[mask == 0] == masking.IGNORE).all()
  pieces = mask.copy()
  pieces[:, 0] = 0
  pieces[np.arange(len(sep)), sep] = 0
  selected = labels != masking.IGNORE
  assert abs(selected.sum() / pieces.sum() - 0.15) < 0.02
  as_mask = (ids[selected] == 103).mean()
  kept = (ids[selected] == labels[selected]).mean()
  assert abs(as_mask - 0.8) < 0.04 and abs(kept - 0.1) < 0.03
  assert abs(1 - as_mask - kept - 0.1) < 0.03


def test_object_masking_statistics_and_targets():
  out = collect(_loader(num_epochs=6))
  real = out["visual_attention_mask"] > 0
  sel = out["feat_mask"] > 0
  assert not sel[~real].any()
  assert abs(sel.sum() / real.sum() - 0.15) < 0.02
  same = (out["visual_feats"] == out["feat_targets"]).all(-1)
  zero = (out["visual_feats"] == 0).all(-1)
  assert same[~sel].all()
  assert abs(zero[sel].mean() - 0.8) < 0.05
  assert abs((same[sel] & ~zero[sel]).mean() - 0.1) < 0.04
  replaced = sel & ~same & ~zero
  assert abs(replaced[sel].mean() - 0.1) < 0.04


def test_feature_targets_are_the_tsv_features():
  """Targets, boxes and labels are the reference TSV's, read independently of the store."""
  data_dir = tiny_data()
  records = store.Records(data_dir, "pretrain", layout.PRETRAIN_SPLITS)
  feature_sets = records.metadata["feature_sets"]
  out = _in_order()
  assert len(out["ans"]) == len(records)
  for i in range(0, len(records), 9):
    rec = records[i]
    img = tsv_images(corpus_dir(data_dir), feature_sets[rec["feat_set"]])[rec["img_id"].decode()]
    want = expected_image(img, O)
    np.testing.assert_array_equal(out["feat_targets"][i], want["features"])
    np.testing.assert_allclose(out["visual_pos"][i], want["boxes"], rtol=1e-6)
    np.testing.assert_array_equal(out["obj_labels"][i], want["objects_id"])
    np.testing.assert_array_equal(out["visual_attention_mask"][i], want["mask"])


def test_exact_random_box_mode_reads_other_images():
  out = collect(_loader(num_epochs=3, feature_bank_size=0, obj_mask_prob=0.6))
  sel = out["feat_mask"] > 0
  same = (out["visual_feats"] == out["feat_targets"]).all(-1)
  zero = (out["visual_feats"] == 0).all(-1)
  assert (sel & ~same & ~zero).sum() > 20


def test_deterministic_for_a_seed():
  a = collect(_loader(), max_batches=3)
  b = collect(_loader(), max_batches=3)
  c = collect(_loader(seed=12), max_batches=3)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["input_ids"], c["input_ids"])


def test_resume_from_saved_iterator_state():
  it = iter(_loader())
  for _ in range(4):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(_loader())
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def _example_keys(out):
  return collections.Counter(
      out["input_ids"][i].tobytes() + out["feat_targets"][i].tobytes()
      for i in range(len(out["input_ids"])))


def test_host_shards_are_disjoint_and_cover_the_data():
  kwargs = dict(mask_prob=0.0, obj_mask_prob=0.0, task_matched=False, shuffle=True,
                num_epochs=1, drop_remainder=False, batch_size=8)
  everything = _example_keys(_in_order(**kwargs))
  shards = [collect(_loader(shard_index=k, shard_count=2, **kwargs)) for k in range(2)]
  # Evaluation shards are padded to the same number of full batches.
  assert len(shards[0]["ans"]) == len(shards[1]["ans"])
  keys = []
  for out in shards:
    real = out.pop("_mask") > 0
    keys.append(_example_keys({k: v[real] for k, v in out.items()}))
  assert keys[0] + keys[1] == everything
  # Training shards are equal in size: same number of steps on every host.
  train = [sum(1 for _ in _loader(shard_index=k, shard_count=2, num_epochs=1, batch_size=8))
           for k in range(2)]
  assert train[0] == train[1] > 0


def test_sources_filter_and_captions_have_no_qa_target():
  records = store.Records(tiny_data(), "pretrain", layout.PRETRAIN_SPLITS)
  num_captions = sum(records[i]["source"] in (b"mscoco", b"vg") for i in range(len(records)))
  captions = _in_order(sources=["mscoco", "vg"], task_matched=False)
  assert 0 < len(captions["ans"]) == num_captions < len(records)
  assert (captions["ans"] == masking.IGNORE).all()
  assert (captions["matched_label"] == 1).all()
  with pytest.raises(ValueError, match="unknown source"):
    _loader(sources=["visual7w"])


def test_retokenizes_with_another_vocabulary(tmp_path):
  data_dir = tiny_data()
  corpus = f"{data_dir}/corpus/lxmert/mscoco_train.json"
  spm = tokenization.train_sentencepiece([corpus], 120, str(tmp_path / "m"))
  batch = next(iter(_loader(tokenizer=spm)))
  assert (batch["input_ids"][:, 0] == spm.cls_id).all()
  assert batch["input_ids"].max() < spm.vocab_size
  assert (batch["input_ids"] == spm.mask_id).any()


def test_worker_processes_give_the_same_batches():
  a = collect(_loader(), max_batches=2)
  b = collect(_loader(worker_count=1), max_batches=2)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_float16_to_float32_is_exact_for_every_finite_value():
  every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
  finite = every[np.isfinite(every)]
  for values in (finite, np.abs(finite), finite.reshape(-1, 32)[:, ::3]):
    got = common.to_float32(values)
    np.testing.assert_array_equal(got.view(np.uint32),
                                  values.astype(np.float32).view(np.uint32))
