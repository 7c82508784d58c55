"""Readers for the reference JSON annotations, and the answer tables.

Files (formats as released with the reference):

* pre-training `{mscoco_train,mscoco_nominival,vgnococo,mscoco_minival}.json`:
  a list of `{img_id, sentf: {source: [sent, ...]}, labelf: {source:
  [{answer: score}, ...]}}`; `labelf[source]` is aligned with `sentf[source]`
  and exists only for question sources;
* `all_ans.json`: the pre-training answer table, a list of `{ans, dsets}`
  whose order defines the answer ids;
* VQA / GQA: a list of `{question_id, img_id, sent, label: {answer: score}}`
  (no `label` in test files), plus optional `trainval_ans2label.json` /
  `trainval_label2ans.json` answer vocabularies (users' own questions use the
  same format, with either vocabulary file as `--answers`);
* NLVR2: a list of `{identifier, img0, img1, sent, label, uid}`.

Every structural problem raises `DataError` with the file and the JSON path of
the offending entry (e.g. `vgnococo.json[12].labelf.gqa[3]`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Sequence, TypeVar

from lxmert_jax.data import errors

_T = TypeVar("_T")

# The reference's `AnswerTable.ANS_CONVERT`.
ANS_CONVERT = {
    "a man": "man", "the man": "man", "a woman": "woman", "the woman": "woman",
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "grey": "gray",
}


def convert_ans(ans: str) -> str:
  """Normalises an answer string exactly as the reference's `convert_ans`."""
  if len(ans) == 0:
    return ""
  ans = ans.lower()
  if ans[-1] == ".":
    ans = ans[:-1].strip()
  if ans.startswith("a "):
    ans = ans[2:].strip()
  if ans.startswith("an "):
    ans = ans[3:].strip()
  if ans.startswith("the "):
    ans = ans[4:].strip()
  if ans in ANS_CONVERT:
    ans = ANS_CONVERT[ans]
  return ans


