"""Submission files: exact formats, read back by the evaluators' readers, never partial.

Each writer must refuse predictions that are not exactly one per question of
the split, say everything wrong in one error naming the file, and leave no
file (or the previous one untouched) when it refuses or fails.
"""

import json
import os

import numpy as np
import pytest

from lxmert_jax.evaluation import (EvaluationError, common, evaluate_nlvr2_files,
                                   load_gqa_predictions, load_nlvr2_predictions,
                                   load_vqa_results, write_gqa_submission,
                                   write_nlvr2_submission, write_vqa_submission)


def test_vqa_round_trip_and_format(tmp_path):
  path = tmp_path / "vqa_test-dev2015_lxmert_results.json"
  # Ids as ints, digit strings and numpy ints; written as ints in split order.
  write_vqa_submission(path, [("2", "two"), (np.int64(3), "red"), (1, "yes")], [1, 2, 3])
  assert path.read_bytes() == (b'[{"question_id": 1, "answer": "yes"}, '
                               b'{"question_id": 2, "answer": "two"}, '
                               b'{"question_id": 3, "answer": "red"}]\n')
  assert load_vqa_results(path) == {1: "yes", 2: "two", 3: "red"}
  # Digit-string expected ids are the same questions.
  write_vqa_submission(path, {1: "yes", 2: "two", 3: "red"}, ["1", "2", "3"])
  assert load_vqa_results(path) == {1: "yes", 2: "two", 3: "red"}


def test_gqa_round_trip_and_format(tmp_path):
  path = tmp_path / "testdev_balanced_predictions.json"
  write_gqa_submission(path, [("201", "no"), ("20", "cat \u00e9")], ["20", "201"])
  assert path.read_bytes() == (b'[{"questionId": "20", "prediction": "cat \\u00e9"}, '
                               b'{"questionId": "201", "prediction": "no"}]\n')
  assert load_gqa_predictions(path) == {"20": "cat \u00e9", "201": "no"}


def test_nlvr2_round_trip_and_format(tmp_path):
  path = tmp_path / "test1_predictions.csv"
  ids = ["test1-0-0-0", "test1-0-1-0", "test1-0-0-1", "test1-0-1-1", "test1-1-0-0",
         "test1-1-1-0"]
  predictions = [("test1-0-1-1", "False"), ("test1-0-0-0", True), ("test1-0-1-0", 0),
                 ("test1-0-0-1", 1), ("test1-1-0-0", np.bool_(False)),
                 ("test1-1-1-0", "True")]
  write_nlvr2_submission(path, predictions, ids)
  assert path.read_bytes() == (b"test1-0-0-0,True\ntest1-0-1-0,False\ntest1-0-0-1,True\n"
                               b"test1-0-1-1,False\ntest1-1-0-0,False\ntest1-1-1-0,True\n")
  assert load_nlvr2_predictions(path) == {
      "test1-0-0-0": "True", "test1-0-1-0": "False", "test1-0-0-1": "True",
      "test1-0-1-1": "False", "test1-1-0-0": "False", "test1-1-1-0": "True"}
  examples = tmp_path / "labelled.json"
  examples.write_text("".join(json.dumps({"identifier": i, "label": "True"}) + "\n"
                              for i in ids))
  assert evaluate_nlvr2_files(path, examples).accuracy == pytest.approx(3 / 6)


def test_missing_ids_are_counted_and_listed(tmp_path):
  path = tmp_path / "results.json"
  expected = list(range(1, 11))
  with pytest.raises(EvaluationError) as info:
    write_vqa_submission(path, [(1, "yes"), (2, "no")], expected)
  message = str(info.value)
  assert message.startswith(f"{path} [3]: not written: no prediction for question 3, 4, 5, 6, 7 "
                            "(and 3 more)")
  assert "every question of the split needs one (8 of 10 missing)" in message
  assert info.value.path == str(path) and info.value.key == 3
  assert not path.exists()


