"""TFDS builders that store the prepared data as ArrayRecord.

Five datasets, each a `tfds.core.GeneratorBasedBuilder` written with
`file_format="array_record"` (no TensorFlow needed to write or read):

* `lxmert_features/<set>`: one reference TSV (a "feature set", e.g.
  `train2014`), one record per image: float16 RoI features, boxes normalised
  by the image size, detector labels and confidences. Records keep the TSV
  order; `metadata.json` maps each img_id to its record index.
* `lxmert_pretrain`: one record per (image, sentence), pointing at its image
  by `(feat_set, feat_index)`, with the pre-tokenised word-piece ids and the
  pruned QA label.
* `lxmert_vqa`, `lxmert_gqa`: one record per question, with answer ids/scores
  in the task's answer vocabulary.
* `lxmert_nlvr2`: one record per statement, pointing at its two images.

Large splits are written as several TFDS splits ("parts") because TFDS keeps
a split in memory (up to 1 GB) before writing it unless TensorFlow is
installed; metadata lists the parts of each logical split and readers join
them (`open_split`). A dataset becomes visible only when TFDS renames its
`incomplete.*` directory to the version directory, so an interrupted run never
leaves a dataset that looks complete.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Sequence

from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import writer as writer_lib

VERSION = "1.0.0"
FEATURES_NAME = "lxmert_features"
PRETRAIN_NAME = "lxmert_pretrain"
VQA_NAME = "lxmert_vqa"
GQA_NAME = "lxmert_gqa"
NLVR2_NAME = "lxmert_nlvr2"
# The logical split of a features dataset.
IMAGES_SPLIT = "images"

_Tensor = tfds.features.Tensor
_Text = tfds.features.Text
_Scalar = tfds.features.Scalar


def part_names(split: str, num_parts: int) -> list[str]:
  """TFDS split names of a logical split stored in `num_parts` parts."""
  if num_parts == 1:
    return [split]
  return [f"{split}_part{k:05d}" for k in range(num_parts)]


def _features_spec(feature_dim: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "img_id": _Text(),
      "img_h": _Scalar(dtype=np.int32),
      "img_w": _Scalar(dtype=np.int32),
      "num_boxes": _Scalar(dtype=np.int32),
      "boxes": _Tensor(shape=(None, 4), dtype=np.float32, encoding="bytes"),
      "objects_id": _Tensor(shape=(None,), dtype=np.int32, encoding="bytes"),
      "objects_conf": _Tensor(shape=(None,), dtype=np.float32, encoding="bytes"),
      "attrs_id": _Tensor(shape=(None,), dtype=np.int32, encoding="bytes"),
      "attrs_conf": _Tensor(shape=(None,), dtype=np.float32, encoding="bytes"),
      # float16 halves the storage and read time; the pipeline casts to float32.
      "features": _Tensor(shape=(None, feature_dim), dtype=np.float16, encoding="bytes"),
  })


def _ids(dtype=np.int32):
  return _Tensor(shape=(None,), dtype=dtype, encoding="bytes")


PRETRAIN_SPEC = {
    "uid": _Text(), "img_id": _Text(), "source": _Text(), "sent": _Text(),
    "feat_set": _Scalar(dtype=np.int32), "feat_index": _Scalar(dtype=np.int32),
    "token_ids": _ids(),
    "has_label": _Scalar(dtype=np.int32),  # 1 for questions (even if pruned empty)
    "ans_ids": _ids(), "ans_scores": _ids(np.float32),
}

QUESTION_SPEC = {
    "question_id": _Text(), "img_id": _Text(), "sent": _Text(),
    "feat_set": _Scalar(dtype=np.int32), "feat_index": _Scalar(dtype=np.int32),
    "token_ids": _ids(), "ans_ids": _ids(), "ans_scores": _ids(np.float32),
}

NLVR2_SPEC = {
    "identifier": _Text(), "uid": _Text(), "sent": _Text(), "token_ids": _ids(),
    "img0": _Text(), "img1": _Text(),
    "feat_set0": _Scalar(dtype=np.int32), "feat_index0": _Scalar(dtype=np.int32),
    "feat_set1": _Scalar(dtype=np.int32), "feat_index1": _Scalar(dtype=np.int32),
    "label": _Scalar(dtype=np.int32),
}


@dataclasses.dataclass
class GenerationPlan:
  """What a builder writes: parts of each logical split and their records.

  Attributes:
    parts: logical split -> list of (TFDS split name, record generator
      factory). Factories run in order, one part after the other.
    metadata: stored as the dataset's `metadata.json`; may be filled in while
      the generators run (it is written after them).
    extra_files: callables writing auxiliary files into the dataset directory
      while it is still incomplete, so they appear atomically with it.
    counts: filled with the number of records each TFDS split received.
  """

  parts: dict[str, list[tuple[str, Callable[[], Iterator[dict]]]]]
  metadata: dict[str, Any]
  extra_files: list[Callable[[str], None]] = dataclasses.field(default_factory=list)
  counts: dict[str, int] = dataclasses.field(default_factory=dict)


class _PlannedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes the records of a `GenerationPlan`, keeping their order."""

  VERSION = tfds.core.Version(VERSION)
  # TFDS looks up download checksums next to the builder's code; these
  # builders download nothing, and the lookup would need `importlib_resources`.
  code_path = None

  def __init__(self, *, plan: GenerationPlan | None = None, **kwargs):
    self._plan = plan
    super().__init__(**kwargs)

  SPEC: dict[str, Any] = {}

  def _spec(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(self.SPEC)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=(self.__doc__ or "").split("\n")[0],
        features=self._spec(), metadata=tfds.core.MetadataDict(),
        # Stored order = generation order, so record indices are meaningful.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._plan is None:
      raise RuntimeError(f"{self.name}: preparing needs a GenerationPlan")
    # `self.data_path` is the incomplete directory at this point.
    for write in self._plan.extra_files:
      write(os.fspath(self.data_path))
    self.info.metadata.update(self._plan.metadata)
    # Keep the plan's dict object so later changes reach metadata.json.
    self._plan.metadata = self.info.metadata
    gens = {}
    for split_parts in self._plan.parts.values():
      for name, factory in split_parts:
        gens[name] = self._generate_examples(name, factory)
    return gens

  def _generate_examples(self, name: str, factory: Callable[[], Iterator[dict]]):
    count = 0
    for record in factory():
      # Integer keys in increasing order keep the generation order on disk.
      yield count, record
      count += 1
    if count == 0:
      # TFDS cannot store an empty split; say why rather than fail inside it.
      raise ValueError(f"{self.name}: split {name} has no records (all input items were "
                       "skipped or the input is empty)")
    self._plan.counts[name] = count


class _ArrayRecordExampleWriter(writer_lib.ExampleWriter):
  """Writes ArrayRecord shards with explicit writer options."""

  def __init__(self, options: str):
    super().__init__(file_format=file_adapters.FileFormat.ARRAY_RECORD)
    self._options = options

  def write(self, path, examples):
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), self._options)
    for _, serialized in examples:
      writer.write(serialized)
    writer.close()


