"""Errors, id checks and file access shared by the evaluators and submission writers.

The benchmarks' own scripts stop on a bad input with a bare `KeyError`, an
`assert` or a printed list; these helpers turn every such case into an
`EvaluationError` that names the file, the id and what was expected, so a
prediction file that is one question short says which question. Files meant
for a benchmark server are written whole or not at all
(`write_text_atomically`): a half-written one would be scored as a bad result.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
from typing import Any, Hashable, Iterable, Mapping, Sequence

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
    except UnicodeDecodeError as e:
      raise EvaluationError(f"not UTF-8 text: {e}", path=path) from None


def read_json_lines(path: str | os.PathLike) -> list[Any]:
  """One parsed JSON value per non-blank line (the NLVR2 `.json` files)."""
  records = []
  with open(path, encoding="utf-8") as f:
    number = 0   # text is decoded in chunks, so a decoding error has no exact line
    try:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        records.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise EvaluationError(f"line {number} is not valid JSON: {e}", path=path) from None
    except UnicodeDecodeError as e:
      raise EvaluationError(f"not UTF-8 text: {e}", path=path) from None
  return records


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` in full or not at all.

  The text goes to a hidden file beside `path`, is flushed to disk and then
  renamed over `path`, so an interrupted or failed write leaves either the
  previous file or none, never a truncated one that looks complete. Missing
  parent directories are created; the file gets the usual umask permissions.
  """
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  temporary = os.path.join(directory,
                           f".{os.path.basename(path)}.{secrets.token_hex(4)}.partial")
  try:
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with open(descriptor, "w", encoding="utf-8", newline="") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise


def _listed(ids: list[Hashable]) -> str:
  shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS])
  rest = len(ids) - _SHOWN_IDS
  return shown + (f" (and {rest} more)" if rest > 0 else "")


def _type_hint(unknown: Hashable, known: set[Hashable], scope: str) -> str:
  """Why an unknown id may be a known one in disguise (123 vs "123"), or ""."""
  by_text = {str(i): i for i in known}
  twin = by_text.get(str(unknown))
  if twin is None:
    return ""
  return (f", and the ids of {scope} have {twin!r} ({type(twin).__name__}) where the "
          f"prediction id is {type(unknown).__name__}")


def check_id_list(ids: Sequence[Hashable], expected: Iterable[Hashable], *, what: str,
                  path: str | os.PathLike | None = None,
                  known: Iterable[Hashable] | None = None,
                  scope: str = "the annotations", prefix: str = "") -> None:
  """Requires `ids` to hold every expected id once and nothing outside `known`.

  Every kind of problem is reported in the one error, so a prediction run that
  lost a batch and repeated another says both: missing ids (how many, and the
  first few), unknown ids, and ids given more than once.

  Args:
    ids: the predicted ids, in order, repeats included.
    expected: the ids that must be predicted (questions, NLVR2 identifiers).
    what: the kind of id, for messages ("question", "example").
    path: the predictions file, read or to be written.
    known: the ids a prediction may have; by default `expected`.
    scope: what `expected` is, for messages ("the annotations", "the split").
    prefix: put before the problems ("not written: ").

  Raises:
    EvaluationError: keyed by the first missing id, else the first unknown,
      else the first repeated one. An unknown id whose text equals a known
      id's text (123 vs "123") is pointed out as a type mismatch, the usual
      cause being ids read back from JSON keys.
  """
  expected = list(dict.fromkeys(expected))
  counts = collections.Counter(ids)
  known_set = set(expected if known is None else known)
  missing = [i for i in expected if i not in counts]
  unknown = [i for i in counts if i not in known_set]
  repeated = [i for i, n in counts.items() if n > 1]
  problems, keys = [], []
  if missing:
    problems.append(f"no prediction for {what} {_listed(missing)}: every {what} of {scope} "
                    f"needs one ({len(missing)} of {len(expected)} missing)")
    keys.append(missing[0])
  if unknown:
    problems.append(f"prediction for unknown {what} {_listed(unknown)}: not in {scope}"
                    + _type_hint(unknown[0], known_set, scope))
    keys.append(unknown[0])
  if repeated:
    problems.append(f"more than one prediction for {what} {_listed(repeated)} "
                    f"({len(repeated)} repeated, {sum(counts[i] for i in repeated)} "
                    "predictions)")
    keys.append(repeated[0])
  if problems:
    raise EvaluationError(prefix + "; ".join(problems), path=path, key=keys[0])


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
    EvaluationError: naming the first missing and unknown ids (see
      `check_id_list`).
  """
  check_id_list(list(predictions), expected, what=what, path=path, known=known)


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

