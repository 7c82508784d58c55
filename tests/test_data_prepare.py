"""Preparation: reference TSV/JSON -> ArrayRecord datasets, faithfully and atomically."""

import json
import os

import numpy as np
import pytest

from lxmert_jax.data.prepare import annotations
from lxmert_jax.data import layout
from lxmert_jax.data import prepare
from lxmert_jax.data.prepare import feature_sets
from lxmert_jax.data import store
from lxmert_jax.data.prepare import synthetic_scenes
from lxmert_jax.data import tfds_builders
from lxmert_jax.data import tokenization
from lxmert_jax.data.prepare import tsv_features
from test_data_support import corpus_dir, tiny_data


def test_features_match_the_tsv_and_the_index():
  data_dir = tiny_data()
  tsv = os.path.join(corpus_dir(data_dir), layout.FEATURE_FILES["train2014"])
  meta = store.features_metadata(data_dir, "train2014")
  src = tfds_builders.open_split(layout.features_path(data_dir, "train2014"), "images")
  rows = list(tsv_features.iter_rows(tsv))
  assert len(src) == len(rows) == meta["num_images"] == len(meta["img_index"])
  assert meta["feature_dim"] == 16 and meta["source_file"] == os.path.abspath(tsv)
  for row in rows:
    img = tsv_features.decode_row(row, tsv)
    rec = src[meta["img_index"][img.img_id]]
    assert rec["img_id"].decode() == img.img_id
    assert rec["features"].dtype == np.float16
    np.testing.assert_array_equal(rec["features"], img.features.astype(np.float16))
    expected = img.boxes / np.array([img.img_w, img.img_h] * 2, np.float32)
    np.testing.assert_allclose(rec["boxes"], expected, rtol=1e-6)
    assert ((rec["boxes"] >= -1e-5) & (rec["boxes"] <= 1 + 1e-5)).all()
    np.testing.assert_array_equal(rec["objects_id"], img.objects_id)
    np.testing.assert_array_equal(rec["attrs_conf"], img.attrs_conf)


def _reference_flattening(entries):
  """The reference's `LXMERTTorchDataset` loop: per image, per source, per sentence.

  Written out here from the reference (not with the package's own
  `annotations.flatten_pretrain`) so the records are checked against it.
  """
  out = []
  for datum in entries:
    for source, sents in datum["sentf"].items():
      labels = datum["labelf"].get(source)
      for i, sent in enumerate(sents):
        out.append({"uid": "%s_%s_%03d" % (datum["img_id"], source, i),
                    "img_id": datum["img_id"], "source": source, "sent": sent,
                    "label": None if labels is None else labels[i]})
  return out


def test_pretrain_records_follow_the_reference_flattening():
  data_dir = tiny_data()
  ann = os.path.join(corpus_dir(data_dir), "lxmert")
  meta = store.task_metadata(data_dir, "pretrain")
  with open(os.path.join(ann, "all_ans.json"), encoding="utf-8") as f:
    assert meta["answers"] == [a["ans"] for a in json.load(f)]
  table = annotations.AnswerTable(meta["answers"])
  tok = tokenization.make_tokenizer("bert")
  assert meta["tokenizer"]["fingerprint"] == tok.fingerprint
  assert meta["num_object_labels"] == len(synthetic_scenes.OBJECT_CLASSES)
  assert meta["num_attr_labels"] == len(synthetic_scenes.ATTRIBUTES)
  for split in layout.PRETRAIN_SPLITS:
    with open(os.path.join(ann, f"{split}.json"), encoding="utf-8") as f:
      data = _reference_flattening(json.load(f))
    records = store.Records(data_dir, "pretrain", [split])
    assert len(records) == len(data) == meta["num_examples"][split]
    index = np.load(os.path.join(layout.task_path(data_dir, "pretrain"), f"{split}.index.npz"))
    set_name = layout.SPLIT_FEATURES["pretrain"][split]
    img_index = store.features_metadata(data_dir, set_name)["img_index"]
    for i in range(0, len(data), 7):
      rec, datum = records[i], data[i]
      assert rec["uid"].decode() == datum["uid"]
      assert rec["img_id"].decode() == datum["img_id"]
      assert rec["sent"].decode() == datum["sent"]
      assert meta["feature_sets"][rec["feat_set"]] == set_name
      assert rec["feat_index"] == img_index[datum["img_id"]] == index["feat_index"][i]
      assert meta["sources"][index["source"][i]] == datum["source"]
      assert rec["token_ids"].tolist() == tok.tokenize_ids([datum["sent"]])[0]
      if datum["label"] is None:
        assert rec["has_label"] == 0 and rec["ans_ids"].size == 0
      else:
        # Pruning and answer normalisation are checked on their own, against
        # hand-worked cases, in test_data_downstream.
        pruned = table.prune_label(datum["label"])
        assert rec["has_label"] == 1
        assert rec["ans_ids"].tolist() == list(pruned)
        np.testing.assert_allclose(rec["ans_scores"], list(pruned.values()))