class LxmertFeatures(_PlannedBuilder):
  """RoI features of one reference TSV, one record per image.

  Records are stored uncompressed by default: zstd gains little on float16
  RoI features but its decompression costs as much as the rest of building a
  pre-training example (~150 us per 36 x 2048 image on one core).
  """

  def __init__(self, *, feature_dim: int | None = None, compress: bool = False, **kwargs):
    self._feature_dim = feature_dim
    self._compress = compress
    super().__init__(**kwargs)

  def _example_writer(self) -> writer_lib.ExampleWriter:
    # TFDS's hook for custom writers; its default writes zstd-compressed groups of 1.
    if self._compress:
      return super()._example_writer()
    return _ArrayRecordExampleWriter("group_size:1,uncompressed")

  def _spec(self):
    if self._feature_dim is None:
      raise RuntimeError("LxmertFeatures needs feature_dim to be prepared")
    return _features_spec(self._feature_dim)


class LxmertPretrain(_PlannedBuilder):
  """LXMERT pre-training (image, sentence) records."""

  SPEC = PRETRAIN_SPEC


class LxmertVqa(_PlannedBuilder):
  """VQA questions with soft answer scores."""

  SPEC = QUESTION_SPEC


class LxmertGqa(_PlannedBuilder):
  """GQA questions with their answer."""

  SPEC = QUESTION_SPEC


class LxmertNlvr2(_PlannedBuilder):
  """NLVR2 statements about image pairs."""

  SPEC = NLVR2_SPEC


BUILDERS = {
    FEATURES_NAME: LxmertFeatures, PRETRAIN_NAME: LxmertPretrain, VQA_NAME: LxmertVqa,
    GQA_NAME: LxmertGqa, NLVR2_NAME: LxmertNlvr2,
}


def dataset_dir(data_dir: str, name: str, config: str | None = None) -> str:
  """`data_dir/<name>[/<config>]/<version>`: where a prepared dataset lives."""
  parts = [data_dir, name] + ([config] if config else []) + [VERSION]
  return os.path.join(*parts)


def is_prepared(data_dir: str, name: str, config: str | None = None) -> bool:
  """True when the dataset's final directory exists with its dataset_info."""
  return os.path.exists(os.path.join(dataset_dir(data_dir, name, config), "dataset_info.json"))


def remove_stale(data_dir: str, name: str, config: str | None = None) -> list[str]:
  """Deletes `incomplete.*` directories left by an interrupted run."""
  parent = os.path.dirname(dataset_dir(data_dir, name, config))
  removed = []
  if os.path.isdir(parent):
    for entry in os.listdir(parent):
      if entry.startswith("incomplete."):
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        removed.append(os.path.join(parent, entry))
  return removed


