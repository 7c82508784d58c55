"""GQA metrics of the official eval.py: accuracy, binary/open, validity, consistency, etc.

A hand-made question file, with every expected figure worked out by hand from
the official script's rules.
"""

import json

import pytest

from lxmert_jax.evaluation import EvaluationError
from lxmert_jax.evaluation import gqa

_STEPS = [{"operation": "select", "argument": "cat (1)"},
          {"operation": "query", "argument": "name"}]


def _question(answer, structural, *, balanced=True, semantic="attr", detailed="colorVerify",
              words="Is the cat red?", group=None, entailed=()):
  return {"answer": answer, "isBalanced": balanced, "question": words,
          "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
          "semantic": _STEPS, "groups": {"global": group, "local": "l"},
          "entailed": list(entailed), "imageId": "n1"}


QUESTIONS = {
    "q1": _question("red", "query", semantic="attr", words="What color is it?", group="g1",
                    entailed=["q1", "q2", "q7"]),
    "q2": _question("cat", "query", semantic="cat", words="What animal is it?", group="g1"),
    "q3": _question("yes", "verify", semantic="attr", group="g2", entailed=["q7"]),
    "q4": _question("no", "logical", semantic="obj", entailed=["q3"]),
    "q5": _question("left", "choose", semantic="rel", words="Left or right?"),
    "q6": _question("yes", "compare", semantic="attr", group="g2", entailed=["q6"]),
    "q7": _question("no", "verify", balanced=False),
}
PREDICTIONS = {"q1": "red", "q2": "dog", "q3": "yes", "q4": "yes", "q5": "left", "q6": "yes",
               "q7": "no"}


def test_accuracy_and_binary_open():
  balanced_only = {k: v for k, v in PREDICTIONS.items() if k != "q7"}
  scores = gqa.evaluate_gqa(balanced_only, QUESTIONS)
  # Balanced q1..q6: right 1, 3, 5, 6. Open = structural "query" only (q1, q2);
  # verify, logical, choose and compare are binary.
  assert scores.num_questions == 6
  assert scores.accuracy == pytest.approx(400 / 6)
  assert scores.open == 50.0
  assert scores.binary == 75.0
  assert scores.per_structural_type == {"query": (50.0, 2), "verify": (100.0, 1),
                                        "logical": (0.0, 1), "choose": (100.0, 1),
                                        "compare": (100.0, 1)}
  assert scores.per_semantic_type == {"attr": (100.0, 3), "cat": (0.0, 1), "obj": (0.0, 1),
                                      "rel": (100.0, 1)}
  assert scores.per_length == {4: (60.0, 5), 3: (100.0, 1)}
  assert scores.per_steps == {1: (pytest.approx(400 / 6), 6)}
  assert scores.validity is None and scores.plausibility is None
  assert scores.consistency is None


def test_distribution_chi_square():
  # g1: gold {red: 1, cat: 1}, predicted {red: 1, dog: 1}: (1-1)^2/1 + (0-1)^2/1 = 1,
  # weight 2. g2: gold {yes: 2}, predicted {yes: 2}: 0, weight 2. (1*2 + 0*2) / 4 / 100.
  scores = gqa.evaluate_gqa(PREDICTIONS, QUESTIONS)
  assert scores.distribution == pytest.approx(0.005)
  no_groups = {k: dict(v, groups={"global": None}) for k, v in QUESTIONS.items()}
  assert gqa.evaluate_gqa(PREDICTIONS, no_groups).distribution is None


def test_consistency_over_entailed_questions():
  scores = gqa.evaluate_gqa(PREDICTIONS, QUESTIONS, consistency=True)
  # q1 right, entails q2 (wrong) and q7 (right; unbalanced counts) -> 0.5;
  # q3 right, entails q7 -> 1; q4 wrong: skipped; q5 entails nothing and q6
  # only itself: skipped. Mean 0.75.
  assert scores.consistency == 75.0
  assert scores.accuracy == pytest.approx(400 / 6)     # q7 still not scored


def test_consistency_needs_every_prediction():
  balanced_only = {k: v for k, v in PREDICTIONS.items() if k != "q7"}
  with pytest.raises(EvaluationError, match="no prediction for question 'q7'"):
    gqa.evaluate_gqa(balanced_only, QUESTIONS, consistency=True)