def load_json(path: str) -> Any:
  """Parses a JSON file, turning any failure into a located `DataError`."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise errors.DataError(errors.BAD_JSON, "file not found", path=path) from None
  except json.JSONDecodeError as err:
    raise errors.DataError(
        errors.BAD_JSON, f"not valid JSON at line {err.lineno} column {err.colno}: {err.msg}",
        path=path) from None
  except (OSError, UnicodeDecodeError) as err:
    raise errors.DataError(errors.BAD_JSON, f"unreadable ({err})", path=path) from None


def _expect(cond: bool, detail: str, path: str, key: str) -> None:
  if not cond:
    raise errors.DataError(errors.BAD_RECORD, detail, path=path, key=key)


def _expect_list(data: Any, path: str) -> list:
  _expect(isinstance(data, list), f"top level is {type(data).__name__}; expected a list",
          path, "$")
  return data


def _check_label(label: Any, path: str, key: str) -> dict[str, float]:
  _expect(isinstance(label, dict), f"label is {type(label).__name__}; expected an "
          "object {answer: score}", path, key)
  for ans, score in label.items():
    _expect(isinstance(score, (int, float)) and not isinstance(score, bool),
            f"score of answer {ans!r} is {score!r}; expected a number", path, key)
  return label


class AnswerTable:
  """Answer string <-> id, in the order of the answer list."""

  def __init__(self, answers: Sequence[str]):
    self.answers = list(answers)
    self.ans2id = {a: i for i, a in enumerate(self.answers)}
    if len(self.ans2id) != len(self.answers):
      dup = [a for a, n in collections.Counter(self.answers).items() if n > 1][:3]
      raise ValueError(f"answer table has duplicates, e.g. {dup}")

  def __len__(self) -> int:
    return len(self.answers)

  def used(self, ans: str) -> bool:
    return ans in self.ans2id

  @classmethod
  def from_all_ans(cls, path: str, dsets: Iterable[str] | None = None) -> "AnswerTable":
    """The pre-training table from `all_ans.json`, optionally restricted to QA sets."""
    data = _expect_list(load_json(path), path)
    wanted = set(dsets) if dsets is not None else None
    answers = []
    for i, item in enumerate(data):
      key = f"[{i}]"
      _expect(isinstance(item, dict) and isinstance(item.get("ans"), str),
              "expected an object with a string 'ans'", path, key)
      if wanted is None or wanted & set(item.get("dsets", [])):
        answers.append(item["ans"])
    return cls(answers)

  def prune_label(self, label: dict[str, float]) -> dict[int, float]:
    """Normalises a pre-training label and keeps the answers in the table.

    Reproduces the reference's in-place loop, including its behaviour when two
    raw answers normalise to the same string (the later one's score wins).

    Returns:
      `{answer_id: score}`, possibly empty.
    """
    label = dict(label)
    for ans in list(label.keys()):
      new_ans = convert_ans(ans)
      if self.used(new_ans):
        if ans != new_ans:
          label[new_ans] = label.pop(ans)
      else:
        label.pop(ans)
    return {self.ans2id[a]: float(s) for a, s in label.items()}


@dataclasses.dataclass
class PretrainDatum:
  """One (image, sentence) pair of the flattened pre-training data."""

  uid: str
  img_id: str
  source: str
  sent: str
  label: dict[str, float] | None
  key: str  # JSON path, for messages


def _parse_items(path: str, data: Any, parse_item: Callable[[str, int, Any], _T],
                 log: errors.SkipLog | None) -> list[_T]:
  """Applies `parse_item(key, i, item)` to each list entry, skipping via `log`."""
  name = os.path.basename(path)
  out = []
  for i, item in enumerate(_expect_list(data, path)):
    key = f"{name}[{i}]"
    if log is None:
      out.append(parse_item(key, i, item))
    else:
      parsed = log.guard(lambda key=key, i=i, item=item: parse_item(key, i, item))
      if parsed is not None:
        out.append(parsed)
  return out


def flatten_pretrain(path: str, data: Any,
                     log: errors.SkipLog | None = None) -> list[PretrainDatum]:
  """Flattens per-image pre-training entries into (image, sentence) data.

  uid is `"{img_id}_{source}_{idx:03d}"` as in the reference; questions carry
  their raw `{answer: score}` label.

  Args:
    path: the file (for messages).
    data: its parsed JSON.
    log: where malformed image entries are recorded (None: raise).

  Raises:
    DataError: an entry is not `{img_id, sentf, labelf}` or a label list is
      not aligned with its sentence list.
  """
  def parse(key: str, i: int, item: Any) -> list[PretrainDatum]:
    del i
    _expect(isinstance(item, dict), "expected an object {img_id, sentf, labelf}", path, key)
    img_id = item.get("img_id")
    _expect(isinstance(img_id, str) and bool(img_id), "missing or non-string 'img_id'",
            path, key + ".img_id")
    sentf = item.get("sentf")
    _expect(isinstance(sentf, dict), "missing 'sentf' object {source: [sentences]}",
            path, key + ".sentf")
    labelf = item.get("labelf", {})
    _expect(isinstance(labelf, dict), "'labelf' must be an object {source: [labels]}",
            path, key + ".labelf")
    data = []
    for source, sents in sentf.items():
      skey = f"{key}.sentf.{source}"
      _expect(isinstance(sents, list) and all(isinstance(s, str) for s in sents),
              "expected a list of sentence strings", path, skey)
      labels = labelf.get(source)
      if labels is not None:
        _expect(isinstance(labels, list) and len(labels) == len(sents),
                f"labelf.{source} has {len(labels) if isinstance(labels, list) else 'no'} "
                f"entries; expected one label per sentence ({len(sents)})",
                path, f"{key}.labelf.{source}")
      for j, sent in enumerate(sents):
        label = None
        if labels is not None:
          label = _check_label(labels[j], path, f"{key}.labelf.{source}[{j}]")
        data.append(PretrainDatum(uid=f"{img_id}_{source}_{j:03d}", img_id=img_id,
                                  source=source, sent=sent, label=label,
                                  key=f"{skey}[{j}]"))
    return data

  return [d for per_image in _parse_items(path, data, parse, log) for d in per_image]


@dataclasses.dataclass
class QuestionDatum:
  """A VQA or GQA question."""

  question_id: str
  img_id: str
  sent: str
  label: dict[str, float] | None
  key: str


def parse_questions(path: str, data: Any,
                    log: errors.SkipLog | None = None) -> list[QuestionDatum]:
  """Validates a VQA/GQA split file into `QuestionDatum`s (skipping via `log`)."""
  def parse(key: str, i: int, item: Any) -> QuestionDatum:
    _expect(isinstance(item, dict), "expected an object {question_id, img_id, sent, label}",
            path, key)
    qid = item.get("question_id")
    _expect(isinstance(qid, (int, str)) and not isinstance(qid, bool),
            "missing 'question_id'", path, key + ".question_id")
    key = f"{os.path.basename(path)}[{i}] (question_id {qid})"
    _expect(isinstance(item.get("img_id"), str), "missing or non-string 'img_id'",
            path, key + ".img_id")
    _expect(isinstance(item.get("sent"), str), "missing or non-string 'sent'",
            path, key + ".sent")
    label = item.get("label")
    if label is not None:
      label = _check_label(label, path, key + ".label")
    return QuestionDatum(question_id=str(qid), img_id=item["img_id"], sent=item["sent"],
                         label=label, key=key)

  return _parse_items(path, data, parse, log)


@dataclasses.dataclass
class Nlvr2Datum:
  """An NLVR2 statement about a pair of images."""

  identifier: str
  uid: str
  sent: str
  img0: str
  img1: str
  label: int  # 1 = True, 0 = False, -1 = unknown (unlabelled test)
  key: str


def parse_nlvr2(path: str, data: Any,
                log: errors.SkipLog | None = None) -> list[Nlvr2Datum]:
  """Validates an NLVR2 split file into `Nlvr2Datum`s (skipping via `log`)."""
  def parse(key: str, i: int, item: Any) -> Nlvr2Datum:
    _expect(isinstance(item, dict), "expected an object {identifier, img0, img1, sent, label}",
            path, key)
    ident = item.get("identifier")
    _expect(isinstance(ident, str), "missing or non-string 'identifier'", path,
            key + ".identifier")
    key = f"{os.path.basename(path)}[{i}] (identifier {ident})"
    for field in ("img0", "img1", "sent"):
      _expect(isinstance(item.get(field), str), f"missing or non-string {field!r}",
              path, f"{key}.{field}")
    label = item.get("label", -1)
    _expect(label in (0, 1, -1) and not isinstance(label, bool),
            f"label is {label!r}; expected 0 or 1", path, key + ".label")
    return Nlvr2Datum(identifier=ident, uid=str(item.get("uid", ident)), sent=item["sent"],
                      img0=item["img0"], img1=item["img1"], label=int(label), key=key)

  return _parse_items(path, data, parse, log)


def load_answer_vocab(ans2label_path: str, label2ans_path: str | None = None) -> list[str]:
  """Reads a task answer vocabulary (`trainval_ans2label.json` style).

  Returns:
    `label2ans`: the answer of each label id.

  Raises:
    DataError: the files are unreadable or disagree with each other.
  """
  ans2label = load_json(ans2label_path)
  _expect(isinstance(ans2label, dict), "expected an object {answer: label}", ans2label_path, "$")
  label2ans = [None] * len(ans2label)
  for ans, label in ans2label.items():
    _expect(isinstance(label, int) and 0 <= label < len(ans2label),
            f"label {label!r}; expected an int in [0, {len(ans2label)})", ans2label_path, ans)
    label2ans[label] = ans
  _expect(all(a is not None for a in label2ans), "labels are not 0..n-1 without gaps",
          ans2label_path, "$")
  if label2ans_path is not None and os.path.exists(label2ans_path):
    other = load_json(label2ans_path)
    _expect(other == label2ans, "label2ans disagrees with ans2label", label2ans_path, "$")
  return label2ans


def load_label2ans(path: str) -> list[str]:
  """An answer vocabulary given as a file: a JSON list (label2ans) or object (ans2label).

  Returns:
    `label2ans`: the answer of each label id.

  Raises:
    DataError: naming the file and the entry: not a list of distinct strings,
      or an ans2label object whose labels are not 0..n-1.
  """
  data = load_json(path)
  if isinstance(data, dict):
    return load_answer_vocab(path)
  _expect(isinstance(data, list) and bool(data),
          f"top level is {type(data).__name__}; expected a non-empty list of answers "
          "(label2ans) or an object {answer: label} (ans2label)", path, "$")
  seen: dict[str, int] = {}
  for i, ans in enumerate(data):
    _expect(isinstance(ans, str), f"entry is {ans!r}; expected an answer string", path, f"[{i}]")
    _expect(ans not in seen, f"answer {ans!r} repeats entry [{seen.get(ans)}]; expected each "
            "answer once", path, f"[{i}]")
    seen[ans] = i
  return list(data)


def build_answer_vocab(labels: Iterable[dict[str, float] | None], min_count: int = 1) -> list[str]:
  """An answer vocabulary from training labels.

  Answers are ordered by decreasing frequency, then alphabetically, so ids
  are stable for the same data.

  Args:
    labels: `{answer: score}` dicts (None entries are ignored).
    min_count: drop answers seen fewer times.

  Returns:
    `label2ans`.
  """
  counts = collections.Counter()
  for label in labels:
    if label:
      counts.update(label.keys())
  kept = [a for a, n in counts.items() if n >= min_count]
  return sorted(kept, key=lambda a: (-counts[a], a))
