"""Users' own `.npz` features + questions -> a VQA-style dataset the loaders read.

The files are written here as bottom-up-attention.pytorch's
`utils/extract_utils.py:save_roi_features` writes them (`np.savez_compressed`
with `x`, `bbox`, `num_bbox`, `image_h`, `image_w` and `info` a dict), and
what the loader yields is checked against the same images stored through the
reference TSV path and against expectations worked out from the pixels.
"""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from lxmert_jax.data import errors
from lxmert_jax.data import layout
from lxmert_jax.data import make_downstream_loader
from lxmert_jax.data import prepare
from lxmert_jax.data import store
from lxmert_jax.data import tfds_builders
from lxmert_jax.data import tokenization
from lxmert_jax.data.prepare import feature_sets
from lxmert_jax.data.prepare import npz_features
from lxmert_jax.data.prepare import tsv_features
from test_data_support import collect, expected_image

F, O = 8, 6
BOXES = (3, 7, 5, 6, 4)  # 7 > O: cut; the others are padded
NUM_CLASSES, NUM_ATTRS = 20, 10


def _image(img_id, n, rng, feature_dim=F):
  """One image as the extractor computes it (labels from class scores, boxes in pixels)."""
  h, w = int(rng.integers(200, 500)), int(rng.integers(200, 640))
  x1, y1 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
  boxes = np.stack([x1, y1, rng.uniform(x1 + 1, w - 1), rng.uniform(y1 + 1, h - 1)], 1)
  scores = rng.random((n, NUM_CLASSES + 1)).astype(np.float32)
  attr_scores = rng.random((n, NUM_ATTRS + 1)).astype(np.float32)
  return tsv_features.ImageFeatures(
      img_id=img_id, img_h=h, img_w=w,
      objects_id=np.argmax(scores[:, 1:], axis=1), objects_conf=np.max(scores[:, 1:], axis=1),
      attrs_id=np.argmax(attr_scores[:, 1:], axis=1),
      attrs_conf=np.max(attr_scores[:, 1:], axis=1),
      boxes=boxes.astype(np.float32),
      features=rng.uniform(0, 4, (n, feature_dim)).astype(np.float32))


def _save(directory, img, *, labels="attrs", **override):
  """`save_roi_features`' np.savez_compressed call; `override` replaces or drops (None) keys."""
  contents = {"image_id": img.img_id, "image_h": img.img_h, "image_w": img.img_w,
              "num_boxes": img.num_boxes, "objects_id": img.objects_id,
              "objects_conf": img.objects_conf}
  if labels == "attrs":
    contents.update(attrs_id=img.attrs_id, attrs_conf=img.attrs_conf)
  arrays = {"x": img.features, "bbox": img.boxes, "num_bbox": img.num_boxes,
            "image_h": img.img_h, "image_w": img.img_w}
  if labels is not None:
    arrays["info"] = contents
  arrays.update(override)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  path = os.path.join(directory, img.img_id.split(".")[0])
  np.savez_compressed(path, **arrays)
  return path + ".npz"


def _images(seed=0):
  rng = np.random.default_rng(seed)
  return [_image(f"img{k:03d}", n, rng) for k, n in enumerate(BOXES)]


def _folder(tmp_path, images, name="feats"):
  directory = tmp_path / name
  directory.mkdir()
  for img in reversed(images):  # Written out of order: the reader sorts.
    _save(str(directory), img)
  return str(directory)


