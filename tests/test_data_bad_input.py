"""Bad input: every problem is a DataError naming file, line or key; --skip-bad counts.

Each test edits its own copy of the `small_corpus` fixture (conftest.py).
"""

import json
import os

import pytest

from lxmert_jax.data import errors
from lxmert_jax.data import layout
from lxmert_jax.data import prepare
from lxmert_jax.data.prepare import feature_sets
from lxmert_jax.data import store


def _tsv(root, set_name="train2014"):
  return os.path.join(root, layout.FEATURE_FILES[set_name])


def _edit_line(path, line, edit):
  """Applies `edit(fields) -> fields or str` to a 1-based TSV line."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  new = edit(lines[line - 1].split("\t"))
  lines[line - 1] = new if isinstance(new, str) else "\t".join(new)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


def _prepare_features(root, tmp_path, **kwargs):
  return feature_sets.prepare_features(str(tmp_path / "out"), "train2014", _tsv(root),
                                           progress=False, **kwargs)


def _raises(reason, fn):
  with pytest.raises(errors.DataError) as info:
    fn()
  assert info.value.reason == reason, str(info.value)
  return str(info.value)


def test_truncated_row(small_corpus, tmp_path):
  _edit_line(_tsv(small_corpus), 3, lambda f: f[:5])
  msg = _raises(errors.TRUNCATED_ROW, lambda: _prepare_features(small_corpus, tmp_path))
  assert f"{_tsv(small_corpus)}:3" in msg and "5 tab-separated fields; expected 10" in msg


def test_bad_base64(small_corpus, tmp_path):
  _edit_line(_tsv(small_corpus), 2, lambda f: f[:9] + ["@@not*base64@@"])
  msg = _raises(errors.BAD_BASE64, lambda: _prepare_features(small_corpus, tmp_path))
  assert f"{_tsv(small_corpus)}:2" in msg and "'features'" in msg and "base64" in msg


def test_box_count_disagrees_with_arrays(small_corpus, tmp_path):
  _edit_line(_tsv(small_corpus), 4, lambda f: f[:7] + ["5"] + f[8:])
  msg = _raises(errors.BOX_COUNT_MISMATCH, lambda: _prepare_features(small_corpus, tmp_path))
  assert f"{_tsv(small_corpus)}:4" in msg and "num_boxes=5" in msg and "expected" in msg


def test_file_cut_in_the_middle_of_a_row(small_corpus, tmp_path):
  path = _tsv(small_corpus)
  with open(path, encoding="utf-8") as f:
    lines = f.read().rstrip("\n").split("\n")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines[:-1] + [lines[-1][:len(lines[-1]) - 101]]))
  with pytest.raises(errors.DataError) as info:
    _prepare_features(small_corpus, tmp_path)
  assert info.value.reason in (errors.BAD_BASE64, errors.BOX_COUNT_MISMATCH)
  assert f"{path}:{len(lines)}" in str(info.value)


def test_box_outside_the_image(small_corpus, tmp_path):
  _edit_line(_tsv(small_corpus), 2, lambda f: [f[0], "2", "2"] + f[3:])
  msg = _raises(errors.BAD_VALUE, lambda: _prepare_features(small_corpus, tmp_path))
  assert ":2" in msg and "outside" in msg


def test_duplicate_image(small_corpus, tmp_path):
  first = open(_tsv(small_corpus), encoding="utf-8").readline().rstrip("\n")
  _edit_line(_tsv(small_corpus), 3, lambda f: first)
  msg = _raises(errors.DUPLICATE_IMAGE, lambda: _prepare_features(small_corpus, tmp_path))
  assert ":3" in msg and "line 1" in msg


def test_sentence_whose_image_is_missing(small_corpus, tmp_path):
  path = os.path.join(small_corpus, "lxmert", "mscoco_train.json")
  data = json.load(open(path))
  data[2]["img_id"] = "COCO_train2014_999999999999"
  json.dump(data, open(path, "w"))
  msg = _raises(errors.MISSING_IMAGE, lambda: prepare.prepare_task(
      "pretrain", str(tmp_path / "out"), prepare.Inputs(root=small_corpus),
      prepare.Options(progress=False), splits=["mscoco_train"]))
  assert "COCO_train2014_999999999999" in msg and "mscoco_train.json[2]" in msg
  assert path in msg and "train2014" in msg


def test_answer_not_in_the_vqa_vocabulary(small_corpus, tmp_path):
  path = os.path.join(small_corpus, "vqa", "train.json")
  data = json.load(open(path))
  data[1]["label"] = {"hippogriff": 1.0}
  json.dump(data, open(path, "w"))
  msg = _raises(errors.UNKNOWN_ANSWER, lambda: prepare.prepare_task(
      "vqa", str(tmp_path / "out"), prepare.Inputs(root=small_corpus),
      prepare.Options(progress=False)))
  assert "'hippogriff'" in msg and f"question_id {data[1]['question_id']}" in msg and path in msg


def test_unreadable_json(small_corpus, tmp_path):
  path = os.path.join(small_corpus, "lxmert", "mscoco_nominival.json")
  with open(path, "w") as f:
    f.write('[{"img_id": "x", "sentf": ')
  msg = _raises(errors.BAD_JSON, lambda: prepare.prepare_task(
      "pretrain", str(tmp_path / "out"), prepare.Inputs(root=small_corpus),
      prepare.Options(progress=False)))
  assert path in msg and "line 1" in msg


def test_malformed_record_names_its_json_path(small_corpus, tmp_path):
  path = os.path.join(small_corpus, "nlvr2", "valid.json")
  data = json.load(open(path))
  data[0]["label"] = "yes"
  json.dump(data, open(path, "w"))
  msg = _raises(errors.BAD_RECORD, lambda: prepare.prepare_task(
      "nlvr2", str(tmp_path / "out"), prepare.Inputs(root=small_corpus),
      prepare.Options(progress=False)))
  assert "valid.json[0]" in msg and ".label" in msg and "expected 0 or 1" in msg


def test_skip_bad_counts_and_reports_every_reason(small_corpus, tmp_path):
  tsv = _tsv(small_corpus)
  num_rows = sum(1 for _ in open(tsv))
  _edit_line(tsv, 2, lambda f: f[:9] + ["@@"])
  _edit_line(tsv, 3, lambda f: f[:4])
  _edit_line(tsv, 5, lambda f: f[:7] + ["9"] + f[8:])
  dropped = [l.split("\t")[0] for i, l in enumerate(open(tsv)) if i + 1 in (2, 3, 5)]
  path = os.path.join(small_corpus, "lxmert", "mscoco_train.json")
  per_image = {d["img_id"]: sum(len(s) for s in d["sentf"].values()) for d in json.load(open(path))}
  reports = prepare.prepare_task("pretrain", str(tmp_path / "out"),
                                 prepare.Inputs(root=small_corpus),
                                 prepare.Options(progress=False, skip_bad=True),
                                 splits=["mscoco_train"])
  feats, pretrain = reports[0], reports[-1]
  assert feats.skipped.as_dict() == {errors.BAD_BASE64: 1, errors.TRUNCATED_ROW: 1,
                                     errors.BOX_COUNT_MISMATCH: 1}
  assert feats.read["images"] == num_rows and feats.written["images"] == num_rows - 3
  # Sentences of the dropped images are skipped as missing images, each counted.
  lost = sum(per_image[i] for i in dropped)
  assert pretrain.skipped.as_dict() == {errors.MISSING_IMAGE: lost}
  assert pretrain.written["mscoco_train"] == pretrain.read["mscoco_train"] - lost
  assert store.dataset_info(str(tmp_path / "out"))["num_examples"]["mscoco_train"] == (
      sum(per_image.values()) - lost)
  summary = prepare.summarize(reports)
  for reason in ("bad_base64: 1", "truncated_row: 1", "box_count_mismatch: 1",
                 f"missing_image: {lost}", "e.g. "):
    assert reason in summary


def test_cli_stops_with_a_located_error_or_skips(small_corpus, tmp_path, capsys):
  _edit_line(_tsv(small_corpus), 2, lambda f: f[:3])
  args = ["pretrain", "--root", small_corpus, "--out", str(tmp_path / "out"), "--splits",
          "mscoco_train", "--no-progress"]
  assert prepare.main(args) == 2
  err = capsys.readouterr().err
  assert f"{_tsv(small_corpus)}:2" in err and "truncated_row" in err and "--skip-bad" in err
  assert prepare.main(args + ["--skip-bad"]) == 0
  out = capsys.readouterr().out
  assert "truncated_row: 1" in out and "missing_image:" in out


def test_skip_log_keeps_a_few_examples():
  log = errors.SkipLog(skip_bad=True, max_examples=2)
  for i in range(5):
    log.record(errors.DataError(errors.BAD_BASE64, "bad", path="f.tsv", line=i + 1))
  assert log.total == 5 and len(log.examples[errors.BAD_BASE64]) == 2
  assert "f.tsv:1" in log.summary()
  with pytest.raises(errors.DataError):
    errors.SkipLog().record(errors.DataError(errors.BAD_JSON, "x", path="a.json"))
