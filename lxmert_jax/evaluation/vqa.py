"""VQA accuracy exactly as the official evaluator computes it, and LXMERT's soft score.

Published VQA numbers come from GT-Vision-Lab/VQA's
`PythonEvaluationTools/vqaEvaluation/vqaEval.py` (Python 2). LXMERT's own
training logs report something else: the precomputed soft score of the
predicted answer in the `label` of its JSON splits. The two differ (answer
normalisation, leave-one-annotator-out averaging), so both are here under
distinct names, and `evaluate_vqa` reproduces the official code step by step,
quirks included:

* Every answer (the ten ground-truth ones and the prediction) has newlines and
  tabs turned into spaces and is stripped.
* Punctuation, number words, articles and contractions are normalised *only
  when the ten ground-truth answers are not all the same string*; then the
  prediction is normalised too. When all ten agree, the prediction is compared
  as it is: "Yes" scores 0 against ten "yes".
* Punctuation: if the text has a comma between two digits anywhere, every
  listed punctuation mark is deleted ("1,000" -> "1000"); otherwise a mark is
  deleted when the text has it next to a space and replaced by a space when
  not. Apostrophes, colons and a few others are not in the list and stay.
* Periods not followed by a digit are deleted, at most 32 of them: the original
  passes `re.UNICODE` (= 32) where `re.sub` takes its count. Its lookbehind is
  misspelt as a lookahead `(?!<=\\d)` that never fails, so "5." -> "5" while
  "3.5" stays.
* `\\d` matches ASCII digits only, as in Python 2's `re` without flags.
* For each annotator, the matching answers are the other records equal to the
  prediction, where "other" means every record that is not equal, as a whole
  record, to the held-out one. The official files have distinct `answer_id`s,
  so that is the other nine; hand-made records without them lose every
  identical duplicate.
* Question accuracy = mean over annotators of min(1, matches / 3); the overall,
  per answer type and per question type figures are 100 * mean, rounded to
  `precision` places half away from zero, as Python 2's `round` does.
"""

from __future__ import annotations

import dataclasses
import decimal
import os
import re
from typing import Any, Hashable, Iterable, Mapping, Sequence

from lxmert_jax.evaluation.common import (EvaluationError, check_prediction_ids, read_json,
                                          read_prediction_list,
                                          require)

PathLike = str | os.PathLike

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">",
                "<", "@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)", re.ASCII)
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_PERIOD_COUNT = 32
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
# The official table, entries that can never apply included: words are
# lower-cased first, so the capitalised keys never match, and "somebody'd" maps
# to "somebodyd".
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def clean_whitespace(text: str) -> str:
  """Newlines and tabs to spaces, then stripped: applied to every answer."""
  return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
  """The official `processPunctuation`: punctuation deleted or spaced, periods dropped."""
  out = text
  digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
  for mark in _PUNCTUATION:
    if mark + " " in text or " " + mark in text or digit_comma:
      out = out.replace(mark, "")
    else:
      out = out.replace(mark, " ")
  return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
  """The official `processDigitArticle`: lower case, number words to digits, no
  articles, contractions restored, words joined by single spaces."""
  words = []
  for word in text.lower().split():
    word = _NUMBER_WORDS.get(word, word)
    if word not in _ARTICLES:
      words.append(word)
  return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
  """Everything the evaluator does to an answer when the annotators disagree.

  When all ground-truth answers are the same string only `clean_whitespace`
  applies; `question_accuracy` makes that choice.
  """
  return process_digit_article(process_punctuation(clean_whitespace(text)))


def question_accuracy(prediction: str, answers: Sequence[Mapping[str, Any]]) -> float:
  """One question's accuracy in [0, 1]: mean over held-out annotators of min(1, matches / 3).

  Args:
    prediction: the predicted answer string.
    answers: the question's ground-truth answer records (`{"answer": str,
      "answer_id": int, ...}`), usually ten.
  """
  if not answers:
    raise EvaluationError("a question needs at least one ground-truth answer")
  truth = [dict(a, answer=clean_whitespace(a["answer"])) for a in answers]
  predicted = clean_whitespace(prediction)
  if len({a["answer"] for a in truth}) > 1:
    truth = [dict(a, answer=process_digit_article(process_punctuation(a["answer"])))
             for a in truth]
    predicted = process_digit_article(process_punctuation(predicted))
  per_annotator = []
  for held_out in truth:
    others = [a for a in truth if a != held_out]
    matches = len([a for a in others if a["answer"] == predicted])
    per_annotator.append(min(1, float(matches) / 3))
  return float(sum(per_annotator)) / len(per_annotator)


