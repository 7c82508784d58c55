"""`python -m lxmert_jax.data.prepare`: reference TSV/JSON -> ArrayRecord datasets.

    python -m lxmert_jax.data.prepare pretrain --root data --out /data/lxmert_prepared
    python -m lxmert_jax.data.prepare vqa --root data --out /data/lxmert_prepared
    python -m lxmert_jax.data.prepare all --root data --out /data/lxmert_prepared --skip-bad

`--root` is the reference data directory (`data/` of the reference: `lxmert/`,
`vqa/`, `gqa/`, `nlvr2/`, `mscoco_imgfeat/`, `vg_gqa_imgfeat/`,
`nlvr2_imgfeat/`; see `layout`). Feature TSVs are streamed row by row and each
feature set is prepared once and shared by every task that needs it. Each
dataset is written to an `incomplete.*` directory that is renamed only when
complete, so re-running after an interruption skips what is done and restarts
what is not. The command ends with a summary of what was read, written and
skipped (by reason, with examples) for every dataset.

Your own images: extract Faster R-CNN features with MILVLG/bottom-up-attention.pytorch
(`extract_features.py --extract-mode roi_feats --out-dir FEATURES_DIR`, one
`<image>.npz` per image), write questions in the reference VQA format (a JSON
list of `{"question_id", "img_id", "sent", "label": {answer: score}}`; img_id is
the `.npz` file name without `.npz`; `label` may be left out for questions to
predict only), then

    python -m lxmert_jax.data.prepare npz --features FEATURES_DIR \\
        --questions train=q_train.json,val=q_val.json [--answers label2ans.json] \\
        --out DATA_DIR

Split names are free (letters, digits, `_`). The answer vocabulary is
`--answers` (a JSON list, label2ans, or an ans2label object) or is built from
the labelled splits (`--vocab-splits` to choose them). The result is a
`lxmert_vqa` dataset like the official one, so fine-tuning and prediction read
it unchanged (question ids should be integers for VQA results files):

    python -m lxmert_jax.main --config=configs/vqa.py --workdir=runs/mine \\
        --config.data.dir=DATA_DIR --config.data.train_split=train \\
        --config.data.eval_split=val
    python -m lxmert_jax.evaluate --workdir=runs/mine --split=test
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from lxmert_jax.data import errors
from lxmert_jax.data import layout
from lxmert_jax.data.prepare import custom_vqa
from lxmert_jax.data.prepare import feature_sets
from lxmert_jax.data.prepare import task_datasets
from lxmert_jax.data import tokenization

Inputs = task_datasets.Inputs
Options = task_datasets.Options
PrepareReport = feature_sets.PrepareReport

TASKS = ("pretrain", "vqa", "gqa", "nlvr2")


def prepare_task(task: str, data_dir: str, inputs: Inputs, opts: Options | None = None, *,
            splits: Sequence[str] | None = None,
            qa_sets: Sequence[str] | None = None) -> list[PrepareReport]:
  """Prepares one task's dataset (and its feature sets).

  Args:
    task: "pretrain", "vqa", "gqa" or "nlvr2".
    data_dir: root of the prepared data.
    inputs: where the reference files are.
    opts: preparation options.
    splits: splits to prepare (default: every known split whose file exists).
    qa_sets: pre-training only: restrict the answer table to these QA sets.

  Returns:
    Reports of every dataset written or reused.
  """
  if task == "pretrain":
    return task_datasets.prepare_pretrain(data_dir, inputs, opts, splits=splits, qa_sets=qa_sets)
  fns = {"vqa": task_datasets.prepare_vqa, "gqa": task_datasets.prepare_gqa,
         "nlvr2": task_datasets.prepare_nlvr2}
  if task not in fns:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
  return fns[task](data_dir, inputs, opts, splits=splits)


def prepare_all(data_dir: str, inputs: Inputs, opts: Options | None = None,
                tasks: Sequence[str] = TASKS) -> list[PrepareReport]:
  """Prepares several tasks in turn, sharing their feature sets."""
  reports = []
  for task in tasks:
    task_inputs = Inputs(root=inputs.root, feature_files=inputs.feature_files,
                         objects_vocab=inputs.objects_vocab,
                         attributes_vocab=inputs.attributes_vocab)
    reports.extend(prepare_task(task, data_dir, task_inputs, opts))
  return reports


def summarize(reports: Sequence[PrepareReport]) -> str:
  """One block per dataset, de-duplicating feature sets reused across tasks."""
  seen, blocks = set(), []
  for report in reports:
    if report.reused and report.name in seen:
      continue
    seen.add(report.name)
    blocks.append(report.summary())
  return "\n".join(blocks)


def _parse_feature_files(items: Sequence[str]) -> dict[str, str]:
  out = {}
  for item in items:
    name, sep, path = item.partition("=")
    if not sep:
      raise argparse.ArgumentTypeError(f"--features {item!r}: expected SET=PATH")
    out[name] = path
  return out


def _parse_questions(items: Sequence[str]) -> dict[str, str]:
  out = {}
  for item in (part for group in items for part in group.split(",") if part):
    split, sep, path = item.partition("=")
    if not sep or not split or not path:
      raise ValueError(f"--questions {item!r}: expected SPLIT=FILE")
    if split in out:
      raise ValueError(f"--questions: split {split!r} given twice")
    out[split] = path
  return out


def _main_npz(args: argparse.Namespace, parser: argparse.ArgumentParser,
              opts: Options) -> list[PrepareReport]:
  if len(args.features) != 1 or not args.questions:
    parser.error("npz: give --features FEATURES_DIR (the folder of .npz files) once and "
                 "--questions SPLIT=FILE[,SPLIT=FILE...]")
  try:
    questions = _parse_questions(args.questions)
    for split in questions:
      layout.check_name(split, "split")
    layout.check_name(args.feature_set, "feature set")
  except ValueError as err:
    parser.error(str(err))
  return custom_vqa.prepare_npz_vqa(
      args.out, args.features[0], questions, answers=args.answers,
      vocab_splits=args.vocab_splits.split(",") if args.vocab_splits else None,
      feature_set=args.feature_set, opts=opts)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lxmert_jax.data.prepare",
                                   description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=layout.__doc__)
  parser.add_argument("task", choices=TASKS + ("all", "npz"),
                      help="a reference task, all of them, or npz (your own features and "
                      "questions)")
  parser.add_argument("--out", required=True, help="prepared data directory (data_dir)")
  parser.add_argument("--root", default=None, help="reference data root")
  parser.add_argument("--ann-dir", default=None,
                      help="annotation directory of the task (default ROOT/<task dir>)")
  parser.add_argument("--features", action="append", default=[], metavar="SET=PATH",
                      help="TSV of a feature set, e.g. train2014=/x/train2014_obj36.tsv; "
                      "npz: the folder of per-image .npz files")
  parser.add_argument("--questions", action="append", default=[], metavar="SPLIT=FILE,...",
                      help="npz: questions JSON of each split, e.g. train=q_train.json,val=q.json")
  parser.add_argument("--answers", default=None,
                      help="npz: answer vocabulary, a JSON list (label2ans) or ans2label object "
                      "(default: built from the labelled splits)")
  parser.add_argument("--vocab-splits", default=None,
                      help="npz: comma-separated splits whose labels build the vocabulary "
                      "(default all)")
  parser.add_argument("--feature-set", default=custom_vqa.DEFAULT_FEATURE_SET,
                      help="npz: name of the feature set written (default %(default)s)")
  parser.add_argument("--splits", default=None, help="comma-separated splits (default: all found)")
  parser.add_argument("--qa-sets", default=None,
                      help="pretrain: answers used by these QA sets only, e.g. vqa,gqa")
  parser.add_argument("--tokenizer", default="bert", choices=["bert", "spm"])
  parser.add_argument("--tokenizer-path", default=None,
                      help="vocab.txt (bert; default the shipped vocab) or .model (spm)")
  parser.add_argument("--objects-vocab", default=None)
  parser.add_argument("--attributes-vocab", default=None)
  parser.add_argument("--skip-bad", action="store_true",
                      help="count and skip bad rows/records instead of stopping")
  parser.add_argument("--overwrite", action="store_true", help="rebuild existing datasets")
  parser.add_argument("--part-mb", type=int, default=feature_sets.DEFAULT_PART_BYTES >> 20,
                      help="TSV megabytes per stored part of a feature set")
  parser.add_argument("--compress-features", action="store_true",
                      help="zstd-compress feature records (smaller on disk, slower to read)")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if args.task == "all" and (args.ann_dir or args.splits):
    parser.error("--ann-dir and --splits apply to a single task")
  if args.task != "npz" and args.root is None and args.ann_dir is None:
    parser.error("give --root (or --ann-dir and --features)")
  opts = Options(tokenizer=tokenization.make_tokenizer(args.tokenizer, args.tokenizer_path),
                 skip_bad=args.skip_bad, overwrite=args.overwrite, progress=not args.no_progress,
                 features_part_bytes=args.part_mb << 20,
                 compress_features=args.compress_features)
  try:
    if args.task == "npz":
      reports = _main_npz(args, parser, opts)
    elif args.task == "all":
      reports = prepare_all(args.out, _inputs(args), opts)
    else:
      reports = prepare_task(args.task, args.out, _inputs(args), opts,
                             splits=args.splits.split(",") if args.splits else None,
                             qa_sets=args.qa_sets.split(",") if args.qa_sets else None)
  except errors.DataError as err:
    print(f"error: {err}\n(re-run with --skip-bad to skip and count bad items)", file=sys.stderr)
    return 2
  print(summarize(reports))
  return 0


def _inputs(args: argparse.Namespace) -> Inputs:
  return Inputs(root=args.root, ann_dir=args.ann_dir,
                feature_files=_parse_feature_files(args.features),
                objects_vocab=args.objects_vocab, attributes_vocab=args.attributes_vocab)


if __name__ == "__main__":
  sys.exit(main())