def write_dataset(data_dir: str, name: str, plan: GenerationPlan, *, config: str | None = None,
                  overwrite: bool = False, **builder_kwargs) -> str:
  """Writes a planned dataset atomically and checks what landed on disk.

  Args:
    data_dir: root of the prepared data.
    name: one of `BUILDERS`.
    plan: the records to write.
    config: builder config name (the feature set, for `lxmert_features`).
    overwrite: replace an existing complete dataset.
    **builder_kwargs: extra builder arguments (`feature_dim`).

  Returns:
    The dataset's version directory.
  """
  final = dataset_dir(data_dir, name, config)
  remove_stale(data_dir, name, config)
  if os.path.exists(final):
    if not overwrite:
      raise FileExistsError(f"{final} already exists; pass overwrite=True to rebuild it")
    shutil.rmtree(final)
  cfg = tfds.core.BuilderConfig(name=config, description=f"{name}/{config}") if config else None
  builder = BUILDERS[name](plan=plan, data_dir=data_dir, config=cfg, file_format="array_record",
                           **builder_kwargs)
  # The callers report progress themselves; TFDS's own bars would interleave.
  tfds.disable_progress_bar()
  with tempfile.TemporaryDirectory() as downloads:
    builder.download_and_prepare(download_dir=downloads)
  info = tfds.builder_from_directory(final).info
  for split_parts in plan.parts.values():
    for part, _ in split_parts:
      on_disk = info.splits[part].num_examples
      if on_disk != plan.counts.get(part):
        raise RuntimeError(f"{final}: split {part} holds {on_disk} records, "
                           f"{plan.counts.get(part)} were generated")
  return final


def read_metadata(path: str) -> dict:
  """The metadata dict of a prepared dataset directory."""
  return dict(tfds.builder_from_directory(path).info.metadata or {})


class FastSource:
  """Reads records of a TFDS ArrayRecord source with a direct proto decoder.

  TFDS's generic decoder costs ~15 us per feature, which adds up to a large
  share of pre-training batch time. The records written here only hold
  strings, integer scalars and raw-byte tensors, so they decode with one
  `np.frombuffer` each. On open, the first record is decoded both ways; if
  they differ (another serialisation), TFDS's decoder is used throughout.
  """

  def __init__(self, source, features: tfds.features.FeaturesDict,
               fields: Sequence[str] | None = None):
    from tensorflow_datasets.core import example_parser  # pylint: disable=g-import-not-at-top
    self._source = source
    self._raw = getattr(source, "data_source", None)
    self._parse = example_parser.tf_example_pb2.Example.FromString
    self._plan = []
    for name, feature in features.items():
      if fields is not None and name not in fields:
        continue
      if isinstance(feature, tfds.features.Text):
        self._plan.append((name, "text", None, None))
      elif isinstance(feature, tfds.features.Scalar):
        self._plan.append((name, "int", None, None))
      elif isinstance(feature, tfds.features.Tensor):
        self._plan.append((name, "array", np.dtype(feature.np_dtype), tuple(feature.shape[1:])))
      else:
        self._raw = None
    if self._raw is not None and len(source):
      reference = source[0]
      if fields is not None:
        reference = {k: v for k, v in reference.items() if k in fields}
      if not _same_record(self._decode(0), reference):
        self._raw = None

  def _decode(self, index: int) -> dict[str, Any]:
    feature = self._parse(self._raw[index]).features.feature
    out = {}
    for name, kind, dtype, trailing in self._plan:
      if kind == "text":
        out[name] = feature[name].bytes_list.value[0]
      elif kind == "int":
        out[name] = int(feature[name].int64_list.value[0])
      else:
        out[name] = np.frombuffer(feature[name].bytes_list.value[0], dtype).reshape(
            (-1,) + trailing)
    return out

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self._raw is None:
      return self._source[index]
    return self._decode(index)


def _same_record(a: dict[str, Any], b: dict[str, Any]) -> bool:
  if a.keys() != b.keys():
    return False
  for key, value in a.items():
    other = b[key]
    if isinstance(value, np.ndarray):
      if not (isinstance(other, np.ndarray) and value.dtype == other.dtype
              and np.array_equal(value, other)):
        return False
    elif value != other:
      return False
  return True


def open_split(path: str, split: str, metadata: dict | None = None,
               fields: Sequence[str] | None = None):
  """A random-access source over a logical split (its parts joined in order).

  Args:
    path: a dataset version directory.
    split: a logical split name (`+`-joined names concatenate splits).
    metadata: the dataset metadata, if already loaded.
    fields: decode only these fields (default all).

  Returns:
    A random-access source (`len`, `[i]`) of decoded records, as TFDS's
    ArrayRecord data source returns them.
  """
  builder = tfds.builder_from_directory(path)
  meta = metadata if metadata is not None else dict(builder.info.metadata or {})
  parts_of = meta.get("split_parts", {})
  names = []
  for logical in split.split("+"):
    if logical not in parts_of:
      raise KeyError(f"{path}: no split {logical!r}; available: {sorted(parts_of)}")
    names.extend(parts_of[logical])
  return FastSource(builder.as_data_source(split="+".join(names)), builder.info.features,
                    fields)