def round_half_away(value: float, ndigits: int) -> float:
  """Python 2's `round`: the exact binary value rounded, ties away from zero."""
  quantum = decimal.Decimal(1).scaleb(-ndigits)
  return float(decimal.Decimal(value).quantize(quantum, rounding=decimal.ROUND_HALF_UP))


@dataclasses.dataclass(frozen=True)
class VQAAccuracy:
  """The official figures, in percent rounded to the evaluator's precision.

  Attributes:
    overall: over all evaluated questions (`accuracy['overall']`).
    per_answer_type: "yes/no", "number", "other" (`accuracy['perAnswerType']`).
    per_question_type: e.g. "what color is the" (`accuracy['perQuestionType']`).
    per_question: question id -> its accuracy (`evalQA`).
    num_questions: how many questions were scored.
  """

  overall: float
  per_answer_type: dict[str, float]
  per_question_type: dict[str, float]
  per_question: dict[Hashable, float]
  num_questions: int

  def as_official_dict(self) -> dict[str, Any]:
    """The evaluator's `accuracy` attribute: overall, perQuestionType, perAnswerType."""
    return {"overall": self.overall, "perQuestionType": dict(self.per_question_type),
            "perAnswerType": dict(self.per_answer_type)}


def _check_annotation(record: Any, index: int, path: PathLike | None) -> Hashable:
  where = f"annotations[{index}]"
  qid = require(record, "question_id", (int, str), where=where, path=path)
  require(record, "question_type", str, where=qid, path=path)
  require(record, "answer_type", str, where=qid, path=path)
  answers = require(record, "answers", list, where=qid, path=path)
  if not answers:
    raise EvaluationError("'answers' is empty; expected the annotators' answers (ten in VQA)",
                          path=path, key=qid)
  for number, answer in enumerate(answers):
    require(answer, "answer", str, where=f"{qid!r}.answers[{number}]", path=path)
  return qid


def evaluate_vqa(predictions: Mapping[Hashable, str], annotations: Sequence[Mapping[str, Any]],
                 *, question_ids: Iterable[Hashable] | None = None, precision: int = 2,
                 predictions_file: PathLike | None = None,
                 annotations_file: PathLike | None = None) -> VQAAccuracy:
  """Scores predicted answers the way `VQAEval.evaluate` does.

  Args:
    predictions: question id -> predicted answer string, one for every
      evaluated question and none for ids outside the annotations (those of
      annotated questions left out by `question_ids` are ignored).
    annotations: question records with `question_id`, `question_type`,
      `answer_type` and `answers` (a list of `{"answer", "answer_id", ...}`), as
      in `v2_mscoco_val2014_annotations.json` or `load_vqa_annotations`.
    question_ids: evaluate only these questions (the official
      `evaluate(quesIds)`), in this order; by default all annotations, in order.
    precision: decimal places of the reported percentages (the official `n`).
    predictions_file, annotations_file: where the inputs came from, for errors.

  Raises:
    EvaluationError: a missing or unknown prediction (naming the id and file), a
      non-string prediction, a malformed or duplicated annotation.
  """
  by_id: dict[Hashable, Mapping[str, Any]] = {}
  for index, record in enumerate(annotations):
    qid = _check_annotation(record, index, annotations_file)
    if qid in by_id:
      raise EvaluationError("question id appears twice in the annotations",
                            path=annotations_file, key=qid)
    by_id[qid] = record
  if question_ids is None:
    evaluated = list(by_id)
  else:
    evaluated = list(question_ids)
    for qid in evaluated:
      if qid not in by_id:
        raise EvaluationError("question_ids names a question that is not in the annotations",
                              path=annotations_file, key=qid)
    if len(set(evaluated)) != len(evaluated):
      raise EvaluationError("question_ids lists a question more than once")
  check_prediction_ids(predictions, evaluated, what="question", path=predictions_file,
                       known=by_id)
  if not evaluated:
    raise EvaluationError("no questions to evaluate", path=annotations_file)

  overall: list[float] = []
  per_question_type: dict[str, list[float]] = {}
  per_answer_type: dict[str, list[float]] = {}
  per_question: dict[Hashable, float] = {}
  for qid in evaluated:
    prediction = predictions[qid]
    if not isinstance(prediction, str):
      raise EvaluationError(f"prediction must be a string, got {type(prediction).__name__}",
                            path=predictions_file, key=qid)
    record = by_id[qid]
    accuracy = question_accuracy(prediction, record["answers"])
    overall.append(accuracy)
    per_question_type.setdefault(record["question_type"], []).append(accuracy)
    per_answer_type.setdefault(record["answer_type"], []).append(accuracy)
    per_question[qid] = round_half_away(100 * accuracy, precision)

  def percent(values: list[float]) -> float:
    return round_half_away(100 * float(sum(values)) / len(values), precision)

  return VQAAccuracy(
      overall=percent(overall),
      per_answer_type={k: percent(v) for k, v in per_answer_type.items()},
      per_question_type={k: percent(v) for k, v in per_question_type.items()},
      per_question=per_question, num_questions=len(evaluated))


