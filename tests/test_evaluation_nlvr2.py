"""NLVR2 accuracy and consistency as lil-lab/nlvr's metrics.py, on hand-made examples."""

import json

import pytest

from lxmert_jax.evaluation import EvaluationError
from lxmert_jax.evaluation import nlvr2

# Set 1, sentence 0: four image pairs, all predicted right.
# Set 1, sentence 1: two pairs (sharing pair ids with sentence 0), one wrong.
# Set 2, sentence 0: one pair, right.
EXAMPLES = [
    {"identifier": "dev-1-0-0", "label": "True"},
    {"identifier": "dev-1-1-0", "label": "False"},
    {"identifier": "dev-1-2-0", "label": "True"},
    {"identifier": "dev-1-3-0", "label": "False"},
    {"identifier": "dev-1-0-1", "label": "True"},
    {"identifier": "dev-1-1-1", "label": "True"},
    {"identifier": "dev-2-0-0", "label": "False"},
]
PREDICTIONS = {"dev-1-0-0": "True", "dev-1-1-0": "false", "dev-1-2-0": "TRUE",
               "dev-1-3-0": "False", "dev-1-0-1": "True", "dev-1-1-1": "False",
               "dev-2-0-0": "False"}


def test_sentence_key_blanks_the_pair_field():
  assert nlvr2.sentence_key("dev-850-0-1") == "dev-850--1"
  assert nlvr2.sentence_key("dev-850-3-1") == "dev-850--1"
  assert nlvr2.sentence_key("test1-7-2-0") == "test1-7--0"
  with pytest.raises(EvaluationError, match="dev-850"):
    nlvr2.sentence_key("dev-850")


def test_accuracy_and_consistency():
  scores = nlvr2.evaluate_nlvr2(PREDICTIONS, EXAMPLES)
  assert scores.accuracy == pytest.approx(6 / 7)
  assert scores.consistency == pytest.approx(2 / 3)
  assert (scores.num_examples, scores.num_sentences) == (7, 3)


def test_bool_and_integer_labels():
  lxmert_style = [{"identifier": e["identifier"], "label": int(e["label"] == "True")}
                  for e in EXAMPLES]
  as_bools = {k: v.lower() == "true" for k, v in PREDICTIONS.items()}
  scores = nlvr2.evaluate_nlvr2(as_bools, lxmert_style)
  assert (scores.accuracy, scores.consistency) == pytest.approx((6 / 7, 2 / 3))
  with pytest.raises(EvaluationError, match=r"\['dev-2-0-0'\]: label must be"):
    nlvr2.evaluate_nlvr2(PREDICTIONS, EXAMPLES[:6] + [{"identifier": "dev-2-0-0", "label": 2}])


def test_missing_and_unknown_predictions():
  short = {k: v for k, v in PREDICTIONS.items() if k != "dev-1-3-0"}
  with pytest.raises(EvaluationError, match="no prediction for example 'dev-1-3-0'"):
    nlvr2.evaluate_nlvr2(short, EXAMPLES)
  with pytest.raises(EvaluationError, match="unknown example 'dev-9-0-0'"):
    nlvr2.evaluate_nlvr2({**PREDICTIONS, "dev-9-0-0": "True"}, EXAMPLES)


def test_files(tmp_path):
  examples_file = tmp_path / "dev.json"
  examples_file.write_text("".join(json.dumps(dict(e, sentence="s")) + "\n" for e in EXAMPLES))
  csv = tmp_path / "predictions.csv"
  csv.write_text("".join(f"{k},{v}\n" for k, v in PREDICTIONS.items()) + "\n")
  scores = nlvr2.evaluate_nlvr2_files(csv, examples_file)
  assert (scores.accuracy, scores.consistency) == pytest.approx((6 / 7, 2 / 3))

  lxmert_file = tmp_path / "valid.json"
  lxmert_file.write_text(json.dumps([{"identifier": e["identifier"], "uid": f"nlvr2_{i}",
                                      "label": int(e["label"] == "True")}
                                     for i, e in enumerate(EXAMPLES)]))
  assert len(nlvr2.load_nlvr2_examples(lxmert_file)) == 7

  short = tmp_path / "short.csv"
  short.write_text("dev-1-0-0,True\n")
  with pytest.raises(EvaluationError, match=r"short\.csv \['dev-1-1-0'\]: no prediction"):
    nlvr2.evaluate_nlvr2_files(short, examples_file)
  twice = tmp_path / "twice.csv"
  twice.write_text("dev-1-0-0,True\ndev-1-0-0,False\n")
  with pytest.raises(EvaluationError, match=r"twice\.csv \['dev-1-0-0'\]: line 2"):
    nlvr2.load_nlvr2_predictions(twice)
  bad = tmp_path / "bad.csv"
  bad.write_text("dev-1-0-0\n")
  with pytest.raises(EvaluationError, match=r"bad\.csv: line 1"):
    nlvr2.load_nlvr2_predictions(bad)