def test_dataset_info_reports_what_the_trainer_needs():
  info = store.dataset_info(tiny_data())
  assert info["num_qa_labels"] == len(info["answers"]) > 10
  assert info["num_object_labels"] == 16 and info["num_attr_labels"] == 18
  assert info["visual_feat_dim"] == 16 and info["vocab_size"] == 30522
  assert set(info["num_examples"]) == set(layout.PRETRAIN_SPLITS)
  assert set(info["sources"]) == {"mscoco", "vg", "vqa", "gqa"}
  vqa = store.dataset_info(tiny_data(), "vqa")
  assert vqa["num_answers"] == len(vqa["label2ans"]) > 5


def test_multi_part_features_keep_order(small_corpus, tmp_path):
  root = small_corpus
  tsv = os.path.join(root, layout.FEATURE_FILES["train2014"])
  report = feature_sets.prepare_features(str(tmp_path / "out"), "train2014", tsv,
                                             part_bytes=600, progress=False)
  meta = tfds_builders.read_metadata(report.path)
  assert len(meta["split_parts"]["images"]) > 2
  src = tfds_builders.open_split(report.path, "images")
  ids = [row.fields[0] for row in tsv_features.iter_rows(tsv)]
  assert [src[i]["img_id"].decode() for i in range(len(src))] == ids
  assert [meta["img_index"][i] for i in ids] == list(range(len(ids)))


def test_prepare_is_idempotent_and_checks_its_inputs(small_corpus, tmp_path):
  root = small_corpus
  out = str(tmp_path / "out")
  inputs = prepare.Inputs(root=root)
  opts = prepare.Options(progress=False)
  first = prepare.prepare_task("vqa", out, inputs, opts)
  assert not any(r.reused for r in first)
  second = prepare.prepare_task("vqa", out, inputs, opts)
  assert all(r.reused for r in second)
  # A features dataset prepared from another file is not silently reused.
  other = os.path.join(root, layout.FEATURE_FILES["val2014"])
  with pytest.raises(Exception, match="prepared from"):
    feature_sets.prepare_features(out, "train2014", other, progress=False)


def test_interrupted_preparation_leaves_nothing_that_looks_complete(small_corpus, tmp_path,
                                                                   monkeypatch):
  root = small_corpus
  out = str(tmp_path / "out")
  tsv = os.path.join(root, layout.FEATURE_FILES["train2014"])
  original = feature_sets._FeatureRows._record
  calls = {"n": 0}

  def crash_midway(self, row):
    calls["n"] += 1
    if calls["n"] == 5:
      raise KeyboardInterrupt
    return original(self, row)

  monkeypatch.setattr(feature_sets._FeatureRows, "_record", crash_midway)
  with pytest.raises(KeyboardInterrupt):
    feature_sets.prepare_features(out, "train2014", tsv, part_bytes=600, progress=False)
  assert not tfds_builders.is_prepared(out, tfds_builders.FEATURES_NAME, "train2014")
  monkeypatch.setattr(feature_sets._FeatureRows, "_record", original)
  # A killed process can leave its temporary directory behind: it is removed.
  stale = os.path.join(out, "lxmert_features", "train2014", "incomplete.ABC123_1.0.0")
  os.makedirs(stale, exist_ok=True)
  open(os.path.join(stale, "junk"), "w").close()
  report = feature_sets.prepare_features(out, "train2014", tsv, progress=False)
  assert not report.reused and not os.path.exists(stale)
  assert tfds_builders.is_prepared(out, tfds_builders.FEATURES_NAME, "train2014")
  assert report.written["images"] == len(list(tsv_features.iter_rows(tsv)))


def test_gqa_vocabulary_is_built_from_train_answers():
  data_dir = tiny_data()
  meta = store.task_metadata(data_dir, "gqa")
  assert meta["answer_vocab_source"] == "built from train+valid"
  gqa_dir = os.path.join(corpus_dir(data_dir), "gqa")
  train = annotations.load_json(os.path.join(gqa_dir, "train.json"))
  valid = annotations.load_json(os.path.join(gqa_dir, "valid.json"))
  answers = {a for q in train + valid for a in q["label"]}
  assert set(meta["label2ans"]) == answers
  vqa = store.task_metadata(data_dir, "vqa")
  with open(os.path.join(corpus_dir(data_dir), "vqa", "trainval_label2ans.json")) as f:
    assert vqa["label2ans"] == json.load(f)


def test_cli_prints_a_summary(small_corpus, tmp_path, capsys):
  root = small_corpus
  rc = prepare.main(["nlvr2", "--root", root, "--out", str(tmp_path / "out"), "--no-progress"])
  assert rc == 0
  out = capsys.readouterr().out
  assert "lxmert_nlvr2" in out and "train: read" in out and "skipped: nothing" in out
  assert "lxmert_features/nlvr2_valid" in out


def test_sentencepiece_tokenizer_at_preparation(small_corpus, tmp_path):
  root = small_corpus
  spm = tokenization.train_sentencepiece([os.path.join(root, "lxmert", "mscoco_train.json")],
                                         200, str(tmp_path / "spm" / "m"))
  out = str(tmp_path / "out")
  prepare.prepare_task("pretrain", out, prepare.Inputs(root=root),
                  prepare.Options(tokenizer=spm, progress=False), splits=["mscoco_train"])
  meta = store.task_metadata(out, "pretrain")
  assert meta["tokenizer"]["kind"] == "sentencepiece"
  assert meta["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
  rec = store.Records(out, "pretrain", ["mscoco_train"])[0]
  assert rec["token_ids"].max() < spm.vocab_size
