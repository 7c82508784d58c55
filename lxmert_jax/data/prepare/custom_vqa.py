"""Users' own images and questions -> a VQA-style prepared dataset.

Fine-tuning and prediction read `lxmert_vqa` through the same loader whatever
its splits are called, so a user's data only has to be stored the way the
reference VQA data is: features from a folder of per-image `.npz` files
(`npz_features`) as one feature set, and questions in the reference VQA JSON
format (`[{question_id, img_id, sent, label: {answer: score}}]`, `label`
optional) as splits with the user's names, all pointing at that set. The
answer vocabulary is a given file or is built from the labelled splits.

    python -m lxmert_jax.data.prepare npz --features FEATURES_DIR \\
        --questions train=q_train.json,val=q_val.json [--answers label2ans.json] \\
        --out DATA_DIR
"""

from __future__ import annotations

import os
from typing import Sequence

from lxmert_jax.data import errors
from lxmert_jax.data import layout
from lxmert_jax.data import tfds_builders
from lxmert_jax.data.prepare import annotations
from lxmert_jax.data.prepare import npz_features
from lxmert_jax.data.prepare import task_records

TASK = "vqa"
DEFAULT_FEATURE_SET = "npz"
# The key under which `--answers` is fingerprinted beside the split files
# (not a valid split name, so it cannot collide with one).
_ANSWERS_INPUT = "--answers"


def _answer_vocab(answers: str | None, vocab_splits: Sequence[str] | None,
                  split_files: dict[str, str], report: task_records.PrepareReport
                  ) -> task_records.AnswerVocab:
  def vocab(parsed: dict[str, list[task_records.Resolved]]) -> tuple[list[str], str]:
    odd = sum(not r.datum.question_id.isdigit() for items in parsed.values() for r in items)
    if odd:
      report.notes.append(f"question ids that are not integers: {odd} (VQA results files, "
                          "written at prediction, need integer ids)")
    if answers is not None:
      return annotations.load_label2ans(answers), answers
    splits = list(vocab_splits) if vocab_splits is not None else list(parsed)
    used = [s for s in splits if any(r.datum.label for r in parsed.get(s, ()))]
    if not used:
      raise errors.DataError(
          errors.BAD_JSON, f"no answers file and no labelled questions in split(s) {splits} to "
          "build the answer vocabulary from; expected 'label' objects {answer: score} in "
          "them, or pass an answers file (a JSON list, label2ans)",
          path=",".join(split_files[s] for s in splits if s in split_files) or None)
    labels = (r.datum.label for s in used for r in parsed[s])
    return annotations.build_answer_vocab(labels), f"built from {'+'.join(used)}"
  return vocab


def prepare_npz_vqa(data_dir: str, features_dir: str, questions: dict[str, str], *,
                    answers: str | None = None, vocab_splits: Sequence[str] | None = None,
                    feature_set: str = DEFAULT_FEATURE_SET,
                    opts: task_records.Options | None = None, feature_dim: int | None = None,
                    part_images: int | None = None,
                    strict_answers: bool = False) -> list[task_records.PrepareReport]:
  """Prepares `.npz` features and questions as `DATA_DIR/lxmert_vqa` (idempotent).

  Args:
    data_dir: root of the prepared data (one user dataset per directory: it
      holds a single `lxmert_vqa`).
    features_dir: folder of per-image `.npz` files (img_id = file name stem).
    questions: split name -> questions JSON (reference VQA format).
    answers: answer vocabulary file, a JSON list (label2ans) or object
      (ans2label); default: built from the labelled questions.
    vocab_splits: splits whose labels build the vocabulary (default all).
    feature_set: name of the feature set written under `lxmert_features`.
    opts: preparation options (tokenizer, skip_bad, overwrite, progress, ...).
    feature_dim: expected feature width (default: from the first file).
    part_images: images per stored feature part (default: sized for memory).
    strict_answers: an answer outside a given vocabulary is an error (default:
      dropped from the targets and counted, as the reference VQA loader does).

  Returns:
    The feature set's report, then the question dataset's.

  Raises:
    ValueError: a split or feature-set name that is not letters, digits, `_`.
    DataError: bad `.npz` files, malformed questions, a question whose image
      has no `.npz` (naming the questions file and the question), a bad
      answers file; unless `opts.skip_bad`.
  """
  opts = opts or task_records.Options()
  if not questions:
    raise ValueError("no questions given; expected at least one SPLIT=FILE")
  for split, path in questions.items():
    layout.check_name(split, "split")
    if not os.path.isfile(path):
      raise errors.DataError(errors.BAD_JSON, "file not found; expected the questions of "
                             f"split {split!r}", path=path, key=split)
  if answers is not None and not os.path.isfile(answers):
    raise errors.DataError(errors.BAD_JSON, "answers file not found", path=answers)
  unknown = [s for s in vocab_splits or () if s not in questions]
  if unknown:
    raise ValueError(f"vocabulary split(s) {unknown} are not among the questions' splits "
                     f"{sorted(questions)}")
  features = npz_features.prepare_npz_features(
      data_dir, feature_set, features_dir, skip_bad=opts.skip_bad, overwrite=opts.overwrite,
      feature_dim=feature_dim, part_images=part_images, compress=opts.compress_features,
      progress=opts.progress)
  report = task_records.PrepareReport(name=layout.TASK_DATASETS[TASK],
                                      path=layout.task_path(data_dir, TASK))
  input_files = dict(questions)
  if answers is not None:
    input_files[_ANSWERS_INPUT] = answers
  if task_records.already_prepared(data_dir, TASK, input_files, opts, report):
    meta = tfds_builders.read_metadata(report.path)
    if meta.get("feature_sets") != [feature_set]:
      raise errors.DataError(
          errors.BAD_FIELD, f"{report.path} reads feature set(s) {meta.get('feature_sets')}; "
          f"pass overwrite to rebuild it on {feature_set!r}", key=feature_set)
    return [features, report]
  feature_metas = {feature_set: tfds_builders.read_metadata(features.path)}
  log = errors.SkipLog(skip_bad=opts.skip_bad)
  task_records.write_questions(
      TASK, data_dir, dict(questions), {s: feature_set for s in questions}, feature_metas,
      _answer_vocab(answers, vocab_splits, questions, report), strict_answers=strict_answers,
      opts=opts, log=log, report=report, input_files=input_files)
  return [features, report]
