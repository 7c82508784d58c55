"""Submission files for the benchmark servers, written only when they are complete.

A server scores the file it is given. If a prediction run dropped a batch,
repeated one, or predicted a different split, the server finds out only after
the upload, and that upload is one of a limited number. So each writer here
first checks the predictions against every question of the split and reports
everything wrong with them in one `EvaluationError`: how many ids are missing
(and the first few), ids that are not in the split, and ids predicted more than
once. Only then is the file written, atomically, so a failed write never leaves
a partial file behind that could be uploaded by mistake.

The formats are the ones the readers in `vqa`, `gqa` and `nlvr2` accept, so a
written file can be scored locally with `python -m lxmert_jax.evaluation`:

* VQA: `[{"question_id": int, "answer": str}, ...]` (question ids are integers
  on the server; digit strings are accepted here and written as integers).
* GQA: `[{"questionId": str, "prediction": str}, ...]`.
* NLVR2: CSV lines `identifier,True` / `identifier,False`, without a header.

Entries are written in the order of `expected_ids`, so the same predictions
give the same bytes whatever order the batches finished in.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

from lxmert_jax.evaluation.common import EvaluationError, check_id_list, write_text_atomically

PathLike = str | os.PathLike
Predictions = Sequence[tuple[Hashable, Any]] | Mapping[Hashable, Any]

_DIGITS = re.compile(r"[0-9]+\Z")
_NOT_WRITTEN = "not written: "


def _pairs(predictions: Predictions, path: PathLike) -> list[tuple[Any, Any]]:
  """The `(id, answer)` pairs of a sequence of pairs (or of a mapping)."""
  items = predictions.items() if isinstance(predictions, Mapping) else predictions
  pairs = []
  for index, item in enumerate(items):
    if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
      raise EvaluationError(f"{_NOT_WRITTEN}predictions[{index}] must be an (id, answer) "
                            f"pair, got {item!r}", path=path)
    pairs.append((item[0], item[1]))
  return pairs


def _expected(expected_ids: Iterable[Hashable], path: PathLike) -> list[Hashable]:
  expected = list(dict.fromkeys(expected_ids))
  if not expected:
    raise EvaluationError(f"{_NOT_WRITTEN}expected_ids is empty; expected every question "
                          "of the split", path=path)
  return expected


def _check(ids: list[Hashable], expected: list[Hashable], *, what: str,
           path: PathLike) -> None:
  check_id_list(ids, expected, what=what, path=path, scope="the split", prefix=_NOT_WRITTEN)


def _answer_text(answer: Any, qid: Hashable, path: PathLike) -> str:
  if not isinstance(answer, str):
    raise EvaluationError(f"{_NOT_WRITTEN}answer must be a string, got "
                          f"{type(answer).__name__} {answer!r}", path=path, key=qid)
  return str(answer)


def _vqa_question_id(value: Any, *, path: PathLike, what: str) -> int:
  """An int, or a digit string, as the int the VQA server expects."""
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    return int(value)
  if isinstance(value, str) and _DIGITS.match(value):
    return int(value)
  raise EvaluationError(f"{_NOT_WRITTEN}{what} must be an integer or a string of digits "
                        f"(VQA question ids are integers), got {type(value).__name__} "
                        f"{value!r}", path=path, key=value)


def write_vqa_submission(path: PathLike, predictions: Predictions,
                         expected_ids: Iterable[int | str]) -> None:
  """Writes a VQA results file, `[{"question_id": int, "answer": str}]`.

  Args:
    path: the results file to write (for the server, named like
      `vqa_test-dev2015_<method>_results.json`).
    predictions: `(question_id, answer)` pairs; ids are ints or digit strings.
    expected_ids: every question id of the split (ints or digit strings).

  Raises:
    EvaluationError: naming `path`, when an id is not an integer, an answer is
      not a string, or the ids are not exactly `expected_ids` once each
      (missing, unknown and repeated ids reported together). Nothing is
      written then.
  """
  pairs = _pairs(predictions, path)
  ids = [_vqa_question_id(qid, path=path, what="question id") for qid, _ in pairs]
  expected = [_vqa_question_id(qid, path=path, what="expected question id")
              for qid in _expected(expected_ids, path)]
  _check(ids, expected, what="question", path=path)
  answers = {qid: _answer_text(answer, qid, path) for qid, (_, answer) in zip(ids, pairs)}
  entries = [{"question_id": qid, "answer": answers[qid]} for qid in dict.fromkeys(expected)]
  write_text_atomically(path, json.dumps(entries) + "\n")


def write_gqa_submission(path: PathLike, predictions: Predictions,
                         expected_ids: Iterable[str]) -> None:
  """Writes a GQA predictions file, `[{"questionId": str, "prediction": str}]`.

  Args:
    path: the predictions file to write (e.g. `testdev_balanced_predictions.json`).
    predictions: `(question_id, answer)` pairs; GQA ids are strings.
    expected_ids: every question id of the split, e.g. the keys of
      `submission_all_questions.json` for the test server.

  Raises:
    EvaluationError: naming `path`, when an id or answer is not a string, or
      the ids are not exactly `expected_ids` once each. Nothing is written then.
  """
  pairs = _pairs(predictions, path)
  for qid, _ in pairs:
    if not isinstance(qid, str):
      raise EvaluationError(f"{_NOT_WRITTEN}question id must be a string (GQA ids are "
                            f"strings such as '20968388'), got {type(qid).__name__} {qid!r}",
                            path=path, key=qid)
  ids = [qid for qid, _ in pairs]
  expected = _expected(expected_ids, path)
  _check(ids, expected, what="question", path=path)
  answers = {qid: _answer_text(answer, qid, path) for qid, answer in pairs}
  entries = [{"questionId": str(qid), "prediction": answers[qid]} for qid in expected]
  write_text_atomically(path, json.dumps(entries) + "\n")


def _nlvr2_label(value: Any, identifier: str, path: PathLike) -> str:
  """"True" or "False" for a bool, 1/0 or the strings "True"/"False"."""
  if isinstance(value, (bool, np.bool_)):
    return "True" if value else "False"
  if isinstance(value, numbers.Integral) and value in (0, 1):
    return "True" if value == 1 else "False"
  if isinstance(value, str) and value in ("True", "False"):
    return str(value)
  raise EvaluationError(f"{_NOT_WRITTEN}prediction must be a bool, 1/0 or 'True'/'False', "
                        f"got {type(value).__name__} {value!r}", path=path, key=identifier)


def write_nlvr2_submission(path: PathLike, predictions: Predictions,
                           expected_ids: Iterable[str]) -> None:
  """Writes an NLVR2 predictions CSV: `identifier,True|False` lines, no header.

  Args:
    path: the CSV to write (e.g. `test1_predictions.csv`).
    predictions: `(identifier, prediction)` pairs; a prediction is a bool,
      1/0 or "True"/"False".
    expected_ids: every identifier of the split (`test1-0-1-0`, ...).

  Raises:
    EvaluationError: naming `path`, when an identifier is not a string that
      fits in a CSV field, a prediction is anything else than the above, or the
      identifiers are not exactly `expected_ids` once each. Nothing is written
      then.
  """
  pairs = _pairs(predictions, path)
  for identifier, _ in pairs:
    if not isinstance(identifier, str) or not identifier or any(
        c == "," or c.isspace() for c in identifier):
      raise EvaluationError(f"{_NOT_WRITTEN}identifier must be a non-empty string without "
                            f"commas or spaces (like 'test1-0-1-0'), got {identifier!r}",
                            path=path, key=identifier)
  ids = [identifier for identifier, _ in pairs]
  expected = _expected(expected_ids, path)
  _check(ids, expected, what="example", path=path)
  labels = {identifier: _nlvr2_label(value, identifier, path) for identifier, value in pairs}
  write_text_atomically(path, "".join(f"{i},{labels[i]}\n" for i in expected))
