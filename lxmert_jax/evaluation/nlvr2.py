"""NLVR2 accuracy and consistency exactly as lil-lab/nlvr's `nlvr2/eval/metrics.py`.

NLVR2 identifiers are `split-set_id-pair_id-sentence_id` (e.g. `dev-850-0-0`).
The official script groups the image pairs of one sentence by blanking the
third field (`dev-850--0`) and calls a sentence consistent when every one of
its pairs is predicted right. Accuracy is over the labelled examples as
listed; labels and predictions are compared as lower-cased strings, so "True",
"true" and (here) True or 1 are the same answer. Both figures are fractions in
[0, 1], as the script prints them.

Where the script prints "Some predictions are missing!" and stops, or ignores
predictions for examples it does not know, these functions raise an error
naming the identifier and file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from lxmert_jax.evaluation.common import (EvaluationError, check_prediction_ids, read_json,
                                          read_json_lines, require)

PathLike = str | os.PathLike
Label = str | bool | int


@dataclasses.dataclass(frozen=True)
class NLVR2Scores:
  """Accuracy over examples and consistency over sentences, both in [0, 1]."""

  accuracy: float
  consistency: float
  num_examples: int
  num_sentences: int


def sentence_key(identifier: str, *, path: PathLike | None = None) -> str:
  """The identifier with its pair field (the third) blanked: `dev-850-0-1` -> `dev-850--1`."""
  fields = identifier.split("-")
  if len(fields) < 3:
    raise EvaluationError("NLVR2 identifier must look like split-set_id-pair_id-sentence_id",
                          path=path, key=identifier)
  fields[2] = ""
  return "-".join(fields)


def _as_text(value: Any, *, key: str, path: PathLike | None, what: str) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, int) and value in (0, 1):
    return "true" if value else "false"
  if isinstance(value, str):
    return value.lower()
  raise EvaluationError(f"{what} must be a string, a bool or 0/1, got {value!r}",
                        path=path, key=key)


def evaluate_nlvr2(predictions: Mapping[str, Label], examples: Sequence[Mapping[str, Any]], *,
                   predictions_file: PathLike | None = None,
                   examples_file: PathLike | None = None) -> NLVR2Scores:
  """Scores predictions the way the official `metrics.py` does.

  Args:
    predictions: identifier -> prediction ("True"/"False" as in the CSV, or a
      bool, or 1/0), one for every example and none for unknown identifiers.
    examples: records with `identifier` and `label` (the official JSON lines,
      or LXMERT's records whose label is 1/0).
    predictions_file, examples_file: sources, for errors.

  Raises:
    EvaluationError: a missing or unknown prediction (naming the identifier and
      file), a malformed identifier or label.
  """
  identifiers = [require(e, "identifier", str, where=f"[{i}]", path=examples_file)
                 for i, e in enumerate(examples)]
  check_prediction_ids(predictions, identifiers, what="example", path=predictions_file)
  if not identifiers:
    raise EvaluationError("no examples to score", path=examples_file)
  correct = 0.
  consistent: dict[str, bool] = {}
  for identifier, example in zip(identifiers, examples):
    key = sentence_key(identifier, path=examples_file)
    consistent.setdefault(key, True)
    label = _as_text(require(example, "label", (str, bool, int), where=identifier,
                             path=examples_file), key=identifier, path=examples_file,
                     what="label")
    prediction = _as_text(predictions[identifier], key=identifier, path=predictions_file,
                          what="prediction")
    if prediction == label:
      correct += 1.
    else:
      consistent[key] = False
  num_consistent = float(sum(1 for ok in consistent.values() if ok))
  return NLVR2Scores(accuracy=correct / len(identifiers),
                     consistency=num_consistent / len(consistent),
                     num_examples=len(identifiers), num_sentences=len(consistent))


def load_nlvr2_examples(path: PathLike) -> list[dict[str, Any]]:
  """Labelled examples: the official JSON-lines files (`dev.json`) or LXMERT's JSON array."""
  with open(path, encoding="utf-8") as f:
    head = f.read(4096).lstrip()
  content = read_json(path) if head.startswith("[") else read_json_lines(path)
  for index, example in enumerate(content):
    require(example, "identifier", str, where=f"[{index}]", path=path)
  return content


def load_nlvr2_predictions(path: PathLike) -> dict[str, str]:
  """The official predictions CSV: one `identifier,prediction` per line; blank lines skipped."""
  predictions: dict[str, str] = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.strip().split(",")
      if len(fields) < 2:
        raise EvaluationError(f"line {number}: expected 'identifier,prediction', got "
                              f"{line.strip()!r}", path=path)
      identifier, prediction = fields[0], fields[1]
      if identifier in predictions:
        raise EvaluationError(f"line {number}: second prediction for this example",
                              path=path, key=identifier)
      predictions[identifier] = prediction
  return predictions


def evaluate_nlvr2_files(predictions_path: PathLike, examples_path: PathLike) -> NLVR2Scores:
  """`evaluate_nlvr2` on a predictions CSV and a labelled examples file."""
  return evaluate_nlvr2(load_nlvr2_predictions(predictions_path),
                        load_nlvr2_examples(examples_path),
                        predictions_file=predictions_path, examples_file=examples_path)
