"""Official VQA accuracy: normalisation, leave-one-out scoring, breakdowns, rounding, errors.

Every expected value is worked out by hand from the official `vqaEval.py`.
"""

import json

import pytest

from lxmert_jax.evaluation import EvaluationError
from lxmert_jax.evaluation import vqa


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),
    ("ten", "10"),
    ("none", "0"),
    ("eleven", "eleven"),
    ("a dog", "dog"),
    ("The Dog", "dog"),
    ("an apple", "apple"),
    ("dont", "don't"),
    ("Dont", "don't"),
    ("isnt it", "isn't it"),
    ("Im", "im"),                      # lower-cased before the table, whose key is "Im"
    ("somebody'd", "somebodyd"),       # the table maps this one backwards
    ("don't", "don't"),                # apostrophes are not punctuation here
    ("10:30", "10:30"),                # nor are colons
    ("1,000", "1000"),                 # comma between digits: marks deleted
    ("1,000-2", "10002"),              # ... every mark, not only that comma
    ("3.5", "3.5"),                    # a period before a digit stays
    ("5.", "5"),
    ("dog.", "dog"),
    ("mr. smith", "mr smith"),
    ("red, white", "red white"),       # mark next to a space: deleted
    ("red,white", "red white"),        # mark between letters: a space
    ("x-ray", "x ray"),
    ("yes!", "yes"),
    ("(left)", "left"),
    ("  yes\n", "yes"),
    ("red\tcar", "red car"),
    ("two\ndogs", "2 dogs"),
])
def test_normalize_answer(raw, expected):
  assert vqa.normalize_answer(raw) == expected


def test_at_most_32_periods_are_removed():
  assert vqa.process_punctuation("." * 40 + "a") == "." * 8 + "a"


def test_only_ascii_digits_count_as_digits():
  # Arabic-Indic digits: no "comma between digits", so the comma becomes a space.
  assert vqa.process_punctuation("\u0661,\u0660") == "\u0661 \u0660"


def test_half_away_from_zero_rounding():
  assert vqa.round_half_away(0.125, 2) == 0.13      # Python 3's round gives 0.12
  assert vqa.round_half_away(2.675, 2) == 2.67      # the double is just below 2.675
  assert vqa.round_half_away(12.5, 0) == 13.0
  assert vqa.round_half_away(-0.125, 2) == -0.13


def _answers(*texts, with_ids=True):
  records = [{"answer": t, "answer_confidence": "yes"} for t in texts]
  if with_ids:
    records = [dict(r, answer_id=i + 1) for i, r in enumerate(records)]
  return records


@pytest.mark.parametrize("matches, expected", [
    # k of the ten say "dog". Held out a "dog" annotator: k-1 matches left; held
    # out another: k. Mean over the ten of min(1, matches / 3).
    (0, 0.0),
    (1, (1 * 0 + 9 * 1 / 3) / 10),          # 0.3
    (2, (2 * 1 / 3 + 8 * 2 / 3) / 10),      # 0.6
    (3, (3 * 2 / 3 + 7 * 1) / 10),          # 0.9
    (4, 1.0),
    (10, 1.0),
])
def test_leave_one_out_accuracy(matches, expected):
  answers = _answers(*(["dog"] * matches + ["cat"] * (10 - matches)))
  assert vqa.question_accuracy("dog", answers) == pytest.approx(expected)


def test_unanimous_answers_are_not_normalised():
  answers = _answers(*["yes"] * 10)
  assert vqa.question_accuracy("yes", answers) == 1.0
  assert vqa.question_accuracy(" yes\t", answers) == 1.0     # whitespace always cleaned
  assert vqa.question_accuracy("Yes", answers) == 0.0
  assert vqa.question_accuracy("yes.", answers) == 0.0
  unanimous = _answers(*["1,000"] * 10)
  assert vqa.question_accuracy("1,000", unanimous) == 1.0
  assert vqa.question_accuracy("1000", unanimous) == 0.0


