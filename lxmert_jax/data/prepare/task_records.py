"""What every task dataset's preparation shares, and the question-dataset writer.

Records point at their image(s) in prepared feature sets by `(feat_set,
feat_index)`, carry word-piece ids tokenised once here, and are written in
parts small enough for TFDS to hold in memory. The question writer
(`write_questions`) takes the split -> feature-set mapping and the answer
vocabulary from its caller, so the reference VQA/GQA files (fixed splits and
feature sets, `task_datasets`) and users' own questions against their own
features (any split names, `custom_vqa`) become the same kind of dataset.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tqdm

from lxmert_jax.data import errors
from lxmert_jax.data import layout
from lxmert_jax.data import tfds_builders
from lxmert_jax.data import tokenization
from lxmert_jax.data.prepare import annotations
from lxmert_jax.data.prepare import feature_sets

PrepareReport = feature_sets.PrepareReport

# Estimated serialized bytes per stored part of a task split (TFDS holds a
# split in memory while writing it).
DEFAULT_RECORD_PART_BYTES = 256 << 20
_TOKENIZE_CHUNK = 2048

# Builds a task's label2ans from the parsed splits; returns it and where it came from.
AnswerVocab = Callable[[dict[str, list["Resolved"]]], tuple[list[str], str]]


@dataclasses.dataclass
class Options:
  """How to prepare.

  Attributes:
    tokenizer: tokenizer whose ids are stored (default BERT uncased).
    skip_bad: count and skip bad items instead of stopping.
    overwrite: rebuild datasets that already exist.
    progress: show progress bars.
    features_part_bytes: TSV bytes per stored part of a feature set.
    compress_features: zstd-compress feature records (smaller, slower to read).
    record_part_bytes: estimated bytes per stored part of a task split.
  """

  tokenizer: tokenization.Tokenizer | None = None
  skip_bad: bool = False
  overwrite: bool = False
  progress: bool = True
  features_part_bytes: int = feature_sets.DEFAULT_PART_BYTES
  compress_features: bool = False
  record_part_bytes: int = DEFAULT_RECORD_PART_BYTES


@dataclasses.dataclass
class Resolved:
  """A parsed datum with its image(s) located in the feature sets."""

  datum: Any
  feat: tuple[tuple[int, int], ...]  # ((feat_set, feat_index), ...)
  target: Any = None  # the datum's answers in the task's id space


def locate(img_id: str, set_id: int, set_name: str, meta: dict, path: str,
           key: str) -> tuple[int, int]:
  """`(set_id, record index)` of an image, or a `DataError` naming `path` and `key`."""
  index = meta["img_index"].get(img_id)
  if index is None:
    raise errors.DataError(
        errors.MISSING_IMAGE,
        f"image {img_id!r} is not in feature set {set_name!r} ({meta.get('source_file')}); "
        "expected every annotated image to have features", path=path, key=key)
  return set_id, index


def inputs_fingerprint(paths: dict[str, str]) -> dict[str, dict]:
  return {split: {"path": os.path.abspath(p), "size": os.path.getsize(p)}
          for split, p in paths.items()}


def already_prepared(data_dir: str, task: str, input_files: dict[str, str],
                     opts: Options, report: PrepareReport) -> bool:
  """True (and `report.reused`) when the same inputs were prepared before."""
  name = layout.TASK_DATASETS[task]
  if opts.overwrite or not tfds_builders.is_prepared(data_dir, name):
    return False
  meta = tfds_builders.read_metadata(layout.task_path(data_dir, task))
  want = inputs_fingerprint(input_files)
  if meta.get("inputs") != want:
    raise errors.DataError(
        errors.BAD_FIELD, f"{layout.task_path(data_dir, task)} was prepared from "
        f"{meta.get('inputs')}; pass overwrite to rebuild it from {want}", key=task)
  report.reused = True
  return True


def load_split(path: str, log: errors.SkipLog) -> Any | None:
  return log.guard(lambda: annotations.load_json(path))


def _tokenized(tokenizer: tokenization.Tokenizer, items: Sequence[Resolved],
               progress: bool, desc: str) -> Iterator[tuple[Resolved, np.ndarray]]:
  """Yields each item with the int32 word-piece ids of its sentence."""
  with tqdm.tqdm(total=len(items), desc=desc, unit=" sent", disable=not progress,
                 mininterval=1.0) as pbar:
    for start in range(0, len(items), _TOKENIZE_CHUNK):
      chunk = items[start:start + _TOKENIZE_CHUNK]
      for item, ids in zip(chunk, tokenizer.tokenize_ids([r.datum.sent for r in chunk])):
        yield item, np.asarray(ids, dtype=np.int32)
      pbar.update(len(chunk))


def part_bounds(sizes: Sequence[int], max_bytes: int) -> list[int]:
  """Cut points `[0, ..., n]` so each part's estimated bytes stay under max."""
  bounds = [0]
  total = 0
  for i, size in enumerate(sizes):
    if total + size > max_bytes and i > bounds[-1]:
      bounds.append(i)
      total = 0
    total += size
  bounds.append(len(sizes))
  return bounds


def split_plan(split: str, items: list[Resolved],
               make_record: Callable[[Resolved, np.ndarray], dict],
               tokenizer: tokenization.Tokenizer, opts: Options, task: str
               ) -> list[tuple[str, Callable[[], Iterator[dict]]]]:
  """Parts of one split; all parts share one tokenising stream in order."""
  sizes = [160 + 6 * len(r.datum.sent) for r in items]
  bounds = part_bounds(sizes, opts.record_part_bytes)
  stream = (make_record(item, ids) for item, ids in
            _tokenized(tokenizer, items, opts.progress, f"{task} {split}"))
  names = tfds_builders.part_names(split, len(bounds) - 1)

  def take(n: int) -> Iterator[dict]:
    for _ in range(n):
      yield next(stream)

  return [(name, lambda n=hi - lo: take(n)) for name, lo, hi in zip(names, bounds, bounds[1:])]


