"""Reference TSV -> `lxmert_features/<set>` ArrayRecord dataset, streamed.

One image is decoded, validated and handed to TFDS at a time; the file is cut
into parts of about `part_bytes` at line boundaries so that no TFDS split
buffers more than a few hundred MB. Record order is the TSV order, and the
img_id -> record index map goes into the dataset metadata, so sentence
records can point at their image by index.

The writer (`write_feature_set`, with `stored_record` and `ImageIndex`) takes
any stream of decoded images, so feature sets from other sources (per-image
`.npz` files, `npz_features`) are stored exactly as the TSV ones are.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import tqdm

from lxmert_jax.data import errors
from lxmert_jax.data import layout
from lxmert_jax.data import tfds_builders
from lxmert_jax.data.prepare import tsv_features

# TSV bytes per part. Features are float32 base64 in the TSV and float16
# binary in the records (~0.375x), so a part is ~400 MB in memory while written.
DEFAULT_PART_BYTES = 1 << 30


@dataclasses.dataclass
class PrepareReport:
  """What one dataset preparation read, wrote and skipped."""

  name: str
  path: str
  reused: bool = False
  read: dict[str, int] = dataclasses.field(default_factory=dict)
  written: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped: errors.SkipLog = dataclasses.field(default_factory=errors.SkipLog)
  notes: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    if self.reused:
      return f"{self.name}: already prepared at {self.path} (reused)"
    lines = [f"{self.name} -> {self.path}"]
    for split in self.read:
      lines.append(f"  {split}: read {self.read[split]}, written {self.written.get(split, 0)}")
    lines.extend(f"  {note}" for note in self.notes)
    lines.extend("  " + line for line in self.skipped.summary().split("\n"))
    return "\n".join(lines)


def _source_fingerprint(path: str) -> dict:
  stat = os.stat(path)
  return {"source_file": os.path.abspath(path), "source_size": stat.st_size}


def _first_feature_dim(path: str) -> int:
  """F of the first row that decodes (bad rows are reported by the main pass)."""
  for row in tsv_features.iter_rows(path):
    try:
      return int(tsv_features.decode_row(row, path).features.shape[1])
    except errors.DataError:
      continue
  raise errors.DataError(errors.TRUNCATED_ROW, "no decodable row; expected at least one "
                         "image in the reference 10-column format", path=path)


def stored_record(img: tsv_features.ImageFeatures, path: str, line: int | None, *,
                  lowest_label_id: int = 0) -> dict:
  """The stored form of one decoded image: normalised boxes, float16 features.

  Args:
    img: a decoded image, boxes in pixels.
    path, line: where it came from, for messages (line None for per-image files).
    lowest_label_id: smallest accepted object/attribute id (-1 where a reader
      marks labels the detector did not write).

  Raises:
    DataError: boxes outside the image, features float16 cannot hold, label
      ids out of range.
  """
  boxes = tsv_features.normalised_boxes(img, path, line)
  feats = tsv_features.features_fp16(img, path, line)
  for name, ids in (("objects_id", img.objects_id), ("attrs_id", img.attrs_id)):
    if ids.min() < lowest_label_id or ids.max() > np.iinfo(np.int32).max:
      raise errors.DataError(errors.BAD_VALUE,
                             f"{name} has value {ids.min()}..{ids.max()}; expected label "
                             f"ids >= {lowest_label_id}", path=path, line=line,
                             key=img.img_id)
  return {
      "img_id": img.img_id, "img_h": img.img_h, "img_w": img.img_w,
      "num_boxes": img.num_boxes, "boxes": boxes,
      "objects_id": img.objects_id.astype(np.int32),
      "objects_conf": img.objects_conf.astype(np.float32),
      "attrs_id": img.attrs_id.astype(np.int32),
      "attrs_conf": img.attrs_conf.astype(np.float32),
      "features": feats,
  }


class ImageIndex:
  """Where each written image went, and the facts the dataset metadata records."""

  def __init__(self):
    self.img_index: dict[str, int] = {}
    self.img_where: dict[str, str] = {}
    self.max_object_id = -1
    self.max_attr_id = -1
    self.box_counts: set[int] = set()

  def check_new(self, img_id: str, path: str, line: int | None) -> None:
    """Raises `DataError` when `img_id` was already written."""
    if img_id in self.img_index:
      raise errors.DataError(
          errors.DUPLICATE_IMAGE,
          f"image already stored from {self.img_where[img_id]}; expected each "
          "img_id once per feature set", path=path, line=line, key=img_id)

  def add(self, record: dict, where: str) -> None:
    self.img_where[record["img_id"]] = where
    self.img_index[record["img_id"]] = len(self.img_index)
    self.max_object_id = max(self.max_object_id, int(record["objects_id"].max()))
    self.max_attr_id = max(self.max_attr_id, int(record["attrs_id"].max()))
    self.box_counts.add(int(record["num_boxes"]))

  def metadata(self, log: errors.SkipLog) -> dict:
    return {"img_index": self.img_index, "num_images": len(self.img_index),
            "max_object_id": self.max_object_id, "max_attr_id": self.max_attr_id,
            "num_boxes": sorted(self.box_counts), "skipped": log.as_dict()}


class _FeatureRows:
  """Turns TSV rows into feature records, remembering where each image went."""

  def __init__(self, path: str, feature_dim: int, log: errors.SkipLog, progress: bool):
    self.path = path
    self.feature_dim = feature_dim
    self.log = log
    self.reader = tsv_features.TsvReader(path)
    self.index = ImageIndex()
    self.rows_read = 0
    self.pbar = tqdm.tqdm(total=os.path.getsize(path), unit="B", unit_scale=True,
                          unit_divisor=1024, desc=os.path.basename(path), disable=not progress,
                          mininterval=1.0)

  def _record(self, row: tsv_features.TsvRow) -> dict:
    img = tsv_features.decode_row(row, self.path, self.feature_dim)
    self.index.check_new(img.img_id, self.path, row.line)
    return stored_record(img, self.path, row.line)

  def part(self, end: int) -> Iterator[dict]:
    """Records of the rows up to byte offset `end`."""
    for row in self.reader.rows(end):
      self.rows_read += 1
      self.pbar.update(row.end - row.start)
      record = self.log.guard(lambda row=row: self._record(row))
      if record is None:
        continue
      self.index.add(record, f"line {row.line}")
      if self.rows_read % 256 == 0:
        self.pbar.set_postfix(images=len(self.index.img_index), skipped=self.log.total)
      yield record

  def close(self) -> None:
    self.pbar.set_postfix(images=len(self.index.img_index), skipped=self.log.total)
    self.pbar.close()
    self.reader.close()


def reuse_existing(data_dir: str, set_name: str, source: dict, overwrite: bool,
                   report: PrepareReport, input_path: str) -> bool:
  """True (and `report.reused`) when a complete set from the same `source` is there.

  Raises:
    DataError: a complete set exists but was prepared from another source.
  """
  if overwrite or not tfds_builders.is_prepared(data_dir, tfds_builders.FEATURES_NAME,
                                                set_name):
    return False
  meta = tfds_builders.read_metadata(report.path)
  prev = {k: meta.get(k) for k in source}
  if prev != source:
    raise errors.DataError(
        errors.BAD_FIELD, f"{report.path} was prepared from {prev}; pass overwrite to rebuild "
        "it from this input", path=input_path, key=set_name)
  report.reused = True
  return True


def write_feature_set(data_dir: str, set_name: str,
                      parts: Sequence[Callable[[], Iterator[dict]]], index: ImageIndex,
                      log: errors.SkipLog, *, feature_dim: int, metadata: dict,
                      overwrite: bool = False, compress: bool = False) -> None:
  """Writes `lxmert_features/<set_name>` from parts of stored image records.

  Args:
    data_dir: root of the prepared data.
    set_name: the feature set name.
    parts: one factory per stored part, each yielding records of
      `stored_record`'s form in order and adding them to `index`.
    index: filled while the parts run; its img_id -> record index map goes
      into the metadata.
    log: what was skipped (recorded in the metadata).
    feature_dim: F.
    metadata: source facts stored with the dataset (e.g. `source_file`).
    overwrite: replace an existing complete dataset.
    compress: zstd-compress the records.
  """
  names = tfds_builders.part_names(tfds_builders.IMAGES_SPLIT, len(parts))
  plan = tfds_builders.GenerationPlan(
      parts={tfds_builders.IMAGES_SPLIT: list(zip(names, parts))},
      metadata={"feature_set": set_name, "feature_dim": feature_dim, **metadata,
                "split_parts": {tfds_builders.IMAGES_SPLIT: names}})

  def finish_metadata(records):
    # Runs inside the last part's generator, before TFDS writes metadata.json.
    yield from records
    plan.metadata.update(index.metadata(log))

  last_name, last_factory = plan.parts[tfds_builders.IMAGES_SPLIT][-1]
  plan.parts[tfds_builders.IMAGES_SPLIT][-1] = (
      last_name, lambda: finish_metadata(last_factory()))
  tfds_builders.write_dataset(data_dir, tfds_builders.FEATURES_NAME, plan, config=set_name,
                              overwrite=overwrite, feature_dim=feature_dim, compress=compress)


def prepare_features(data_dir: str, set_name: str, tsv_path: str, *, skip_bad: bool = False,
                     overwrite: bool = False, part_bytes: int = DEFAULT_PART_BYTES,
                     feature_dim: int | None = None, compress: bool = False,
                     progress: bool = True) -> PrepareReport:
  """Writes `lxmert_features/<set_name>` from a reference TSV (idempotent).

  Args:
    data_dir: root of the prepared data.
    set_name: the feature set name (e.g. "train2014").
    tsv_path: the `*_obj36.tsv` file.
    skip_bad: count and skip bad rows instead of stopping at the first.
    overwrite: rebuild even if a complete dataset exists.
    part_bytes: TSV bytes per stored part.
    feature_dim: expected F (default: from the first decodable row).
    compress: zstd-compress the records (smaller, slower to read).
    progress: show a progress bar.

  Returns:
    The report; `reused` if a complete dataset from the same file was there.

  Raises:
    DataError: on the first bad row (unless `skip_bad`), or when an existing
      dataset was prepared from a different file.
  """
  path = layout.features_path(data_dir, set_name)
  report = PrepareReport(name=f"{tfds_builders.FEATURES_NAME}/{set_name}", path=path)
  if not os.path.exists(tsv_path):
    raise errors.DataError(errors.BAD_FIELD, "features file not found", path=tsv_path,
                           key=set_name)
  source = _source_fingerprint(tsv_path)
  if reuse_existing(data_dir, set_name, source, overwrite, report, tsv_path):
    return report

  log = errors.SkipLog(skip_bad=skip_bad)
  dim = feature_dim or _first_feature_dim(tsv_path)
  offsets = tsv_features.line_aligned_offsets(tsv_path, part_bytes)
  rows = _FeatureRows(tsv_path, dim, log, progress)
  try:
    write_feature_set(data_dir, set_name, [lambda end=end: rows.part(end) for end in offsets[1:]],
                      rows.index, log, feature_dim=dim, metadata=source, overwrite=overwrite,
                      compress=compress)
  finally:
    rows.close()
  report.read[tfds_builders.IMAGES_SPLIT] = rows.rows_read
  report.written[tfds_builders.IMAGES_SPLIT] = len(rows.index.img_index)
  report.skipped = log
  return report
