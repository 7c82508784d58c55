"""The built-in corpus: reference formats, learnable signal, one-call demo data."""

import json
import os
import re

import numpy as np
import pytest

from lxmert_jax.data.prepare import annotations
from lxmert_jax.data import build_demo_data
from lxmert_jax.data import layout
from lxmert_jax.data import make_pretrain_loader
from lxmert_jax.data.prepare import synthetic_corpus as sc
from lxmert_jax.data.prepare import synthetic_scenes as scenes
from lxmert_jax.data import tokenization
from lxmert_jax.data.prepare import tsv_features
from test_data_support import TINY, collect, corpus_dir, tiny_data, tsv_images


def test_reference_file_formats():
  root = corpus_dir(tiny_data())
  for set_name in ("train2014", "val2014", "vg_gqa", "gqa_testdev", "nlvr2_train"):
    path = os.path.join(root, layout.FEATURE_FILES[set_name])
    row = next(tsv_features.iter_rows(path))
    assert len(row.fields) == len(tsv_features.FIELDNAMES)
    img = tsv_features.decode_row(row, path)
    assert img.features.shape == (TINY["num_boxes"], TINY["feature_dim"])
    assert img.objects_id.dtype == np.int64 and img.boxes.dtype == np.float32
    assert (img.features >= 0).all()
  train = annotations.load_json(os.path.join(root, "lxmert", "mscoco_train.json"))
  assert set(train[0]) == {"img_id", "sentf", "labelf"}
  sources = {s for d in train for s in d["sentf"]}
  assert sources == {"mscoco", "vqa", "vg", "gqa"}
  assert all(set(d["labelf"]) <= {"vqa", "gqa"} for d in train)
  all_ans = annotations.load_json(os.path.join(root, "lxmert", "all_ans.json"))
  assert all(set(a) == {"ans", "dsets"} for a in all_ans)
  vqa = annotations.load_json(os.path.join(root, "vqa", "train.json"))
  assert {"question_id", "img_id", "sent", "label", "answer_type", "question_type"} <= set(vqa[0])
  nlvr2 = annotations.load_json(os.path.join(root, "nlvr2", "train.json"))
  first = nlvr2[0]
  assert first["img0"] == first["identifier"].rsplit("-", 1)[0] + "-img0"


def test_sentences_use_whole_words_of_the_bert_vocab():
  root = corpus_dir(tiny_data())
  tok = tokenization.make_tokenizer("bert")
  train = annotations.load_json(os.path.join(root, "lxmert", "mscoco_train.json"))
  sents = [s for d in train for ss in d["sentf"].values() for s in ss]
  pieces = [p for ids in tok.tokenize_ids(sents) for p in ids]
  assert tok.unk_id not in pieces
  words = set(scenes.COLOURS + scenes.SIZES + scenes.MATERIALS + scenes.OBJECT_CLASSES)
  assert all(tok.token_to_id(w) is not None for w in words)


def test_features_reveal_class_and_colour():
  root = corpus_dir(tiny_data())
  images = [*tsv_images(root, "train2014").values(), *tsv_images(root, "vg_gqa").values()]
  x = np.concatenate([im.features for im in images])
  cls = np.concatenate([im.objects_id for im in images])
  colour = np.concatenate([im.attrs_id for im in images])
  half = len(x) // 2
  for labels, num in ((cls, len(scenes.OBJECT_CLASSES)), (colour, len(scenes.COLOURS))):
    # A least-squares linear probe fit on half the boxes, scored on the rest.
    onehot = np.eye(num)[labels[:half]]
    xb = np.c_[x, np.ones(len(x))]
    w, *_ = np.linalg.lstsq(xb[:half], onehot, rcond=None)
    accuracy = ((xb[half:] @ w).argmax(1) == labels[half:]).mean()
    assert accuracy > 3.0 / num, (num, accuracy)


@pytest.mark.slow
@pytest.mark.parametrize("corpus_options", [{}, {"caption_style": "inventory", "max_objects": 3}],
                         ids=["relations", "inventory"])
def test_matching_needs_both_text_and_image_on_unseen_images(corpus_options):
  """Ridge probes fit on pre-training batches, scored on images they never saw: a
  bilinear one (bag of word ids x mean RoI feature) tells matched from mismatched
  pairs; one on the words alone, or on the image alone, does not.

  So the matching head has no text-only (or image-only) shortcut: a mismatched
  sentence is a true sentence of another image, drawn from the same distribution.
  """
  data_dir = tiny_data(num_images=80, feature_dim=64, **corpus_options)

  def batches(split, seed):
    return collect(make_pretrain_loader(data_dir, split, batch_size=16, seed=seed,
                                        num_objects=TINY["num_boxes"], shard_index=0,
                                        shard_count=1, num_epochs=6, mask_prob=0.0,
                                        obj_mask_prob=0.0))

  fit, held_out = batches("mscoco_train+vgnococo", 0), batches("mscoco_minival", 1)
  vocab = np.unique(np.concatenate([fit["input_ids"].ravel(), held_out["input_ids"].ravel()]))

  def parts(b):
    words = np.zeros((len(b["input_ids"]), len(vocab)))
    for i, row in enumerate(b["input_ids"]):
      np.add.at(words[i], np.searchsorted(vocab, row), 1.0)
    mask = b["visual_attention_mask"][..., None]
    image = (b["visual_feats"] * mask).sum(1) / mask.sum(1)
    ones = np.ones((len(words), 1))
    return np.c_[words, ones], np.c_[image, ones]

  def probe_accuracy(features):
    x, x_new = features(parts(fit)), features(parts(held_out))
    w = np.linalg.solve(x.T @ x + 30.0 * np.eye(x.shape[1]),
                        x.T @ (2.0 * fit["matched_label"] - 1))
    return ((x_new @ w > 0) == held_out["matched_label"]).mean()

  bilinear = probe_accuracy(
      lambda p: np.einsum("bi,bj->bij", p[0], p[1]).reshape(len(p[0]), -1))
  text_only, image_only = probe_accuracy(lambda p: p[0]), probe_accuracy(lambda p: p[1])
  assert 0.4 < held_out["matched_label"].mean() < 0.6
  assert bilinear > 0.7, bilinear
  assert text_only < 0.58 and image_only < 0.58, (text_only, image_only)