def test_unknown_and_repeated_ids_with_missing_ones_in_one_error(tmp_path):
  path = tmp_path / "testdev_balanced_predictions.json"
  predictions = [("q1", "a"), ("q1", "b"), ("q9", "c"), ("q2", "d"), ("q2", "d")]
  with pytest.raises(EvaluationError) as info:
    write_gqa_submission(path, predictions, ["q1", "q2", "q3"])
  message = str(info.value)
  assert "no prediction for question 'q3'" in message
  assert "(1 of 3 missing)" in message
  assert "prediction for unknown question 'q9': not in the split" in message
  assert "more than one prediction for question 'q1', 'q2' (2 repeated, 4 predictions)" in message
  assert message.startswith(f"{path} ['q3']: not written: ")
  assert not path.exists()

  with pytest.raises(EvaluationError, match=r"csv \['dev-1-0-0'\]: not written: more than one"):
    write_nlvr2_submission(tmp_path / "dev.csv", [("dev-1-0-0", True)] * 2, ["dev-1-0-0"])
  with pytest.raises(EvaluationError, match=r"\[77\]: not written: prediction for unknown "
                                            r"question 77"):
    write_vqa_submission(tmp_path / "r.json", [(1, "yes"), ("77", "no")], [1])


def test_bad_ids_and_answers_are_named(tmp_path):
  path = tmp_path / "results.json"
  with pytest.raises(EvaluationError, match=r"\['q7'\]: not written: question id must be an "
                                            r"integer or a string of digits"):
    write_vqa_submission(path, [("q7", "yes")], [7])
  with pytest.raises(EvaluationError, match=r"\[True\].*question id must be an integer"):
    write_vqa_submission(path, [(True, "yes")], [1])
  with pytest.raises(EvaluationError, match=r"\['7.0'\].*expected question id must be"):
    write_vqa_submission(path, [(7, "yes")], ["7.0"])
  with pytest.raises(EvaluationError, match=r"\[7\]: not written: answer must be a string, "
                                            r"got int 3"):
    write_vqa_submission(path, [(7, 3)], [7])
  with pytest.raises(EvaluationError, match=r"\[12\]: not written: question id must be a "
                                            r"string \(GQA ids are strings"):
    write_gqa_submission(path, [(12, "yes")], ["12"])
  with pytest.raises(EvaluationError, match=r"predictions\[1\] must be an \(id, answer\) pair"):
    write_gqa_submission(path, [("1", "yes"), "2"], ["1", "2"])
  with pytest.raises(EvaluationError, match="expected_ids is empty"):
    write_gqa_submission(path, [], [])
  for bad in ("true", "yes", 2, 1.0, None):
    with pytest.raises(EvaluationError, match=r"\['dev-1-0-0'\]: not written: prediction must "
                                              r"be a bool, 1/0 or 'True'/'False'"):
      write_nlvr2_submission(path, [("dev-1-0-0", bad)], ["dev-1-0-0"])
  with pytest.raises(EvaluationError, match=r"\['dev,1'\]: not written: identifier must be"):
    write_nlvr2_submission(path, [("dev,1", True)], ["dev,1"])
  assert not path.exists()


def test_a_refused_or_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  write_vqa_submission(path, [(1, "yes")], [1])
  before = path.read_bytes()
  with pytest.raises(EvaluationError):
    write_vqa_submission(path, [(1, "no")], [1, 2])
  assert path.read_bytes() == before

  def failing_replace(source, target):
    raise OSError(f"cannot rename {source} to {target}")

  monkeypatch.setattr(common.os, "replace", failing_replace)
  with pytest.raises(OSError, match="cannot rename"):
    write_vqa_submission(path, [(1, "no")], [1])
  monkeypatch.undo()
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["results.json"]      # no temporary file left behind


def test_parent_directories_are_created(tmp_path):
  path = tmp_path / "submissions" / "gqa" / "testdev_balanced_predictions.json"
  write_gqa_submission(path, [("1", "yes")], ["1"])
  assert load_gqa_predictions(path) == {"1": "yes"}
