"""VQA / GQA / NLVR2 batches, evaluation padding, metrics, answer tables."""

import collections
import os

import numpy as np
import pytest

from lxmert_jax.data.prepare import annotations
from lxmert_jax.data import make_downstream_loader
from lxmert_jax.data import store
from test_data_support import collect, corpus_dir, expected_image, tiny_data, tsv_images

T, O = 20, 6


def _loader(task, split, train, **kwargs):
  return make_downstream_loader(task, tiny_data(), split, batch_size=4, seed=0, train=train,
                                num_objects=O, shard_index=0, shard_count=1, **kwargs)


@pytest.mark.parametrize("task", ["vqa", "gqa"])
def test_question_batch_contract(task):
  num_answers = store.dataset_info(tiny_data(), task)["num_answers"]
  batch = next(iter(_loader(task, "train", True)))
  expected = {"input_ids": (np.int32, (4, T)), "attention_mask": (np.int32, (4, T)),
              "token_type_ids": (np.int32, (4, T)), "visual_feats": (np.float32, (4, O, 16)),
              "visual_pos": (np.float32, (4, O, 4)), "visual_attention_mask": (np.int32, (4, O)),
              "answer_targets": (np.float32, (4, num_answers))}
  assert {k: (v.dtype, v.shape) for k, v in batch.items()} == expected


def test_nlvr2_batch_contract():
  batch = next(iter(_loader("nlvr2", "train", True)))
  expected = {"input_ids": (np.int32, (4, T)), "attention_mask": (np.int32, (4, T)),
              "token_type_ids": (np.int32, (4, T)), "visual_feats": (np.float32, (4, 2, O, 16)),
              "visual_pos": (np.float32, (4, 2, O, 4)),
              "visual_attention_mask": (np.int32, (4, 2, O)), "label": (np.int32, (4,))}
  assert {k: (v.dtype, v.shape) for k, v in batch.items()} == expected


@pytest.mark.parametrize("task,split", [("vqa", "minival"), ("gqa", "testdev"),
                                        ("nlvr2", "valid")])
def test_evaluation_keeps_every_example_once(task, split):
  records = store.Records(tiny_data(), task, [split])
  key = "identifier" if task == "nlvr2" else "question_id"
  want = collections.Counter(records[i][key].decode() for i in range(len(records)))
  batches = list(_loader(task, split, False))
  assert all(b["input_ids"].shape[0] == 4 for b in batches)
  out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  real = out["_mask"] > 0
  assert out["_mask"].dtype == np.float32 and real.sum() == len(records)
  assert collections.Counter(out["question_id"][real].tolist()) == want
  assert out["question_id"].dtype.kind == "U"


def test_soft_targets_follow_the_labels():
  data_dir = tiny_data()
  label2ans = store.dataset_info(data_dir, "vqa")["label2ans"]
  raw = annotations.load_json(os.path.join(corpus_dir(data_dir), "vqa", "minival.json"))
  by_id = {str(q["question_id"]): q["label"] for q in raw}
  out = collect(_loader("vqa", "minival", False))
  assert sorted(out["question_id"][out["_mask"] > 0]) == sorted(by_id)
  for qid, targets, real in zip(out["question_id"], out["answer_targets"], out["_mask"]):
    if real:
      expected = np.zeros(len(label2ans), np.float32)
      for ans, score in by_id[qid].items():
        expected[label2ans.index(ans)] = score
      np.testing.assert_allclose(targets, expected)


def test_gqa_answers_outside_the_vocabulary_are_skipped():
  data_dir = tiny_data()
  label2ans = store.dataset_info(data_dir, "gqa")["label2ans"]
  raw = annotations.load_json(os.path.join(corpus_dir(data_dir), "gqa", "testdev.json"))
  gold = {q["question_id"]: next(iter(q["label"])) for q in raw}
  assert any(a not in label2ans for a in gold.values())
  out = collect(_loader("gqa", "testdev", False))
  for qid, targets in zip(out["question_id"], out["answer_targets"]):
    ans = gold[qid]
    assert targets.sum() == (1.0 if ans in label2ans else 0.0)
  # Exact match via the targets (the GQA task's accuracy) equals string
  # comparison with the gold answer, for the targets' own argmax and for
  # predictions that are often wrong.
  real = out["_mask"] > 0
  rng = np.random.default_rng(0)
  guesses = np.where(rng.random(len(real)) < 0.5, out["answer_targets"].argmax(1),
                     rng.integers(0, len(label2ans), len(real)))
  for pred in (out["answer_targets"].argmax(1), guesses):
    strings = [label2ans[p] for p in pred]
    expected = np.mean([s == gold[q] for s, q, r in zip(strings, out["question_id"], real)
                        if r])
    assert 0 < expected < 1
    by_targets = out["answer_targets"][np.arange(len(pred)), pred] > 0
    assert np.mean(by_targets[real]) == pytest.approx(expected)