def common_metadata(task: str, tokenizer: tokenization.Tokenizer, feature_sets: list[str],
                    feature_metas: dict[str, dict], split_sets: dict[str, str],
                    input_files: dict[str, str], parts: dict[str, list], counts: dict[str, int],
                    log: errors.SkipLog) -> dict:
  return {
      "task": task,
      "tokenizer": tokenizer.spec(),
      "special_ids": {"pad": tokenizer.pad_id, "unk": tokenizer.unk_id, "cls": tokenizer.cls_id,
                      "sep": tokenizer.sep_id, "mask": tokenizer.mask_id},
      "feature_sets": feature_sets,
      "split_features": split_sets,
      "visual_feat_dim": next(iter(feature_metas.values()))["feature_dim"],
      "inputs": inputs_fingerprint(input_files),
      "split_parts": {s: [name for name, _ in p] for s, p in parts.items()},
      "num_examples": counts,
      "skipped": log.as_dict(),
  }


def _targets(items: list[Resolved], ans2label: dict[str, int], vocab_source: str,
             strict_answers: bool, path: str, log: errors.SkipLog) -> int:
  """Sets each item's `(answer ids, scores)`; returns how many answers were dropped."""
  dropped = 0
  for r in items:
    ids, scores = [], []
    for ans, score in (r.datum.label or {}).items():
      if ans in ans2label:
        ids.append(ans2label[ans])
        scores.append(float(score))
        continue
      dropped += 1
      if strict_answers:
        log.record(errors.DataError(
            errors.UNKNOWN_ANSWER, f"answer {ans!r} is not in the {len(ans2label)}-answer "
            f"vocabulary ({vocab_source}); expected only vocabulary answers",
            path=path, key=r.datum.key))
    r.target = (ids, scores)
  return dropped


def _question_record(item: Resolved, ids: np.ndarray) -> dict:
  q = item.datum
  ans, scores = item.target
  return {"question_id": q.question_id, "img_id": q.img_id, "sent": q.sent,
          "feat_set": item.feat[0][0], "feat_index": item.feat[0][1], "token_ids": ids,
          "ans_ids": np.array(ans, np.int32), "ans_scores": np.array(scores, np.float32)}


def write_questions(task: str, data_dir: str, split_files: dict[str, str],
                    split_sets: dict[str, str], feature_metas: dict[str, dict],
                    answer_vocab: AnswerVocab, *, strict_answers: bool, opts: Options,
                    log: errors.SkipLog, report: PrepareReport,
                    input_files: dict[str, str] | None = None) -> PrepareReport:
  """Writes a VQA/GQA-style question dataset (`lxmert_<task>`).

  Args:
    task: "vqa" or "gqa" (the dataset written and the loader that reads it).
    data_dir: root of the prepared data.
    split_files: questions JSON of each split (the reference VQA format).
    split_sets: feature set holding each split's images.
    feature_metas: metadata of each prepared feature set, in the order the
      records' `feat_set` ids refer to.
    answer_vocab: builds label2ans from the parsed splits.
    strict_answers: an answer outside the vocabulary is an error (else it is
      dropped from the targets and counted).
    opts: preparation options.
    log: where skipped items are counted.
    report: filled in and returned.
    input_files: files fingerprinted for re-use checks (default `split_files`).

  Raises:
    DataError: a malformed question, an image missing from its feature set
      (naming the questions file and the question), an answer outside a
      strict vocabulary; unless `opts.skip_bad`.
  """
  tokenizer = opts.tokenizer or tokenization.make_tokenizer("bert")
  set_order = list(feature_metas)
  parsed: dict[str, list[Resolved]] = {}
  for split, path in split_files.items():
    data = load_split(path, log)
    if data is None:
      continue
    set_name = split_sets[split]
    set_id = set_order.index(set_name)
    questions = annotations.parse_questions(path, data, log)
    report.read[split] = len(questions)
    items = []
    for q in questions:
      feat = log.guard(lambda q=q: locate(q.img_id, set_id, set_name, feature_metas[set_name],
                                          path, q.key))
      if feat is not None:
        items.append(Resolved(q, (feat,)))
    parsed[split] = items
  label2ans, vocab_source = answer_vocab(parsed)
  ans2label = {a: i for i, a in enumerate(label2ans)}

  dropped = 0
  parts: dict[str, list] = {}
  counts: dict[str, int] = {}
  for split, items in parsed.items():
    dropped += _targets(items, ans2label, vocab_source, strict_answers, split_files[split], log)
    if not items:
      raise ValueError(f"{split_files[split]}: no questions left after skipping bad items")
    parts[split] = split_plan(split, items, _question_record, tokenizer, opts, task)
    counts[split] = report.written[split] = len(items)

  if not parts:
    raise ValueError(f"{sorted(split_files.values())}: nothing to prepare for {task}")
  metadata = common_metadata(task, tokenizer, set_order, feature_metas, split_sets,
                             input_files or split_files, parts, counts, log)
  metadata.update({"label2ans": label2ans, "answer_vocab_source": vocab_source,
                   "answers_outside_vocab": dropped})
  plan = tfds_builders.GenerationPlan(parts=parts, metadata=metadata)
  tfds_builders.write_dataset(data_dir, layout.TASK_DATASETS[task], plan,
                              overwrite=opts.overwrite)
  report.skipped = log
  report.notes.append(f"answer vocabulary: {len(label2ans)} ({vocab_source}); answers outside "
                      f"it {'skipped as errors' if strict_answers else 'ignored'}: {dropped}")
  return report