def _questions(tmp_path, name, entries):
  path = str(tmp_path / f"{name}.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(entries, f)
  return path


ANSWERS = ["red", "blue", "two", "yes", "no"]


def _qa(images, seed, labelled=True):
  rng = np.random.default_rng(seed)
  out = []
  for k, img in enumerate(images):
    q = {"question_id": seed * 100 + k, "img_id": img.img_id, "sent": f"what is box {k}?"}
    if labelled:
      picked = rng.choice(len(ANSWERS), 2, replace=False)
      q["label"] = {ANSWERS[picked[0]]: 1.0, ANSWERS[picked[1]]: 0.3}
    out.append(q)
  return out


def _raises(reason, fn):
  with pytest.raises(errors.DataError) as info:
    fn()
  assert info.value.reason == reason, str(info.value)
  return info.value


def _opts(**kwargs):
  return prepare.Options(progress=False, **kwargs)


def test_stored_images_are_those_of_the_tsv_path(tmp_path):
  images = _images()
  npz_dir = _folder(tmp_path, images)
  tsv = str(tmp_path / "same.tsv")
  tsv_features.write_tsv(tsv, images)
  out_npz, out_tsv = str(tmp_path / "a"), str(tmp_path / "b")
  npz_features.prepare_npz_features(out_npz, "mine", npz_dir, progress=False)
  feature_sets.prepare_features(out_tsv, "mine", tsv, progress=False)
  meta_npz = store.features_metadata(out_npz, "mine")
  meta_tsv = store.features_metadata(out_tsv, "mine")
  for key in ("img_index", "num_images", "feature_dim", "max_object_id", "max_attr_id",
              "num_boxes"):
    assert meta_npz[key] == meta_tsv[key], key
  assert meta_npz["labels_absent"] == {} and meta_npz["source_format"] == "npz"
  src_npz = tfds_builders.open_split(layout.features_path(out_npz, "mine"), "images")
  src_tsv = tfds_builders.open_split(layout.features_path(out_tsv, "mine"), "images")
  for i in range(len(images)):
    a, b = src_npz[i], src_tsv[i]
    assert set(a) == set(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_questions_load_as_a_vqa_dataset(tmp_path):
  images = _images()
  npz_dir = _folder(tmp_path, images)
  files = {"train": _questions(tmp_path, "q_train", _qa(images, 1)),
           "val": _questions(tmp_path, "q_val", _qa(images[:3], 2)),
           "test": _questions(tmp_path, "q_test", _qa(images[2:], 3, labelled=False))}
  out = str(tmp_path / "out")
  reports = prepare.prepare_npz_vqa(out, npz_dir, files, opts=_opts())
  assert [r.written for r in reports] == [{"images": 5}, {"train": 5, "val": 3, "test": 3}]
  info = store.dataset_info(out, "vqa")
  assert info["feature_sets"] == ["npz"] and info["visual_feat_dim"] == F
  assert info["num_examples"] == {"train": 5, "val": 3, "test": 3}
  label2ans = info["label2ans"]
  questions = {split: json.load(open(p, encoding="utf-8")) for split, p in files.items()}
  used = {a for split in ("train", "val") for q in questions[split] for a in q["label"]}
  assert sorted(label2ans) == sorted(used) and info["num_answers"] == len(label2ans)
  by_id = {img.img_id: img for img in images}
  tok = tokenization.make_tokenizer("bert")
  for split in files:
    batch = collect(make_downstream_loader("vqa", out, split, batch_size=2, seed=0, train=False,
                                           num_objects=O, shard_index=0, shard_count=1))
    real = batch["_mask"] > 0
    assert real.sum() == len(questions[split])
    for row, q in zip(np.flatnonzero(real), questions[split]):
      assert batch["question_id"][row] == str(q["question_id"])
      want = expected_image(by_id[q["img_id"]], O)
      np.testing.assert_array_equal(batch["visual_feats"][row], want["features"])
      np.testing.assert_allclose(batch["visual_pos"][row], want["boxes"], rtol=1e-6)
      np.testing.assert_array_equal(batch["visual_attention_mask"][row], want["mask"])
      targets = np.zeros(len(label2ans), np.float32)
      for ans, score in q.get("label", {}).items():
        targets[label2ans.index(ans)] = score
      np.testing.assert_array_equal(batch["answer_targets"][row], targets)
      pieces = tok.tokenize_ids([q["sent"]])[0]
      assert batch["input_ids"][row][1:1 + len(pieces)].tolist() == pieces
  assert not batch["answer_targets"].any()  # test: unlabelled
  # A training loader over the split works as for the official data.
  train = next(iter(make_downstream_loader("vqa", out, "train", batch_size=4, seed=0, train=True,
                                           num_objects=O, shard_index=0, shard_count=1)))
  assert train["visual_feats"].shape == (4, O, F) and train["answer_targets"].shape[1] == len(
      label2ans)


def test_answers_file_fixes_the_vocabulary(tmp_path):
  images = _images()
  npz_dir = _folder(tmp_path, images)
  answers = _questions(tmp_path, "label2ans", ["yes", "no", "red"])
  files = {"train": _questions(tmp_path, "q", _qa(images, 1))}
  out = str(tmp_path / "out")
  report = prepare.prepare_npz_vqa(out, npz_dir, files, answers=answers, opts=_opts())[-1]
  assert store.dataset_info(out, "vqa")["label2ans"] == ["yes", "no", "red"]
  outside = sum(a not in ("yes", "no", "red") for q in _qa(images, 1) for a in q["label"])
  assert f"ignored: {outside}" in report.summary()
  rec = store.Records(out, "vqa", ["train"])[0]
  label = _qa(images, 1)[0]["label"]
  assert {["yes", "no", "red"][i]: s for i, s in zip(rec["ans_ids"], rec["ans_scores"])} == {
      a: pytest.approx(s) for a, s in label.items() if a in ("yes", "no", "red")}
  with pytest.raises(errors.DataError, match="unknown_answer"):
    prepare.prepare_npz_vqa(str(tmp_path / "strict"), npz_dir, files, answers=answers,
                            opts=_opts(), strict_answers=True)


def test_missing_info_or_attributes_are_stored_as_no_label(tmp_path):
  rng = np.random.default_rng(5)
  directory = tmp_path / "feats"
  directory.mkdir()
  full, no_attrs, no_info = (_image(f"im{k}", 4, rng) for k in range(3))
  _save(str(directory), full)
  _save(str(directory), no_attrs, labels="objects")  # the extractor without attribute scores
  _save(str(directory), no_info, labels=None)
  out = str(tmp_path / "out")
  report = npz_features.prepare_npz_features(out, "npz", str(directory), progress=False)
  meta = store.features_metadata(out, "npz")
  assert meta["labels_absent"] == {"attrs_id": 2, "objects_id": 1}
  assert "images without attrs_id in info (stored as -1, confidence 0): 2" in report.summary()
  src = tfds_builders.open_split(layout.features_path(out, "npz"), "images")
  recs = {src[i]["img_id"].decode(): src[i] for i in range(3)}
  np.testing.assert_array_equal(recs["im0"]["attrs_id"], full.attrs_id)
  np.testing.assert_array_equal(recs["im1"]["objects_id"], no_attrs.objects_id)
  assert (recs["im1"]["attrs_id"] == -1).all() and (recs["im1"]["attrs_conf"] == 0).all()
  for key in ("objects_id", "attrs_id"):
    assert (recs["im2"][key] == -1).all()
  np.testing.assert_array_equal(recs["im2"]["features"], no_info.features.astype(np.float16))


class _RunsCode:
  """Unpickling this would create a directory (a stand-in for any code)."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.makedirs, (self.target,))


def test_info_is_unpickled_without_running_code(tmp_path):
  img = _images()[0]
  directory = tmp_path / "feats"
  directory.mkdir()
  marker = str(tmp_path / "was_run")
  path = _save(str(directory), img, info=np.array(_RunsCode(marker), dtype=object))
  err = _raises(errors.UNREADABLE_FILE, lambda: npz_features.read_npz(path))
  assert not os.path.exists(marker)
  assert f"{path} [info]" in str(err) and "os" in str(err)


def _bad_cases(img):
  n = img.num_boxes
  return {
      "missing x (bboxes-only file)": (errors.MISSING_KEY, "x", {"x": None}),
      "bbox of the wrong shape": (errors.BAD_FIELD, "bbox", {"bbox": img.boxes[:, :3]}),
      "num_bbox disagreeing with x": (errors.BOX_COUNT_MISMATCH, "x", {"num_bbox": n + 1}),
      "non-finite features": (errors.BAD_VALUE, "x",
                              {"x": np.where(np.eye(n, F, dtype=bool), np.nan, img.features)}),
      "non-finite boxes": (errors.BAD_VALUE, "bbox", {"bbox": img.boxes * np.inf}),
      "no image size": (errors.MISSING_KEY, "image_w", {"image_w": None, "info": None}),
      "features of Python objects": (errors.BAD_FIELD, "x",
                                     {"x": np.array([None] * n, dtype=object)}),
      "info label of the wrong length": (
          errors.BAD_FIELD, "info.objects_id",
          {"info": {"objects_id": np.zeros(n + 2, np.int64), "objects_conf": np.ones(n)}}),
      "info label without confidences": (errors.MISSING_KEY, "info.objects_conf",
                                         {"info": {"objects_id": np.zeros(n, np.int64)}}),
  }


@pytest.mark.parametrize("case", list(_bad_cases(_images()[0])))
def test_bad_file_names_the_file_and_the_key(tmp_path, case):
  img = _images()[0]
  reason, key, override = _bad_cases(img)[case]
  path = _save(str(tmp_path), img, **override)
  err = _raises(reason, lambda: npz_features.read_npz(path))
  assert err.path == path and err.key == key and f"{path} [{key}]" in str(err)


def test_box_outside_the_image_and_unreadable_files(tmp_path):
  images = _images()
  directory = _folder(tmp_path, images[:2])
  boxes = images[2].boxes.copy()
  boxes[0, 2] = images[2].img_w * 1.5
  _save(directory, images[2], bbox=boxes)
  out = str(tmp_path / "out")
  err = _raises(errors.BAD_VALUE, lambda: npz_features.prepare_npz_features(
      out, "npz", directory, progress=False))
  assert err.path.endswith("img002.npz") and "outside" in str(err)
  with open(os.path.join(directory, "img002.npz"), "wb") as f:
    f.write(b"not a zip archive")
  err = _raises(errors.UNREADABLE_FILE, lambda: npz_features.prepare_npz_features(
      out, "npz", directory, progress=False))
  assert err.path.endswith("img002.npz")
  _raises(errors.BAD_FIELD, lambda: npz_features.npz_files(str(tmp_path / "nowhere")))
  os.makedirs(tmp_path / "empty")
  _raises(errors.BAD_FIELD, lambda: npz_features.npz_files(str(tmp_path / "empty")))


def test_feature_widths_must_agree_across_files(tmp_path):
  images = _images()
  directory = _folder(tmp_path, images[:2])
  wide = _image("img009", 3, np.random.default_rng(1), feature_dim=F + 1)
  _save(directory, wide)
  err = _raises(errors.BAD_FIELD, lambda: npz_features.prepare_npz_features(
      str(tmp_path / "out"), "npz", directory, progress=False))
  assert err.key == "x" and err.path.endswith("img009.npz")
  assert f"{F + 1} wide; expected {F} like" in str(err) and "img000.npz" in str(err)


def test_skip_bad_skips_files_and_their_questions(tmp_path):
  images = _images()
  directory = _folder(tmp_path, images)
  _save(directory, images[1], x=None)
  files = {"train": _questions(tmp_path, "q", _qa(images, 1))}
  out = str(tmp_path / "out")
  err = _raises(errors.MISSING_KEY, lambda: prepare.prepare_npz_vqa(
      out, directory, files, opts=_opts()))
  assert err.path.endswith("img001.npz")
  features, questions = prepare.prepare_npz_vqa(out, directory, files,
                                                opts=_opts(skip_bad=True))
  assert features.read == {"images": 5} and features.written == {"images": 4}
  assert "missing_key: 1" in features.summary()
  assert questions.written == {"train": 4} and "missing_image: 1" in questions.summary()
  assert store.features_metadata(out, "npz")["skipped"] == {"missing_key": 1}


def test_question_whose_image_has_no_file(tmp_path):
  images = _images()
  directory = _folder(tmp_path, images[:4])
  path = _questions(tmp_path, "q_val", _qa(images, 2))
  err = _raises(errors.MISSING_IMAGE, lambda: prepare.prepare_npz_vqa(
      str(tmp_path / "out"), directory, {"val": path}, opts=_opts()))
  assert err.path == path and "question_id 204" in err.key and "'img004'" in str(err)


def test_no_labels_and_no_answers_file(tmp_path):
  images = _images()
  directory = _folder(tmp_path, images)
  path = _questions(tmp_path, "q", _qa(images, 1, labelled=False))
  err = _raises(errors.BAD_JSON, lambda: prepare.prepare_npz_vqa(
      str(tmp_path / "out"), directory, {"test": path}, opts=_opts()))
  assert path in str(err) and "answer vocabulary" in str(err)
  with pytest.raises(ValueError, match="split name 'my-split'"):
    prepare.prepare_npz_vqa(str(tmp_path / "out"), directory, {"my-split": path})


def test_parts_reuse_and_changed_features(tmp_path):
  images = _images()
  directory = _folder(tmp_path, images)
  files = {"train": _questions(tmp_path, "q", _qa(images, 1))}
  out = str(tmp_path / "out")
  first = prepare.prepare_npz_vqa(out, directory, files, opts=_opts(), part_images=2)
  meta = store.features_metadata(out, "npz")
  assert len(meta["split_parts"]["images"]) == 3
  assert meta["img_index"] == {img.img_id: i for i, img in enumerate(images)}
  assert not any(r.reused for r in first)
  assert all(r.reused for r in prepare.prepare_npz_vqa(out, directory, files, opts=_opts()))
  _save(directory, _image("img100", 3, np.random.default_rng(9)))
  with pytest.raises(errors.DataError, match="prepared from"):
    prepare.prepare_npz_vqa(out, directory, files, opts=_opts())
  again = prepare.prepare_npz_vqa(out, directory, files, opts=_opts(overwrite=True))
  assert again[0].written == {"images": 6}


def test_cli(tmp_path, capsys):
  images = _images()
  directory = _folder(tmp_path, images)
  train = _questions(tmp_path, "q_train", _qa(images, 1))
  val = _questions(tmp_path, "q_val", _qa(images[:2], 2))
  answers = _questions(tmp_path, "answers", ANSWERS)
  out = str(tmp_path / "out")
  args = ["npz", "--features", directory, "--questions", f"train={train},val={val}",
          "--answers", answers, "--out", out, "--no-progress"]
  assert prepare.main(args) == 0
  printed = capsys.readouterr().out
  assert "lxmert_features/npz" in printed and "train: read 5, written 5" in printed
  assert "val: read 2, written 2" in printed
  assert store.dataset_info(out, "vqa")["label2ans"] == ANSWERS
  assert prepare.main(args) == 0 and "reused" in capsys.readouterr().out
  os.remove(os.path.join(directory, "img000.npz"))
  assert prepare.main(args[:-1] + ["--overwrite", "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert train in err and "missing_image" in err and "--skip-bad" in err
  for bad in (["--questions", "train"], ["--questions", "a+b=" + train]):
    with pytest.raises(SystemExit):
      prepare.main(["npz", "--features", directory, "--out", out] + bad)
  assert "SPLIT=FILE" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", [2, 3])
def test_info_pickled_by_numpy_1(tmp_path, protocol):
  """Extractor files written under numpy 1.x name `numpy.core`, not `numpy._core`."""
  img = _images()[0]
  path = _save(str(tmp_path), img)
  info = np.load(path, allow_pickle=True)["info"]
  # Protocols 2 and 3 name globals as text lines, so the module can be renamed in place.
  raw = pickle.dumps(info, protocol=protocol).replace(b"cnumpy._core.multiarray\n",
                                                      b"cnumpy.core.multiarray\n")
  assert b"numpy.core.multiarray" in raw and b"numpy._core" not in raw
  npy = io.BytesIO()
  np.lib.format.write_array_header_1_0(npy, {"descr": "|O", "fortran_order": False,
                                             "shape": ()})
  npy.write(raw)
  old = str(tmp_path / "old.npz")
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
    for name in src.namelist():
      dst.writestr(name, npy.getvalue() if name == "info.npy" else src.read(name))
  read, absent = npz_features.read_npz(old)
  assert absent == []
  np.testing.assert_array_equal(read.objects_id, img.objects_id)
  np.testing.assert_array_equal(read.attrs_conf, img.attrs_conf)
