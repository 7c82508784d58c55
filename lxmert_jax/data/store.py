"""Read access to prepared data: task records, image features, dataset facts.

Sources are opened lazily and re-opened after unpickling, so the objects here
can be shipped to grain worker processes.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import numpy as np

from lxmert_jax.data import layout
from lxmert_jax.data import tfds_builders


@functools.lru_cache(maxsize=64)
def _metadata_at(path: str, mtime_ns: int) -> dict:
  del mtime_ns  # Part of the cache key: a rebuilt dataset is read again.
  return tfds_builders.read_metadata(path)


def _metadata(path: str) -> dict:
  info = os.path.join(path, "dataset_info.json")
  if not os.path.exists(info):
    raise FileNotFoundError(
        f"{path} is not a prepared dataset; run `python -m lxmert_jax.data.prepare` "
        "(or lxmert_jax.data.build_demo_data) first")
  return _metadata_at(path, os.stat(info).st_mtime_ns)


def task_metadata(data_dir: str, task: str) -> dict:
  """Metadata of a prepared task dataset (cached per process)."""
  return _metadata(os.path.abspath(layout.task_path(data_dir, task)))


def features_metadata(data_dir: str, set_name: str) -> dict:
  return _metadata(os.path.abspath(layout.features_path(data_dir, set_name)))


def resolve_splits(split: str | Sequence[str]) -> list[str]:
  """`"a+b"` or `["a", "b"]` -> `["a", "b"]`."""
  names = split.split("+") if isinstance(split, str) else list(split)
  if not names or any(not n for n in names):
    raise ValueError(f"bad split {split!r}")
  return names


class Records:
  """Random access to the records of one or more logical splits of a task."""

  def __init__(self, data_dir: str, task: str, splits: Sequence[str],
               fields: Sequence[str] | None = None):
    self.data_dir = data_dir
    self.task = task
    self.splits = list(splits)
    self.fields = list(fields) if fields is not None else None
    self.metadata = task_metadata(data_dir, task)
    missing = [s for s in self.splits if s not in self.metadata["split_parts"]]
    if missing:
      raise KeyError(f"{layout.task_path(data_dir, task)} has no split(s) {missing}; "
                     f"prepared: {sorted(self.metadata['split_parts'])}")
    self._source = None

  @property
  def source(self):
    if self._source is None:
      self._source = tfds_builders.open_split(layout.task_path(self.data_dir, self.task),
                                              "+".join(self.splits), self.metadata, self.fields)
    return self._source

  def __len__(self) -> int:
    return sum(self.metadata["num_examples"][s] for s in self.splits)

  def __repr__(self) -> str:
    # Grain compares reprs to check a restored iterator reads the same data.
    return (f"Records({os.path.abspath(self.data_dir)!r}, {self.task!r}, {self.splits!r}, "
            f"n={len(self)})")

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[int(index)]

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state


_IMAGE_FIELDS = ("num_boxes", "boxes", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                 "features")


class FeatureStore:
  """Images of the feature sets a task uses, padded or cut to O boxes."""

  def __init__(self, data_dir: str, feature_sets: Sequence[str], num_objects: int):
    self.data_dir = data_dir
    self.feature_sets = list(feature_sets)
    self.num_objects = num_objects
    self.feature_dim = features_metadata(data_dir, self.feature_sets[0])["feature_dim"]
    self._sources: dict[int, Any] = {}

  def _source(self, set_id: int):
    src = self._sources.get(set_id)
    if src is None:
      path = layout.features_path(self.data_dir, self.feature_sets[set_id])
      src = tfds_builders.open_split(path, tfds_builders.IMAGES_SPLIT,
                                     _metadata(os.path.abspath(path)), _IMAGE_FIELDS)
      self._sources[set_id] = src
    return src

  def raw(self, set_id: int, index: int) -> dict[str, Any]:
    """The stored record (float16 features, normalised boxes, n boxes)."""
    return self._source(int(set_id))[int(index)]

  def image(self, set_id: int, index: int) -> dict[str, np.ndarray]:
    """One image as fixed-size arrays.

    Returns:
      features float16 [O, F], boxes float32 [O, 4], mask int32 [O], and
      obj/attr ids (int32) and confidences (float32) [O]; boxes past the
      stored count are zeros with mask 0, boxes beyond O are dropped.
    """
    rec = self.raw(set_id, index)
    o = self.num_objects
    n = min(int(rec["num_boxes"]), o)
    feats = rec["features"]
    if feats.shape[0] != o:
      padded = np.zeros((o, feats.shape[1]), np.float16)
      padded[:n] = feats[:n]
      feats = padded
    out = {"features": feats, "mask": np.zeros((o,), np.int32)}
    out["mask"][:n] = 1
    for key, dtype, width in (("boxes", np.float32, 4), ("objects_id", np.int32, None),
                              ("objects_conf", np.float32, None), ("attrs_id", np.int32, None),
                              ("attrs_conf", np.float32, None)):
      arr = rec[key]
      if arr.shape[0] != o:
        padded = np.zeros((o, width) if width else (o,), dtype)
        padded[:n] = arr[:n]
        arr = padded
      out[key] = arr
    return out

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_sources"] = {}
    return state


def dataset_info(data_dir: str, task: str = "pretrain") -> dict[str, Any]:
  """Facts about a prepared task dataset that a trainer needs to build a model.

  Args:
    data_dir: root of the prepared data.
    task: "pretrain", "vqa", "gqa" or "nlvr2".

  Returns:
    For "pretrain": `num_qa_labels`, `num_object_labels`, `num_attr_labels`,
    `visual_feat_dim`, `vocab_size`, `num_examples` ({split: n}), `sources`,
    `answers`, `tokenizer`. For "vqa"/"gqa": `num_answers` and `label2ans`
    instead of the pre-training label spaces. For "nlvr2": no label spaces.
  """
  meta = task_metadata(data_dir, task)
  info = {
      "visual_feat_dim": meta["visual_feat_dim"],
      "vocab_size": meta["tokenizer"]["vocab_size"],
      "num_examples": dict(meta["num_examples"]),
      "tokenizer": dict(meta["tokenizer"]),
      "feature_sets": list(meta["feature_sets"]),
  }
  if task == "pretrain":
    info.update(num_qa_labels=len(meta["answers"]), answers=list(meta["answers"]),
                num_object_labels=meta["num_object_labels"],
                num_attr_labels=meta["num_attr_labels"], sources=list(meta["sources"]))
  elif task in ("vqa", "gqa"):
    info.update(num_answers=len(meta["label2ans"]), label2ans=list(meta["label2ans"]))
  return info
