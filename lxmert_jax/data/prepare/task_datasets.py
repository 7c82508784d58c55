"""Reference JSON annotations -> pre-training / VQA / GQA / NLVR2 datasets.

Each record points at its image(s) in a prepared feature set by
`(feat_set, feat_index)` instead of copying features, and carries its
sentence's word-piece ids, tokenised once here (tokenisation is deterministic;
masking stays random per epoch in the pipeline). The feature sets a task needs
are prepared first (and reused when already there). What the tasks share
(locating images, parts, metadata, the question writer) is in `task_records`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from lxmert_jax.data.prepare import annotations
from lxmert_jax.data import errors
from lxmert_jax.data import layout
from lxmert_jax.data.prepare import feature_sets
from lxmert_jax.data.prepare import task_records
from lxmert_jax.data import tfds_builders
from lxmert_jax.data import tokenization

PrepareReport = feature_sets.PrepareReport
Options = task_records.Options
DEFAULT_RECORD_PART_BYTES = task_records.DEFAULT_RECORD_PART_BYTES


@dataclasses.dataclass
class Inputs:
  """Where the reference inputs are.

  Attributes:
    root: the reference data root (see `layout`); may be None when every
      path below is given.
    ann_dir: the task's annotation directory (default `<root>/<task dir>`).
    feature_files: TSV per feature set, overriding `<root>/...`.
    objects_vocab: detector object label names (sets the number of object
      labels; default `<root>/objects_vocab.txt` if present, else 1600).
    attributes_vocab: same for attributes (default 400).
  """

  root: str | None = None
  ann_dir: str | None = None
  feature_files: dict[str, str] = dataclasses.field(default_factory=dict)
  objects_vocab: str | None = None
  attributes_vocab: str | None = None


def _count_lines(path: str) -> int:
  with open(path, encoding="utf-8") as f:
    return sum(1 for line in f if line.strip())


def _label_space(inputs: Inputs, feature_metas: dict[str, dict]) -> tuple[int, int]:
  """Numbers of detector object / attribute labels, checked against the data."""
  sizes = []
  for given, name, default, key in (
      (inputs.objects_vocab, "objects_vocab.txt", layout.DEFAULT_NUM_OBJECT_LABELS,
       "max_object_id"),
      (inputs.attributes_vocab, "attributes_vocab.txt", layout.DEFAULT_NUM_ATTR_LABELS,
       "max_attr_id")):
    path = given or (os.path.join(inputs.root, name) if inputs.root else None)
    n = _count_lines(path) if path and os.path.exists(path) else default
    for set_name, meta in feature_metas.items():
      if meta.get(key, -1) >= n:
        raise errors.DataError(
            errors.BAD_VALUE, f"{key} is {meta[key]} but the label space has {n} labels "
            f"({path or 'default'}); expected ids < {n}",
            path=meta.get("source_file"), key=set_name)
    sizes.append(n)
  return sizes[0], sizes[1]


def _prepare_feature_sets(data_dir: str, set_names: Sequence[str], inputs: Inputs,
                          opts: Options, reports: list[PrepareReport]) -> dict[str, dict]:
  metas = {}
  for set_name in dict.fromkeys(set_names):
    tsv = layout.feature_file(inputs.root, set_name, inputs.feature_files)
    reports.append(feature_sets.prepare_features(
        data_dir, set_name, tsv, skip_bad=opts.skip_bad, overwrite=opts.overwrite,
        part_bytes=opts.features_part_bytes, compress=opts.compress_features,
        progress=opts.progress))
    metas[set_name] = tfds_builders.read_metadata(layout.features_path(data_dir, set_name))
  dims = {m["feature_dim"] for m in metas.values()}
  if len(dims) > 1:
    raise errors.DataError(errors.BAD_VALUE, f"feature sets disagree on the feature width: "
                           f"{ {k: m['feature_dim'] for k, m in metas.items()} }; expected one F",
                           key=",".join(metas))
  return metas


def _split_files(ann_dir: str, splits: Sequence[str] | None, known: Sequence[str],
                 log: errors.SkipLog) -> dict[str, str]:
  """Annotation file of each requested split (default: the known ones present)."""
  if splits is None:
    found = {s: os.path.join(ann_dir, f"{s}.json") for s in known}
    found = {s: p for s, p in found.items() if os.path.exists(p)}
    if not found:
      raise errors.DataError(errors.BAD_JSON, f"no split files found; expected some of "
                             f"{[s + '.json' for s in known]}", path=ann_dir)
    return found
  files = {}
  for split in splits:
    path = os.path.join(ann_dir, f"{split}.json")
    if os.path.exists(path):
      files[split] = path
    else:
      log.record(errors.DataError(errors.BAD_JSON, "file not found", path=path, key=split))
  return files


def prepare_pretrain(data_dir: str, inputs: Inputs, opts: Options | None = None, *,
                     splits: Sequence[str] | None = None,
                     qa_sets: Sequence[str] | None = None) -> list[PrepareReport]:
  """Prepares `lxmert_pretrain` (and the feature sets it needs).

  Args:
    data_dir: root of the prepared data.
    inputs: reference input locations.
    opts: preparation options.
    splits: pre-training splits (default: those of `layout.PRETRAIN_SPLITS`
      whose JSON exists).
    qa_sets: restrict the answer table to answers used by these QA sets (the
      reference's `--qaSets`; default all of `all_ans.json`).

  Returns:
    One report per dataset written or reused, the pre-training one last.
  """
  opts = opts or Options()
  tokenizer = opts.tokenizer or tokenization.make_tokenizer("bert")
  log = errors.SkipLog(skip_bad=opts.skip_bad)
  ann_dir = layout.annotation_dir(inputs.root, "pretrain", inputs.ann_dir)
  report = PrepareReport(name=tfds_builders.PRETRAIN_NAME,
                         path=layout.task_path(data_dir, "pretrain"))
  reports: list[PrepareReport] = []
  split_files = _split_files(ann_dir, splits, layout.PRETRAIN_SPLITS, log)
  split_sets = {s: layout.SPLIT_FEATURES["pretrain"].get(s) for s in split_files}
  unknown = [s for s, f in split_sets.items() if f is None and s not in inputs.feature_files]
  if unknown:
    raise ValueError(f"no feature set known for pre-training split(s) {unknown}; known: "
                     f"{sorted(layout.SPLIT_FEATURES['pretrain'])}")
  if task_records.already_prepared(data_dir, "pretrain", split_files, opts, report):
    return reports + [report]
  feature_metas = _prepare_feature_sets(data_dir, list(split_sets.values()), inputs, opts, reports)
  num_obj, num_attr = _label_space(inputs, feature_metas)
  feature_sets = list(feature_metas)
  table = annotations.AnswerTable.from_all_ans(os.path.join(ann_dir, "all_ans.json"), qa_sets)

  sources: list[str] = []
  parts: dict[str, list] = {}
  counts: dict[str, int] = {}
  index_arrays: dict[str, dict[str, np.ndarray]] = {}
  pruned_total = 0
  for split, path in split_files.items():
    data = task_records.load_split(path, log)
    if data is None:
      continue
    set_name = split_sets[split]
    set_id = feature_sets.index(set_name)
    meta = feature_metas[set_name]
    data = annotations.flatten_pretrain(path, data, log)
    report.read[split] = len(data)
    items = []
    for datum in data:
      feat = log.guard(lambda d=datum: task_records.locate(d.img_id, set_id, set_name, meta,
                                                           path, d.key))
      if feat is None:
        continue
      # None: a caption (no label); {}: a question whose answers were all pruned.
      target = table.prune_label(datum.label) if datum.label is not None else None
      pruned_total += int(target == {} and bool(datum.label))
      items.append(task_records.Resolved(datum, (feat,), target))
      if datum.source not in sources:
        sources.append(datum.source)
    del data
    index_arrays[split] = {
        "source": np.array([sources.index(r.datum.source) for r in items], np.uint8),
        "feat_set": np.array([r.feat[0][0] for r in items], np.uint8),
        "feat_index": np.array([r.feat[0][1] for r in items], np.int32),
        "has_label": np.array([r.target is not None for r in items], np.uint8),
    }

    def make_record(item: task_records.Resolved, ids: np.ndarray) -> dict:
      d = item.datum
      label = item.target or {}
      return {"uid": d.uid, "img_id": d.img_id, "source": d.source, "sent": d.sent,
              "feat_set": item.feat[0][0], "feat_index": item.feat[0][1], "token_ids": ids,
              "has_label": int(item.target is not None),
              "ans_ids": np.array(list(label), np.int32),
              "ans_scores": np.array(list(label.values()), np.float32)}

    if not items:
      raise ValueError(f"{path}: no pre-training data left after skipping bad items")
    parts[split] = task_records.split_plan(split, items, make_record, tokenizer, opts, "pretrain")
    counts[split] = report.written[split] = len(items)

  if not parts:
    raise ValueError(f"{ann_dir}: nothing to prepare for pre-training")
  metadata = task_records.common_metadata("pretrain", tokenizer, feature_sets, feature_metas,
                                          split_sets, split_files, parts, counts, log)
  metadata.update({"answers": table.answers, "qa_sets": list(qa_sets) if qa_sets else None,
                   "sources": sources, "num_object_labels": num_obj,
                   "num_attr_labels": num_attr, "labels_pruned_empty": pruned_total})

  def write_index(directory: str) -> None:
    for split, arrays in index_arrays.items():
      np.savez(os.path.join(directory, f"{split}.index.npz"), **arrays)

  plan = tfds_builders.GenerationPlan(parts=parts, metadata=metadata, extra_files=[write_index])
  tfds_builders.write_dataset(data_dir, tfds_builders.PRETRAIN_NAME, plan, overwrite=opts.overwrite)
  report.skipped = log
  report.notes.append(f"questions whose answers were all pruned: {pruned_total}")
  return reports + [report]


def _answer_vocab(task: str, ann_dir: str, parsed: dict[str, list],
                  vocab_splits: Sequence[str]) -> tuple[list[str], str]:
  """The task's label2ans: the provided trainval files, else built from data."""
  ans2label = os.path.join(ann_dir, "trainval_ans2label.json")
  if os.path.exists(ans2label):
    return (annotations.load_answer_vocab(ans2label, os.path.join(ann_dir,
                                                                  "trainval_label2ans.json")),
            ans2label)
  used = [s for s in vocab_splits if s in parsed]
  if not used:
    raise errors.DataError(errors.BAD_JSON, f"no trainval_ans2label.json and none of the "
                           f"splits {list(vocab_splits)} to build the {task} answer vocabulary "
                           "from", path=ans2label)
  labels = (r.datum.label for s in used for r in parsed[s])
  return annotations.build_answer_vocab(labels), f"built from {'+'.join(used)}"


def _prepare_questions(task: str, data_dir: str, inputs: Inputs, opts: Options,
                       splits: Sequence[str] | None, vocab_splits: Sequence[str],
                       strict_answers: bool) -> list[PrepareReport]:
  opts = opts or Options()
  log = errors.SkipLog(skip_bad=opts.skip_bad)
  ann_dir = layout.annotation_dir(inputs.root, task, inputs.ann_dir)
  report = PrepareReport(name=layout.TASK_DATASETS[task], path=layout.task_path(data_dir, task))
  reports: list[PrepareReport] = []
  known = list(layout.SPLIT_FEATURES[task])
  split_files = _split_files(ann_dir, splits, known, log)
  split_sets = {s: layout.SPLIT_FEATURES[task][s] for s in split_files}
  if task_records.already_prepared(data_dir, task, split_files, opts, report):
    return reports + [report]
  feature_metas = _prepare_feature_sets(data_dir, list(split_sets.values()), inputs, opts, reports)
  task_records.write_questions(
      task, data_dir, split_files, split_sets, feature_metas,
      lambda parsed: _answer_vocab(task, ann_dir, parsed, vocab_splits),
      strict_answers=strict_answers, opts=opts, log=log, report=report)
  return reports + [report]


def prepare_vqa(data_dir: str, inputs: Inputs, opts: Options | None = None, *,
                splits: Sequence[str] | None = None,
                vocab_splits: Sequence[str] = ("train", "nominival", "minival")
                ) -> list[PrepareReport]:
  """Prepares `lxmert_vqa`; an answer outside the vocabulary is an error.

  The vocabulary is `<ann_dir>/trainval_ans2label.json` when present, else
  built from the labels of `vocab_splits`.
  """
  return _prepare_questions("vqa", data_dir, inputs, opts, splits, vocab_splits,
                            strict_answers=True)


def prepare_gqa(data_dir: str, inputs: Inputs, opts: Options | None = None, *,
                splits: Sequence[str] | None = None,
                vocab_splits: Sequence[str] = ("train", "valid")) -> list[PrepareReport]:
  """Prepares `lxmert_gqa`; answers outside the vocabulary are ignored (as the
  reference does for GQA targets) and counted in the report."""
  return _prepare_questions("gqa", data_dir, inputs, opts, splits, vocab_splits,
                            strict_answers=False)


def prepare_nlvr2(data_dir: str, inputs: Inputs, opts: Options | None = None, *,
                  splits: Sequence[str] | None = None) -> list[PrepareReport]:
  """Prepares `lxmert_nlvr2` (and its three feature sets)."""
  opts = opts or Options()
  tokenizer = opts.tokenizer or tokenization.make_tokenizer("bert")
  log = errors.SkipLog(skip_bad=opts.skip_bad)
  ann_dir = layout.annotation_dir(inputs.root, "nlvr2", inputs.ann_dir)
  report = PrepareReport(name=tfds_builders.NLVR2_NAME, path=layout.task_path(data_dir, "nlvr2"))
  reports: list[PrepareReport] = []
  split_files = _split_files(ann_dir, splits, list(layout.SPLIT_FEATURES["nlvr2"]), log)
  split_sets = {s: layout.SPLIT_FEATURES["nlvr2"][s] for s in split_files}
  if task_records.already_prepared(data_dir, "nlvr2", split_files, opts, report):
    return reports + [report]
  feature_metas = _prepare_feature_sets(data_dir, list(split_sets.values()), inputs, opts, reports)
  feature_sets = list(feature_metas)
  parts: dict[str, list] = {}
  counts: dict[str, int] = {}
  for split, path in split_files.items():
    data = task_records.load_split(path, log)
    if data is None:
      continue
    set_name = split_sets[split]
    set_id = feature_sets.index(set_name)
    meta = feature_metas[set_name]
    statements = annotations.parse_nlvr2(path, data, log)
    report.read[split] = len(statements)
    items = []
    for d in statements:
      feats = log.guard(lambda d=d: tuple(
          task_records.locate(img, set_id, set_name, meta, path, f"{d.key}.{field}")
          for field, img in (("img0", d.img0), ("img1", d.img1))))
      if feats is not None:
        items.append(task_records.Resolved(d, feats))

    def make_record(item: task_records.Resolved, ids: np.ndarray) -> dict:
      d = item.datum
      (s0, i0), (s1, i1) = item.feat
      return {"identifier": d.identifier, "uid": d.uid, "sent": d.sent, "token_ids": ids,
              "img0": d.img0, "img1": d.img1, "feat_set0": s0, "feat_index0": i0,
              "feat_set1": s1, "feat_index1": i1, "label": d.label}

    if not items:
      raise ValueError(f"{path}: no statements left after skipping bad items")
    parts[split] = task_records.split_plan(split, items, make_record, tokenizer, opts, "nlvr2")
    counts[split] = report.written[split] = len(items)
  if not parts:
    raise ValueError(f"{ann_dir}: nothing to prepare for nlvr2")
  metadata = task_records.common_metadata("nlvr2", tokenizer, feature_sets, feature_metas,
                                          split_sets, split_files, parts, counts, log)
  plan = tfds_builders.GenerationPlan(parts=parts, metadata=metadata)
  tfds_builders.write_dataset(data_dir, tfds_builders.NLVR2_NAME, plan, overwrite=opts.overwrite)
  report.skipped = log
  return reports + [report]