def test_disagreeing_answers_are_normalised_with_the_prediction():
  answers = _answers(*(["2"] * 5 + ["two"] * 5))
  assert vqa.question_accuracy("Two", answers) == 1.0
  answers = _answers(*(["1,000"] * 3 + ["a lot"] * 7))
  assert vqa.question_accuracy("1000", answers) == pytest.approx(0.9)


def test_held_out_answer_removes_every_equal_record():
  # Official files give each answer a distinct answer_id; without them the
  # held-out record takes its identical duplicates with it.
  nine_yes = ["yes"] * 9 + ["no"]
  assert vqa.question_accuracy("yes", _answers(*nine_yes)) == 1.0
  assert vqa.question_accuracy("yes", _answers(*nine_yes, with_ids=False)) == pytest.approx(0.1)
  assert vqa.question_accuracy("yes", _answers(*["yes"] * 10, with_ids=False)) == 0.0


def _record(qid, answer_type, question_type, answers):
  return {"question_id": qid, "image_id": 1, "question_type": question_type,
          "answer_type": answer_type, "answers": _answers(*answers)}


ANNOTATIONS = [
    _record(1, "yes/no", "is the", ["yes"] * 10),
    _record(2, "number", "how many", ["3"] * 2 + ["4"] * 8),
    _record(3, "other", "what color is the", ["red"] + ["blue"] * 9),
    _record(4, "other", "what color is the", ["green"] * 10),
]
PREDICTIONS = {1: "yes", 2: "three", 3: "red", 4: "green"}


def test_overall_and_per_type_breakdown():
  result = vqa.evaluate_vqa(PREDICTIONS, ANNOTATIONS)
  # Question accuracies 1, 0.6, 0.3, 1.
  assert result.overall == 72.5
  assert result.per_answer_type == {"yes/no": 100.0, "number": 60.0, "other": 65.0}
  assert result.per_question_type == {"is the": 100.0, "how many": 60.0,
                                      "what color is the": 65.0}
  assert result.per_question == {1: 100.0, 2: 60.0, 3: 30.0, 4: 100.0}
  assert result.num_questions == 4
  assert result.as_official_dict()["perAnswerType"]["number"] == 60.0


def test_percentages_round_like_python2():
  annotations = [_record(i, "other", "what", ["x"] * 10) for i in range(16)]
  predictions = {i: "x" if i == 0 else "y" for i in range(16)}
  result = vqa.evaluate_vqa(predictions, annotations, precision=1)
  assert result.overall == 6.3                       # 6.25 exactly; Python 3 gives 6.2
  assert vqa.evaluate_vqa(predictions, annotations, precision=4).overall == 6.25


def test_question_ids_select_a_subset_in_order():
  result = vqa.evaluate_vqa({2: "3", 3: "red"}, ANNOTATIONS, question_ids=[3, 2])
  assert result.num_questions == 2
  assert result.overall == 45.0
  assert vqa.evaluate_vqa(PREDICTIONS, ANNOTATIONS, question_ids=[3, 2]).overall == 45.0
  with pytest.raises(EvaluationError, match="99"):
    vqa.evaluate_vqa({99: "x"}, ANNOTATIONS, question_ids=[99])


def test_missing_and_unknown_predictions_name_the_id():
  with pytest.raises(EvaluationError, match=r"no prediction for question 4"):
    vqa.evaluate_vqa({1: "yes", 2: "3", 3: "red"}, ANNOTATIONS)
  with pytest.raises(EvaluationError, match=r"unknown question 77"):
    vqa.evaluate_vqa({**PREDICTIONS, 77: "x"}, ANNOTATIONS)
  with pytest.raises(EvaluationError, match=r"unknown question '1'.*have 1 \(int\).*str"):
    vqa.evaluate_vqa({**PREDICTIONS, "1": "yes"}, ANNOTATIONS)
  with pytest.raises(EvaluationError, match=r"\[2\]: prediction must be a string"):
    vqa.evaluate_vqa({**PREDICTIONS, 2: 3}, ANNOTATIONS)


