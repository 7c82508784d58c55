"""Errors raised on bad input data, and the ledger of what `--skip-bad` skipped.

Every problem found while reading the reference TSV/JSON files (or users'
per-image `.npz` features) becomes a `DataError` that names where it is (file,
TSV line number, JSON key or `.npz` key) and what was expected, so a 50 GB
preparation run that stops tells the user exactly which row to look at. With
`--skip-bad` the same errors are recorded in a `SkipLog` instead; nothing is
dropped without being counted and reported.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, TypeVar

_T = TypeVar("_T")

# Reasons, used as the keys of the skip summary.
TRUNCATED_ROW = "truncated_row"
BAD_FIELD = "bad_field"
BAD_BASE64 = "bad_base64"
BOX_COUNT_MISMATCH = "box_count_mismatch"
BAD_VALUE = "bad_value"
DUPLICATE_IMAGE = "duplicate_image"
MISSING_IMAGE = "missing_image"
UNKNOWN_ANSWER = "unknown_answer"
BAD_JSON = "bad_json"
BAD_RECORD = "bad_record"
MISSING_KEY = "missing_key"
UNREADABLE_FILE = "unreadable_file"


class DataError(ValueError):
  """A problem in an input file, located precisely.

  Attributes:
    reason: a short slug (one of the module constants) used to group skips.
    path: the offending file.
    line: 1-based line number for TSV rows, else None.
    key: the JSON path, image id or question id, else None.
    detail: what was wrong and what was expected.
  """

  def __init__(self, reason: str, detail: str, *, path: str | None = None,
               line: int | None = None, key: str | None = None):
    self.reason = reason
    self.path = path
    self.line = line
    self.key = key
    self.detail = detail
    super().__init__(self._format())

  def _format(self) -> str:
    where = str(self.path) if self.path is not None else "<input>"
    if self.line is not None:
      where += f":{self.line}"
    if self.key is not None:
      where += f" [{self.key}]"
    return f"{where}: {self.reason}: {self.detail}"


@dataclasses.dataclass
class SkipLog:
  """Counts of skipped items per reason, with the first few messages of each.

  Attributes:
    skip_bad: when False, `guard` re-raises instead of recording.
    max_examples: how many messages to keep per reason.
  """

  skip_bad: bool = False
  max_examples: int = 3
  counts: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def record(self, err: DataError) -> None:
    """Counts one skipped item; raises it when skipping is off."""
    if not self.skip_bad:
      raise err
    self.counts[err.reason] += 1
    kept = self.examples.setdefault(err.reason, [])
    if len(kept) < self.max_examples:
      kept.append(str(err))

  def guard(self, fn: Callable[[], _T]) -> _T | None:
    """Runs `fn`; on a `DataError` records it and returns None (or raises)."""
    try:
      return fn()
    except DataError as err:
      self.record(err)
      return None

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def merge(self, other: "SkipLog") -> None:
    self.counts.update(other.counts)
    for reason, msgs in other.examples.items():
      kept = self.examples.setdefault(reason, [])
      kept.extend(msgs[:max(0, self.max_examples - len(kept))])

  def summary(self) -> str:
    """A multi-line report: one line per reason, then its example messages."""
    if not self.counts:
      return "skipped: nothing"
    lines = [f"skipped: {self.total} item(s)"]
    for reason, n in sorted(self.counts.items()):
      lines.append(f"  {reason}: {n}")
      lines.extend(f"    e.g. {msg}" for msg in self.examples.get(reason, []))
    return "\n".join(lines)

  def as_dict(self) -> dict[str, int]:
    return dict(self.counts)
