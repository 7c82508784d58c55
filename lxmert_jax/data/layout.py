"""Where things live: the reference inputs and the prepared data directory.

Reference inputs (as released with the reference, under one root):

    <root>/lxmert/{mscoco_train,mscoco_nominival,vgnococo,mscoco_minival}.json
    <root>/lxmert/all_ans.json
    <root>/vqa/{train,nominival,minival,test}.json  [+ trainval_ans2label.json,
                                                     trainval_label2ans.json]
    <root>/gqa/{train,valid,testdev,submit}.json     [+ the same vocab files]
    <root>/nlvr2/{train,valid,test}.json
    <root>/mscoco_imgfeat/{train2014,val2014,test2015}_obj36.tsv
    <root>/vg_gqa_imgfeat/{vg_gqa,gqa_testdev}_obj36.tsv
    <root>/nlvr2_imgfeat/{train,valid,test}_obj36.tsv
    <root>/objects_vocab.txt, attributes_vocab.txt  (optional: the detector's
                                                     label names, one a line)

Prepared data (`python -m lxmert_jax.data.prepare ... --out DATA_DIR`):

    DATA_DIR/lxmert_features/<set>/1.0.0/   one per TSV ("feature set":
        train2014, val2014, test2015, vg_gqa, gqa_testdev, nlvr2_train,
        nlvr2_valid, nlvr2_test); split "images"; metadata: img_id -> record
        index, feature_dim, source file.
    DATA_DIR/lxmert_pretrain/1.0.0/  splits mscoco_train, mscoco_nominival,
        vgnococo, mscoco_minival (whichever were prepared); metadata: answer
        table, tokenizer, feature sets, label counts; `<split>.index.npz`
        (per-record source, feature set and index, for sampling).
    DATA_DIR/lxmert_vqa/1.0.0/    splits train, nominival, minival, test; label2ans.
    DATA_DIR/lxmert_gqa/1.0.0/    splits train, valid, testdev, submit; label2ans.
    DATA_DIR/lxmert_nlvr2/1.0.0/  splits train, valid, test.

Users' own features and questions (`python -m lxmert_jax.data.prepare npz`):

    DATA_DIR/lxmert_features/<set>/1.0.0/  from a folder of per-image `.npz`
        files (bottom-up-attention.pytorch's extractor; default set "npz").
    DATA_DIR/lxmert_vqa/1.0.0/  the splits named on the command line (e.g.
        train, val), every one on that feature set; label2ans from
        `--answers` or built from the labelled splits.

Each is a TFDS ArrayRecord dataset readable with `tfds.builder_from_directory`
/ `tfds.data_source`; large splits are stored in parts (`<split>_partNNNNN`:
about 1 GB of TSV per feature-set part, 256 MB of records per task part) that
`tfds_builders.open_split` joins in order.
"""

from __future__ import annotations

import os
import re

from lxmert_jax.data import tfds_builders

PRETRAIN_SPLITS = ("mscoco_train", "mscoco_nominival", "vgnococo", "mscoco_minival")

# Which feature set holds the images of each split (the reference's choice of
# TSV per split; mscoco_minival is part of val2014).
SPLIT_FEATURES = {
    "pretrain": {"mscoco_train": "train2014", "mscoco_nominival": "val2014",
                 "mscoco_minival": "val2014", "vgnococo": "vg_gqa"},
    "vqa": {"train": "train2014", "nominival": "val2014", "minival": "val2014",
            "test": "test2015"},
    "gqa": {"train": "vg_gqa", "valid": "vg_gqa", "testdev": "gqa_testdev",
            "submit": "vg_gqa"},
    "nlvr2": {"train": "nlvr2_train", "valid": "nlvr2_valid", "test": "nlvr2_test"},
}

# Annotation directory of each task under the reference root.
ANNOTATION_DIRS = {"pretrain": "lxmert", "vqa": "vqa", "gqa": "gqa", "nlvr2": "nlvr2"}

# TSV of each feature set, relative to the reference root.
FEATURE_FILES = {
    "train2014": "mscoco_imgfeat/train2014_obj36.tsv",
    "val2014": "mscoco_imgfeat/val2014_obj36.tsv",
    "test2015": "mscoco_imgfeat/test2015_obj36.tsv",
    "vg_gqa": "vg_gqa_imgfeat/vg_gqa_obj36.tsv",
    "gqa_testdev": "vg_gqa_imgfeat/gqa_testdev_obj36.tsv",
    "nlvr2_train": "nlvr2_imgfeat/train_obj36.tsv",
    "nlvr2_valid": "nlvr2_imgfeat/valid_obj36.tsv",
    "nlvr2_test": "nlvr2_imgfeat/test_obj36.tsv",
}

TASK_DATASETS = {
    "pretrain": tfds_builders.PRETRAIN_NAME, "vqa": tfds_builders.VQA_NAME,
    "gqa": tfds_builders.GQA_NAME, "nlvr2": tfds_builders.NLVR2_NAME,
}

# Detector label-space sizes of the reference features (Visual Genome
# 1600 objects / 400 attributes), used when no vocab file is given.
DEFAULT_NUM_OBJECT_LABELS = 1600
DEFAULT_NUM_ATTR_LABELS = 400


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")


def check_name(name: str, what: str) -> str:
  """A feature-set or split name chosen by the user: letters, digits, `_`.

  Raises:
    ValueError: naming `what` and the name, for anything else (a name becomes
      a directory or a TFDS split, and `+` joins splits).
  """
  if not isinstance(name, str) or not _NAME.fullmatch(name) or "_part" in name:
    raise ValueError(f"{what} name {name!r}: expected letters, digits and '_' (starting with "
                     "a letter or digit, without '_part')")
  return name


def feature_file(root: str | None, set_name: str,
                 overrides: dict[str, str] | None = None) -> str:
  """The TSV of a feature set: an explicit override, else under `root`."""
  if overrides and set_name in overrides:
    return overrides[set_name]
  if set_name not in FEATURE_FILES:
    raise KeyError(f"unknown feature set {set_name!r}; known: {sorted(FEATURE_FILES)} "
                   "(or pass its TSV explicitly)")
  if root is None:
    raise ValueError(f"no TSV given for feature set {set_name!r} and no reference root")
  return os.path.join(root, FEATURE_FILES[set_name])


def annotation_dir(root: str | None, task: str, override: str | None = None) -> str:
  if override:
    return override
  if root is None:
    raise ValueError(f"no annotation directory for {task} and no reference root")
  return os.path.join(root, ANNOTATION_DIRS[task])


def features_path(data_dir: str, set_name: str) -> str:
  return tfds_builders.dataset_dir(data_dir, tfds_builders.FEATURES_NAME, set_name)


def task_path(data_dir: str, task: str) -> str:
  return tfds_builders.dataset_dir(data_dir, TASK_DATASETS[task])