def test_answers_and_captions_are_true_of_their_image():
  root = corpus_dir(tiny_data())
  images = {**tsv_images(root, "train2014"), **tsv_images(root, "val2014"),
            **tsv_images(root, "vg_gqa")}
  train = annotations.load_json(os.path.join(root, "lxmert", "mscoco_train.json"))
  colour_q = re.compile(r"what color is the (\w+) \?")
  mentioned = re.compile(r"(" + "|".join(scenes.COLOURS) + r") (?:\w+ )?(" +
                         "|".join(scenes.OBJECT_CLASSES) + r")\b")
  checked, own_hits, other_hits = 0, [], []
  ids = list(images)
  rng = np.random.default_rng(0)
  for datum in train:
    img = images[datum["img_id"]]
    pairs = {(scenes.COLOURS[a], scenes.OBJECT_CLASSES[c]) for a, c in zip(img.attrs_id, img.objects_id)}
    for sent, label in zip(datum["sentf"].get("vqa", []), datum["labelf"].get("vqa", [])):
      m = colour_q.fullmatch(sent)
      if m:
        best = max(label, key=label.get)
        assert (best, m.group(1)) in pairs
        checked += 1
    other = images[ids[rng.integers(len(ids))]]
    other_pairs = {(scenes.COLOURS[a], scenes.OBJECT_CLASSES[c])
                   for a, c in zip(other.attrs_id, other.objects_id)}
    for caption in datum["sentf"]["mscoco"]:
      for found in mentioned.findall(caption):
        own_hits.append(found in pairs)
        if other.img_id != img.img_id:
          other_hits.append(found in other_pairs)
  assert checked > 0
  # Captions describe their own image; another image rarely has those objects.
  assert np.mean(own_hits) == 1.0 and np.mean(other_hits) < 0.3


def test_inventory_captions_name_every_object_of_their_image():
  root = corpus_dir(tiny_data(caption_style="inventory", max_objects=3))
  images = {**tsv_images(root, "train2014"), **tsv_images(root, "vg_gqa")}
  phrase = re.compile(r"(" + "|".join(scenes.COLOURS) + r") (" +
                      "|".join(scenes.OBJECT_CLASSES) + r")\b")
  checked = 0
  for datum in annotations.load_json(os.path.join(root, "lxmert", "mscoco_train.json")):
    img = images[datum["img_id"]]
    objects = sorted((scenes.COLOURS[a], scenes.OBJECT_CLASSES[c])
                     for a, c in zip(img.attrs_id, img.objects_id))
    for caption in datum["sentf"]["mscoco"] + datum["sentf"].get("vg", []):
      named = phrase.findall(caption)
      assert 2 <= len(named) <= 3, caption
      # Every box is an object or a duplicate of one: the caption names each once.
      assert set(named) == set(objects), (caption, objects)
      checked += 1
  assert checked > 0


def test_unknown_caption_style_is_refused(tmp_path):
  with pytest.raises(ValueError, match="caption_style='poems'.*relations"):
    sc.build_synthetic_corpus(str(tmp_path / "corpus"), num_images=8, caption_style="poems")


def test_nlvr2_labels_are_balanced_enough():
  root = corpus_dir(tiny_data())
  labels = [d["label"] for d in annotations.load_json(os.path.join(root, "nlvr2", "train.json"))]
  assert 0.2 < np.mean(labels) < 0.8


def test_build_demo_data_is_idempotent(tmp_path):
  data_dir = str(tmp_path / "demo")
  args = dict(num_images=8, seed=1, feature_dim=4, num_boxes=3, tasks=("pretrain",))
  assert build_demo_data(data_dir, **args) == data_dir
  marker = os.path.join(data_dir, sc.DEMO_MARKER)
  stamp = os.stat(marker).st_mtime_ns
  build_demo_data(data_dir, **args)
  assert os.stat(marker).st_mtime_ns == stamp
  assert json.load(open(marker))["num_images"] == 8
  with pytest.raises(ValueError, match="built with"):
    build_demo_data(data_dir, **dict(args, seed=2))
  # An interrupted build (no marker) is completed by the next call.
  os.remove(marker)
  build_demo_data(data_dir, **args)
  assert os.path.exists(marker)


def test_cli_writes_the_corpus(tmp_path, capsys):
  out = str(tmp_path / "corpus")
  assert sc.main(["--out", out, "--num-images", "8", "--feature-dim", "4", "--num-boxes", "3"]) == 0
  assert "python -m lxmert_jax.data.prepare all" in capsys.readouterr().out
  assert os.path.exists(os.path.join(out, layout.FEATURE_FILES["vg_gqa"]))
  with pytest.raises(ValueError):
    sc.build_synthetic_corpus(str(tmp_path / "x"), num_images=3)
