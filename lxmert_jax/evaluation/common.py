"""Errors and file reading shared by the official-metric evaluators.

The benchmarks' own scripts stop on a bad input with a bare `KeyError`, an
`assert` or a printed list; these helpers turn every such case into an
`EvaluationError` that names the file, the id and what was expected, so a
prediction file that is one question short says which question.
"""

from __future__ import annotations

import json
import os
from typing import Any, Hashable, Iterable, Mapping

# How many offending ids an error message lists before summarising the rest.
_SHOWN_IDS = 5


class EvaluationError(ValueError):
  """Predictions or annotations that cannot be scored, located precisely.

  Attributes:
    path: the offending file, or None for in-memory input.
    key: the question / example id or JSON key at fault, or None.
    detail: what was wrong and what was expected.
  """

  def __init__(self, detail: str, *, path: str | os.PathLike | None = None,
               key: Hashable | None = None):
    self.path = None if path is None else os.fspath(path)
    self.key = key
    self.detail = detail
    where = self.path if self.path is not None else "<input>"
    if key is not None:
      where += f" [{key!r}]"
    super().__init__(f"{where}: {detail}")


def read_json(path: str | os.PathLike) -> Any:
  """The parsed content of a JSON file; a syntax error names the file and position."""
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise EvaluationError(f"not valid JSON: {e}", path=path) from None


def read_json_lines(path: str | os.PathLike) -> list[Any]:
  """One parsed JSON value per non-blank line (the NLVR2 `.json` files)."""
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise EvaluationError(f"line {number} is not valid JSON: {e}", path=path) from None
  return records


def _listed(ids: list[Hashable]) -> str:
  shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS])
  rest = len(ids) - _SHOWN_IDS
  return shown + (f" (and {rest} more)" if rest > 0 else "")


def check_prediction_ids(predictions: Mapping[Hashable, Any], expected: Iterable[Hashable], *,
                         what: str, path: str | os.PathLike | None = None,
                         known: Iterable[Hashable] | None = None) -> None:
  """Requires a prediction for every expected id and none for ids outside `known`.

  Args:
    predictions: id -> prediction.
    expected: the ids that must be predicted (questions, NLVR2 identifiers).
    what: the kind of id, for messages ("question", "example").
    path: the predictions file, when they came from one.
    known: the ids a prediction may have; by default `expected`.

  Raises:
    EvaluationError: naming the first missing or unknown ids. An unknown id
      whose text equals an expected id's text (123 vs "123") is reported as a
      type mismatch, the usual cause being ids read back from JSON keys.
  """
  expected = list(expected)
  missing = [i for i in expected if i not in predictions]
  if missing:
    raise EvaluationError(
        f"no prediction for {what} {_listed(missing)}: every {what} of the annotations "
        f"needs one ({len(missing)} of {len(set(expected))} missing)", path=path, key=missing[0])
  known_set = set(expected if known is None else known)
  unknown = [i for i in predictions if i not in known_set]
  if unknown:
    by_text = {str(i): i for i in known_set}
    first = unknown[0]
    hint = ""
    if str(first) in by_text:
      hint = (f"; the annotations have {by_text[str(first)]!r} "
              f"({type(by_text[str(first)]).__name__}), the prediction key is "
              f"{type(first).__name__}")
    raise EvaluationError(
        f"prediction for unknown {what} {_listed(unknown)}: not in the annotations{hint}",
        path=path, key=first)


def require(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *,
            where: Hashable, path: str | os.PathLike | None) -> Any:
  """`record[key]`, which must exist and be of `kind`; else an error naming both."""
  if not isinstance(record, Mapping):
    raise EvaluationError(f"expected a JSON object, got {type(record).__name__}",
                          path=path, key=where)
  if key not in record:
    raise EvaluationError(f"missing field {key!r}", path=path, key=where)
  value = record[key]
  if not isinstance(value, kind):
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    raise EvaluationError(f"field {key!r} must be {names}, got {type(value).__name__}",
                          path=path, key=where)
  return value


def read_prediction_list(path: str | os.PathLike, id_key: str, id_kind: type | tuple[type, ...],
                         value_key: str, *, noun: str) -> dict[Hashable, str]:
  """`{id: value}` from a submission-style JSON array of `{id_key, value_key}` objects.

  Args:
    noun: what one entry is called in errors ("result", "prediction").

  Raises:
    EvaluationError: not an array, a malformed entry, or an id given twice.
  """
  content = read_json(path)
  if not isinstance(content, list):
    raise EvaluationError(f"{noun}s must be a JSON array of {{{id_key}, {value_key}}} objects",
                          path=path)
  values: dict[Hashable, str] = {}
  for index, entry in enumerate(content):
    qid = require(entry, id_key, id_kind, where=f"[{index}]", path=path)
    if qid in values:
      raise EvaluationError(f"question id has more than one {noun}", path=path, key=qid)
    values[qid] = require(entry, value_key, str, where=qid, path=path)
  return values