def test_validity_plausibility_and_the_common_rule():
  choices = {qid: {"valid": [q["answer"]], "plausible": [q["answer"]]}
             for qid, q in QUESTIONS.items()}
  choices["q2"] = {"valid": ["cat", "dog"], "plausible": ["cat"]}
  scores = gqa.evaluate_gqa(PREDICTIONS, QUESTIONS, choices=choices)
  # Wrong answers: q2 "dog" valid but not plausible, q4 "yes" neither.
  assert scores.validity == pytest.approx(500 / 6)
  assert scores.plausibility == pytest.approx(400 / 6)

  common = {"c1": _question("color", "query", detailed="twoCommon")}
  common_choices = {"c1": {"valid": ["red", "color"], "plausible": ["red"]}}
  as_color = gqa.evaluate_gqa({"c1": "material"}, common, choices=common_choices)
  assert (as_color.validity, as_color.plausibility) == (100.0, 100.0)
  as_red = gqa.evaluate_gqa({"c1": "red"}, common, choices=common_choices)
  assert (as_red.validity, as_red.plausibility) == (0.0, 0.0)

  del choices["q5"]
  with pytest.raises(EvaluationError, match=r"choices\.json \['q5'\]"):
    gqa.evaluate_gqa(PREDICTIONS, QUESTIONS, choices=choices, choices_file="choices.json")


def test_steps_number():
  def steps(*pairs):
    return gqa.steps_number({"semantic": [{"operation": o, "argument": a} for o, a in pairs]})

  assert steps(("select", "cat"), ("filter color", "red"), ("query", "name")) == 2
  assert steps(("select", "cat"), ("exist", "?")) == 1
  assert steps(("select", "cat"), ("relate", "existing")) == 1     # substring test
  assert steps(("select", "cat"), ("choose", "name")) == 2          # "choose: name" counts


def test_empty_breakdowns_score_zero():
  scores = gqa.evaluate_gqa({"q5": "left"}, {"q5": QUESTIONS["q5"]})
  assert (scores.binary, scores.open) == (100.0, 0.0)


def test_errors_name_the_question():
  with pytest.raises(EvaluationError, match="no prediction for question 'q6'"):
    gqa.evaluate_gqa({k: v for k, v in PREDICTIONS.items() if k != "q6"}, QUESTIONS)
  with pytest.raises(EvaluationError, match="unknown question 'zz'"):
    gqa.evaluate_gqa({**PREDICTIONS, "zz": "yes"}, QUESTIONS)
  broken = {"q1": {k: v for k, v in QUESTIONS["q1"].items() if k != "types"}}
  with pytest.raises(EvaluationError, match=r"\['q1'\]: missing field 'types'"):
    gqa.evaluate_gqa({"q1": "red"}, broken)
  dangling = {"q3": QUESTIONS["q3"]}
  with pytest.raises(EvaluationError, match="entails 'q7'"):
    gqa.evaluate_gqa({"q3": "yes"}, dangling, consistency=True)


def test_files(tmp_path):
  questions_file = tmp_path / "testdev_balanced_questions.json"
  questions_file.write_text(json.dumps(QUESTIONS))
  predictions_file = tmp_path / "testdev_balanced_predictions.json"
  predictions_file.write_text(json.dumps([{"questionId": k, "prediction": v}
                                          for k, v in PREDICTIONS.items()]))
  scores = gqa.evaluate_gqa_files(predictions_file, questions_file, consistency=True)
  assert scores.consistency == 75.0

  chunks = tmp_path / "val_all_questions"
  chunks.mkdir()
  items = list(QUESTIONS.items())
  (chunks / "val_all_questions_0.json").write_text(json.dumps(dict(items[:3])))
  (chunks / "val_all_questions_1.json").write_text(json.dumps(dict(items[3:])))
  assert gqa.load_gqa_questions(tmp_path / "val_all_questions.json") == QUESTIONS

  short = tmp_path / "short.json"
  short.write_text(json.dumps([{"questionId": "q1", "prediction": "red"}]))
  with pytest.raises(EvaluationError, match=r"short\.json \['q2'\]: no prediction"):
    gqa.evaluate_gqa_files(short, questions_file)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    gqa.load_gqa_questions(tmp_path / "nowhere.json")