def load_vqa_annotations(annotation_path: PathLike,
                         question_path: PathLike | None = None) -> list[dict[str, Any]]:
  """The records of an official annotation file (`{"annotations": [...]}`).

  With `question_path` (an official `{"questions": [...]}` file), each record
  also gets its `question` text; every annotated question must be there.
  """
  content = read_json(annotation_path)
  records = require(content, "annotations", list, where="<top level>", path=annotation_path)
  for index, record in enumerate(records):
    _check_annotation(record, index, annotation_path)
  if question_path is None:
    return [dict(r) for r in records]
  questions = require(read_json(question_path), "questions", list, where="<top level>",
                      path=question_path)
  text = {}
  for index, question in enumerate(questions):
    qid = require(question, "question_id", (int, str), where=f"questions[{index}]",
                  path=question_path)
    text[qid] = require(question, "question", str, where=qid, path=question_path)
  out = []
  for record in records:
    qid = record["question_id"]
    if qid not in text:
      raise EvaluationError(f"annotated question is missing from {os.fspath(question_path)}",
                            path=annotation_path, key=qid)
    out.append(dict(record, question=text[qid]))
  return out


def load_vqa_results(path: PathLike) -> dict[Hashable, str]:
  """Predictions from an official results file: `[{"question_id": int, "answer": str}]`."""
  return read_prediction_list(path, "question_id", (int, str), "answer", noun="result")


def evaluate_vqa_files(results_path: PathLike, annotation_path: PathLike,
                       question_path: PathLike | None = None, *,
                       question_ids: Iterable[Hashable] | None = None,
                       precision: int = 2) -> VQAAccuracy:
  """`evaluate_vqa` on an official results file and annotation (+ question) file."""
  return evaluate_vqa(load_vqa_results(results_path),
                      load_vqa_annotations(annotation_path, question_path),
                      question_ids=question_ids, precision=precision,
                      predictions_file=results_path, annotations_file=annotation_path)


def load_lxmert_split(path: PathLike) -> list[dict[str, Any]]:
  """The records of one of LXMERT's VQA/GQA JSON splits (e.g. `minival.json`).

  Records look like `{"question_id", "img_id", "sent", "label": {answer:
  score}, "answer_type", "question_type"}`; only `question_id` and `label` are
  needed for scoring, and a split without labels (test) is refused.
  """
  content = read_json(path)
  if not isinstance(content, list):
    raise EvaluationError("expected a JSON array of question records", path=path)
  seen = set()
  for index, record in enumerate(content):
    qid = require(record, "question_id", (int, str), where=f"[{index}]", path=path)
    if qid in seen:
      raise EvaluationError("question id appears twice", path=path, key=qid)
    seen.add(qid)
    label = require(record, "label", dict, where=qid, path=path)
    for answer, score in label.items():
      if not isinstance(score, (int, float)) or isinstance(score, bool):
        raise EvaluationError(f"label score of {answer!r} must be a number, got {score!r}",
                              path=path, key=qid)
  return content


def lxmert_soft_score(predictions: Mapping[Hashable, str],
                      records: Sequence[Mapping[str, Any]], *,
                      predictions_file: PathLike | None = None,
                      records_file: PathLike | None = None) -> float:
  """LXMERT's own evaluator: mean over questions of `label.get(prediction, 0)`, in [0, 1].

  This is what the original code logs (times 100) for VQA and, with its 0/1
  labels, for GQA. It is not the official VQA accuracy: no answer
  normalisation and no leave-one-annotator-out average.
  """
  ids = [require(r, "question_id", (int, str), where=f"[{i}]", path=records_file)
         for i, r in enumerate(records)]
  check_prediction_ids(predictions, ids, what="question", path=predictions_file)
  if not ids:
    raise EvaluationError("no questions to score", path=records_file)
  score = 0.
  for qid, record in zip(ids, records):
    label = require(record, "label", dict, where=qid, path=records_file)
    score += label.get(predictions[qid], 0)
  return score / len(ids)