def test_bad_annotations_are_named():
  broken = [dict(ANNOTATIONS[0], answers=[])]
  with pytest.raises(EvaluationError, match=r"\[1\].*'answers' is empty"):
    vqa.evaluate_vqa({1: "yes"}, broken)
  with pytest.raises(EvaluationError, match="question_type"):
    vqa.evaluate_vqa({1: "yes"}, [{k: v for k, v in ANNOTATIONS[0].items()
                                   if k != "question_type"}])
  with pytest.raises(EvaluationError, match="twice"):
    vqa.evaluate_vqa({1: "yes"}, [ANNOTATIONS[0], ANNOTATIONS[0]])


def _write(path, content):
  path.write_text(json.dumps(content))
  return path


def test_official_files(tmp_path):
  annotation_file = _write(tmp_path / "v2_mscoco_val2014_annotations.json",
                           {"info": {}, "annotations": ANNOTATIONS})
  question_file = _write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {
      "questions": [{"question_id": r["question_id"], "image_id": 1, "question": f"q{i}?"}
                    for i, r in enumerate(ANNOTATIONS)]})
  results_file = _write(tmp_path / "results.json",
                        [{"question_id": k, "answer": v} for k, v in PREDICTIONS.items()])
  records = vqa.load_vqa_annotations(annotation_file, question_file)
  assert [r["question"] for r in records] == ["q0?", "q1?", "q2?", "q3?"]
  assert vqa.evaluate_vqa_files(results_file, annotation_file, question_file).overall == 72.5

  short = _write(tmp_path / "short.json", [{"question_id": 1, "answer": "yes"}])
  with pytest.raises(EvaluationError, match=r"short\.json.*no prediction for question 2"):
    vqa.evaluate_vqa_files(short, annotation_file)
  extra = _write(tmp_path / "extra.json", [{"question_id": k, "answer": v}
                                           for k, v in {**PREDICTIONS, 5: "x"}.items()])
  with pytest.raises(EvaluationError, match=r"extra\.json.*unknown question 5"):
    vqa.evaluate_vqa_files(extra, annotation_file)
  twice = _write(tmp_path / "twice.json", [{"question_id": 1, "answer": "yes"}] * 2)
  with pytest.raises(EvaluationError, match=r"twice\.json \[1\].*more than one"):
    vqa.load_vqa_results(twice)
  no_text = _write(tmp_path / "questions.json", {"questions": []})
  with pytest.raises(EvaluationError, match=r"annotations\.json \[1\].*questions\.json"):
    vqa.load_vqa_annotations(annotation_file, no_text)


def test_lxmert_soft_score(tmp_path):
  split = _write(tmp_path / "minival.json", [
      {"question_id": 10, "img_id": "COCO_val2014_000000000001", "sent": "What animal?",
       "label": {"dog": 1.0, "cat": 0.3}, "answer_type": "other",
       "question_type": "what animal"},
      {"question_id": 11, "img_id": "COCO_val2014_000000000001", "sent": "Is it red?",
       "label": {"yes": 0.9}, "answer_type": "yes/no", "question_type": "is it"},
      {"question_id": 12, "img_id": "COCO_val2014_000000000002", "sent": "How many?",
       "label": {}, "answer_type": "number", "question_type": "how many"},
  ])
  records = vqa.load_lxmert_split(split)
  score = vqa.lxmert_soft_score({10: "cat", 11: "yes", 12: "2"}, records)
  assert score == pytest.approx((0.3 + 0.9 + 0) / 3)
  with pytest.raises(EvaluationError, match=r"preds\.json \[12\]: no prediction for question 12"):
    vqa.lxmert_soft_score({10: "cat", 11: "yes"}, records, predictions_file="preds.json")
  with pytest.raises(EvaluationError, match=r"unknown question 13"):
    vqa.lxmert_soft_score({10: "cat", 11: "yes", 12: "2", 13: "x"}, records)
  test_split = _write(tmp_path / "test.json", [{"question_id": 1, "img_id": "x", "sent": "?"}])
  with pytest.raises(EvaluationError, match=r"test\.json \[1\]: missing field 'label'"):
    vqa.load_lxmert_split(test_split)
