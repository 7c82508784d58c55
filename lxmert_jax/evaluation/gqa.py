"""GQA metrics exactly as the dataset's official `eval.py` computes them.

The GQA site distributes `eval.py` (not on GitHub); this follows the version
that repositories vendor unchanged, and reproduces its rules:

* Only questions with `isBalanced` true are scored. Accuracy is exact string
  equality of prediction and `answer`; a question is "open" when its
  `types.structural` is "query" and "binary" otherwise (verify, logical,
  choose, compare).
* Validity / plausibility: the prediction is in the question's `valid` /
  `plausible` list of the choices file, except that for a question whose
  `types.detailed` contains "Common" the list is replaced by ["color",
  "material", "shape"].
* Consistency (for the "all questions" files): for each balanced question
  answered correctly that entails at least one *other* question, the accuracy
  over those entailed questions (balanced or not); the mean over such
  questions. It needs predictions for every question in the file.
* Distribution: the chi-square of predicted vs gold answer counts within each
  `groups.global` group (gold answers only), weighted by the group's size,
  divided by 100. Lower is better.
* Per structural type, semantic type, question length (words) and reasoning
  steps: (accuracy, number of questions). Steps count the `semantic`
  operations whose "operation: argument" text contains none of "exist",
  "query: name", "choose name" (the last never matches that format, so
  choose-name steps are counted).
* Every figure is 100 * mean, unrounded (the script prints two decimals); the
  mean of no questions is 0.

The official script reads the prediction of every question in the file; here
unbalanced questions need one only for consistency. Grounding (attention maps
against scene graphs) is not implemented.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Mapping

from lxmert_jax.evaluation.common import (EvaluationError, check_prediction_ids, read_json,
                                          read_prediction_list,
                                          require)

PathLike = str | os.PathLike

_NOT_STEPS = ("exist", "query: name", "choose name")
_COMMON_GROUP = ("color", "material", "shape")


@dataclasses.dataclass(frozen=True)
class GQAScores:
  """The official figures, in percent (distribution: chi-square / 100).

  `validity` and `plausibility` are None without a choices file,
  `consistency` unless requested, `distribution` when no balanced question
  has a global group. The per-* maps hold (accuracy, number of questions).
  """

  accuracy: float
  binary: float
  open: float
  validity: float | None
  plausibility: float | None
  consistency: float | None
  distribution: float | None
  per_structural_type: dict[str, tuple[float, int]]
  per_semantic_type: dict[str, tuple[float, int]]
  per_steps: dict[int, tuple[float, int]]
  per_length: dict[int, tuple[float, int]]
  num_questions: int


def _mean(scores: list[float]) -> float:
  if not scores:
    return 0.
  return float(sum(scores)) / len(scores)


def _mean_percent(scores: list[float]) -> float:
  return _mean(scores) * 100


def answer_kind(question: Mapping[str, Any]) -> str:
  """"open" for `types.structural` == "query", else "binary"."""
  return "open" if question["types"]["structural"] == "query" else "binary"


def steps_number(question: Mapping[str, Any]) -> int:
  """Reasoning steps: `semantic` operations except the final querying ones."""
  return len([step for step in question["semantic"]
              if not any(o in f"{step['operation']}: {step['argument']}" for o in _NOT_STEPS)])


def _belongs(prediction: str, group: list[str], question: Mapping[str, Any]) -> bool:
  if "Common" in question["types"]["detailed"]:
    group = list(_COMMON_GROUP)
  return prediction in group


def _check_question(qid: str, question: Any, *, with_choices: bool,
                    path: PathLike | None) -> None:
  require(question, "answer", str, where=qid, path=path)
  require(question, "question", str, where=qid, path=path)
  types = require(question, "types", dict, where=qid, path=path)
  for key in ("structural", "semantic") + (("detailed",) if with_choices else ()):
    require(types, key, str, where=f"{qid}.types", path=path)
  for number, step in enumerate(require(question, "semantic", list, where=qid, path=path)):
    for key in ("operation", "argument"):
      require(step, key, str, where=f"{qid}.semantic[{number}]", path=path)
  groups = require(question, "groups", dict, where=qid, path=path)
  require(groups, "global", (str, type(None)), where=f"{qid}.groups", path=path)


def _chi_square(gold: dict[str, dict[str, int]], predicted: dict[str, dict[str, int]]) -> float:
  total_score, total = 0., 0
  for group, answers in gold.items():
    score, overall = 0., 0
    for answer, expected in answers.items():
      observed = predicted[group].get(answer, 0)
      score += float(observed - expected) ** 2 / expected
      overall += expected
    total_score += score * overall
    total += overall
  return float(total_score) / total


def evaluate_gqa(predictions: Mapping[str, str], questions: Mapping[str, Mapping[str, Any]], *,
                 choices: Mapping[str, Mapping[str, Any]] | None = None,
                 consistency: bool = False, predictions_file: PathLike | None = None,
                 questions_file: PathLike | None = None,
                 choices_file: PathLike | None = None) -> GQAScores:
  """Scores predictions the way the official `eval.py` does.

  Args:
    predictions: question id -> predicted answer; one for every balanced
      question (every question with `consistency`), none for unknown ids.
    questions: question id -> official question record (`answer`,
      `isBalanced`, `question`, `types`, `semantic`, `groups`, and `entailed`
      for consistency), as in `testdev_balanced_questions.json`.
    choices: question id -> `{"valid": [...], "plausible": [...]}`, the
      choices file, for validity and plausibility.
    consistency: compute consistency over the `entailed` questions.
    predictions_file, questions_file, choices_file: sources, for errors.

  Raises:
    EvaluationError: a missing or unknown prediction (naming the id and file),
      a question without a field the metric needs, a missing choice entry.
  """
  balanced = []
  for qid, question in questions.items():
    if require(question, "isBalanced", bool, where=qid, path=questions_file):
      _check_question(qid, question, with_choices=choices is not None, path=questions_file)
      balanced.append(qid)
  needed = list(questions) if consistency else balanced
  check_prediction_ids(predictions, needed, what="question", path=predictions_file,
                       known=questions)
  for qid, prediction in predictions.items():
    if not isinstance(prediction, str):
      raise EvaluationError(f"prediction must be a string, got {type(prediction).__name__}",
                            path=predictions_file, key=qid)

  accuracy, binary, open_, validity, plausibility, consistent = [], [], [], [], [], []
  per_structural, per_semantic, per_steps, per_length = {}, {}, {}, {}
  gold_dist: dict[str, dict[str, int]] = {}
  predicted_dist: dict[str, dict[str, int]] = {}
  for qid in balanced:
    question = questions[qid]
    gold, predicted = question["answer"], predictions[qid]
    correct = predicted == gold
    score = float(1 if correct else 0)
    accuracy.append(score)
    per_length.setdefault(len(question["question"].split()), []).append(score)
    per_steps.setdefault(steps_number(question), []).append(score)
    per_structural.setdefault(question["types"]["structural"], []).append(score)
    per_semantic.setdefault(question["types"]["semantic"], []).append(score)
    (open_ if answer_kind(question) == "open" else binary).append(score)

    if choices is not None:
      if qid not in choices:
        raise EvaluationError("balanced question has no entry in the choices file",
                              path=choices_file, key=qid)
      valid = require(choices[qid], "valid", list, where=qid, path=choices_file)
      plausible = require(choices[qid], "plausible", list, where=qid, path=choices_file)
      validity.append(float(1 if _belongs(predicted, valid, question) else 0))
      plausibility.append(float(1 if _belongs(predicted, plausible, question) else 0))

    group = question["groups"]["global"]
    if group is not None:
      gold_counts = gold_dist.setdefault(group, {})
      gold_counts[gold] = gold_counts.get(gold, 0) + 1
      predicted_counts = predicted_dist.setdefault(group, {})
      predicted_counts[predicted] = predicted_counts.get(predicted, 0) + 1

    if consistency:
      entailed = [e for e in require(question, "entailed", list, where=qid, path=questions_file)
                  if e != qid]
      if correct and entailed:
        entailed_scores = []
        for eid in entailed:
          if eid not in questions:
            raise EvaluationError(f"question {qid!r} entails {eid!r}, which is not in the file",
                                  path=questions_file, key=qid)
          entailed_gold = require(questions[eid], "answer", str, where=eid, path=questions_file)
          entailed_scores.append(float(1 if predictions[eid] == entailed_gold else 0))
        consistent.append(_mean(entailed_scores))

  def breakdown(lists: dict) -> dict:
    return {key: (_mean_percent(scores), len(scores)) for key, scores in lists.items()}

  return GQAScores(
      accuracy=_mean_percent(accuracy), binary=_mean_percent(binary), open=_mean_percent(open_),
      validity=_mean_percent(validity) if choices is not None else None,
      plausibility=_mean_percent(plausibility) if choices is not None else None,
      consistency=_mean_percent(consistent) if consistency else None,
      distribution=_chi_square(gold_dist, predicted_dist) / 100 if gold_dist else None,
      per_structural_type=breakdown(per_structural), per_semantic_type=breakdown(per_semantic),
      per_steps=breakdown(per_steps), per_length=breakdown(per_length),
      num_questions=len(balanced))


def _load_mapping(path: PathLike, what: str) -> dict[str, Any]:
  """A JSON object file, or the official chunk directory `<name>/<name>_*.json`."""
  path = os.fspath(path)
  stem = path[:-len(".json")] if path.endswith(".json") else path
  if os.path.isfile(path):
    content = read_json(path)
    if not isinstance(content, dict):
      raise EvaluationError(f"expected a JSON object of {what} keyed by question id", path=path)
    return content
  if os.path.isdir(stem):
    chunks = sorted(glob.glob(os.path.join(stem, f"{os.path.basename(stem)}_*.json")))
    if not chunks:
      raise EvaluationError(f"directory has no {os.path.basename(stem)}_*.json chunks",
                            path=stem)
    merged: dict[str, Any] = {}
    for chunk in chunks:
      merged.update(_load_mapping(chunk, what))
    return merged
  raise FileNotFoundError(f"{path}: no such file, nor a chunk directory {stem}")


def load_gqa_questions(path: PathLike) -> dict[str, dict[str, Any]]:
  """An official questions file (`{question_id: record}`) or its chunk directory."""
  return _load_mapping(path, "questions")


def load_gqa_choices(path: PathLike) -> dict[str, dict[str, Any]]:
  """An official choices file (`{question_id: {"valid", "plausible"}}`)."""
  return _load_mapping(path, "choices")


def load_gqa_predictions(path: PathLike) -> dict[str, str]:
  """Predictions in the submission format: `[{"questionId": str, "prediction": str}]`."""
  return read_prediction_list(path, "questionId", str, "prediction", noun="prediction")


def evaluate_gqa_files(predictions_path: PathLike, questions_path: PathLike, *,
                       choices_path: PathLike | None = None,
                       consistency: bool = False) -> GQAScores:
  """`evaluate_gqa` on a submission file, a questions file and optionally a choices file."""
  return evaluate_gqa(
      load_gqa_predictions(predictions_path), load_gqa_questions(questions_path),
      choices=None if choices_path is None else load_gqa_choices(choices_path),
      consistency=consistency, predictions_file=predictions_path,
      questions_file=questions_path, choices_file=choices_path)