def test_nlvr2_pairs_and_labels():
  """Labels and both images of each statement are the reference files' (JSON and TSV)."""
  data_dir = tiny_data()
  raw = annotations.load_json(os.path.join(corpus_dir(data_dir), "nlvr2", "valid.json"))
  by_id = {d["identifier"]: d for d in raw}
  images = tsv_images(corpus_dir(data_dir), "nlvr2_valid")
  out = collect(_loader("nlvr2", "valid", False))
  real = out["_mask"] > 0
  assert collections.Counter(out["question_id"][real].tolist()) == collections.Counter(
      d["identifier"] for d in raw)
  for i, qid in enumerate(out["question_id"]):
    datum = by_id[qid]
    assert out["label"][i] == datum["label"], qid
    for k in (0, 1):
      want = expected_image(images[datum[f"img{k}"]], O)
      np.testing.assert_array_equal(out["visual_feats"][i, k], want["features"])
      np.testing.assert_allclose(out["visual_pos"][i, k], want["boxes"], rtol=1e-6)
      np.testing.assert_array_equal(out["visual_attention_mask"][i, k], want["mask"])


def test_downstream_sharding_and_resume():
  shards = [collect(make_downstream_loader("vqa", tiny_data(), "train", batch_size=4, seed=0,
                                          train=False, num_objects=O, shard_index=k,
                                          shard_count=2)) for k in range(2)]
  ids = [set(s["question_id"][s["_mask"] > 0]) for s in shards]
  assert not ids[0] & ids[1]
  assert len(ids[0] | ids[1]) == len(store.Records(tiny_data(), "vqa", ["train"]))
  it = iter(_loader("vqa", "train", True))
  next(it)
  state = it.get_state()
  want = next(it)
  again = iter(_loader("vqa", "train", True))
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["input_ids"], want["input_ids"])


def test_convert_ans_and_label_pruning():
  assert annotations.convert_ans("Two.") == "2"
  assert annotations.convert_ans("the man") == "man"
  assert annotations.convert_ans("A Red Cube") == "red cube"
  assert annotations.convert_ans("an apple") == "apple"
  assert annotations.convert_ans("Grey") == "gray"
  assert annotations.convert_ans("") == ""
  table = annotations.AnswerTable(["2", "red", "man", "gray"])
  assert table.prune_label({"two": 0.9, "blue": 1.0, "Red.": 0.3}) == {0: 0.9, 1: 0.3}
  # Two spellings of one answer: the later one's score wins, as in the reference.
  assert table.prune_label({"2": 0.3, "two": 1.0}) == {0: 1.0}
  assert table.prune_label({"zebra": 1.0}) == {}


def test_answer_vocab_helpers(tmp_path):
  vocab = annotations.build_answer_vocab([{"b": 1.0, "a": 0.3}, {"b": 1.0}, None, {"c": 1}])
  assert vocab == ["b", "a", "c"]
  (tmp_path / "a2l.json").write_text('{"yes": 0, "no": 1}')
  (tmp_path / "l2a.json").write_text('["yes", "no"]')
  assert annotations.load_answer_vocab(str(tmp_path / "a2l.json"),
                                       str(tmp_path / "l2a.json")) == ["yes", "no"]
  (tmp_path / "l2a.json").write_text('["no", "yes"]')
  with pytest.raises(Exception, match="disagrees"):
    annotations.load_answer_vocab(str(tmp_path / "a2l.json"), str(tmp_path / "l2a.json"))
