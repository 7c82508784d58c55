"""Streaming reader and writer for the reference `*_obj36.tsv` feature files.

A row holds one image: 10 tab-separated columns (no header), in the order of
`FIELDNAMES`, with the arrays base64-encoded raw little-endian bytes (int64 ids,
float32 confidences, float32 pixel boxes [n, 4] and RoI features [n, F]).

The files are tens of GB, so nothing here holds more than one row: the reader
yields rows one by one, tracking byte offsets (for progress bars and for
cutting a file into parts at line boundaries) and 1-based line numbers (for
error messages). Every malformation raises `DataError` naming the file, the
line and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import os
import sys
from typing import Iterable, Iterator

import numpy as np

from lxmert_jax.data import errors

FIELDNAMES = ("img_id", "img_h", "img_w", "objects_id", "objects_conf",
              "attrs_id", "attrs_conf", "num_boxes", "boxes", "features")

# The reference asserts normalised boxes lie within [0, 1] up to this slack.
BOX_TOLERANCE = 1e-5
_FP16_MAX = float(np.finfo(np.float16).max)

# Base64 features fields are far larger than csv's default 128 KB field limit.
csv.field_size_limit(sys.maxsize)


@dataclasses.dataclass
class ImageFeatures:
  """One decoded row. Boxes are in pixels, as stored in the TSV."""

  img_id: str
  img_h: int
  img_w: int
  objects_id: np.ndarray    # int64 [n]
  objects_conf: np.ndarray  # float32 [n]
  attrs_id: np.ndarray      # int64 [n]
  attrs_conf: np.ndarray    # float32 [n]
  boxes: np.ndarray         # float32 [n, 4], pixel x1, y1, x2, y2
  features: np.ndarray      # float32 [n, F]

  @property
  def num_boxes(self) -> int:
    return int(self.boxes.shape[0])


@dataclasses.dataclass(frozen=True)
class TsvRow:
  """Raw fields of one line with its position in the file."""

  fields: list[str]
  line: int    # 1-based
  start: int   # byte offset of the line
  end: int     # byte offset just past the line


class TsvReader:
  """A forward-only cursor over a TSV file that can stop and resume at offsets.

  Preparation writes a large file as several parts; each part continues
  reading where the previous one stopped, so line numbers stay exact without
  a counting pass over the file.
  """

  def __init__(self, path: str):
    self.path = path
    self._file = open(path, "rb")  # pylint: disable=consider-using-with
    self.pos = 0
    self.line = 1

  def rows(self, end: int | None = None) -> Iterator[TsvRow]:
    """Yields rows from the current position up to byte offset `end`.

    Args:
      end: stop before the first line that starts at or after this offset
        (None: read to the end of the file).

    Yields:
      `TsvRow`s in file order; empty lines are skipped but counted.
    """
    while end is None or self.pos < end:
      raw = self._file.readline()
      if not raw:
        return
      start = self.pos
      self.pos += len(raw)
      line = self.line
      self.line += 1
      text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
      if text:
        yield TsvRow(fields=next(csv.reader((text,), delimiter="\t")), line=line,
                     start=start, end=self.pos)

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> "TsvReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def iter_rows(path: str) -> Iterator[TsvRow]:
  """All rows of a TSV file, streamed."""
  with TsvReader(path) as reader:
    yield from reader.rows()


def line_aligned_offsets(path: str, part_bytes: int) -> list[int]:
  """Offsets of line starts that cut a file into parts of about `part_bytes`.

  Args:
    path: the file.
    part_bytes: target size of a part.

  Returns:
    Increasing offsets `[0, o1, ..., size]`; part k is `[o_k, o_{k+1})`, every
    part holds at least one line.
  """
  size = os.path.getsize(path)
  offsets = [0]
  with open(path, "rb") as f:
    target = part_bytes
    while target < size:
      f.seek(target - 1)
      f.readline()  # Move to the start of the next line.
      pos = f.tell()
      if pos >= size:
        break
      if pos > offsets[-1]:
        offsets.append(pos)
      target = max(target + part_bytes, pos + 1)
  offsets.append(size)
  return offsets


def _decode_b64(row: TsvRow, path: str, index: int) -> bytes:
  name = FIELDNAMES[index]
  try:
    return base64.b64decode(row.fields[index], validate=True)
  except (binascii.Error, ValueError) as err:
    raise errors.DataError(
        errors.BAD_BASE64,
        f"field {name!r} (column {index + 1}) is not valid base64 ({err}); expected the "
        "base64 of raw little-endian array bytes", path=path, line=row.line,
        key=row.fields[0]) from None


def _decode_int(row: TsvRow, path: str, index: int) -> int:
  try:
    return int(row.fields[index])
  except ValueError:
    raise errors.DataError(
        errors.BAD_FIELD,
        f"field {FIELDNAMES[index]!r} (column {index + 1}) is {row.fields[index][:20]!r}; "
        "expected a decimal integer", path=path, line=row.line, key=row.fields[0]) from None


def _array(row: TsvRow, path: str, index: int, dtype, num_boxes: int,
           per_box: int | None) -> np.ndarray:
  """Decodes one base64 column and checks it holds `num_boxes` entries."""
  data = _decode_b64(row, path, index)
  itemsize = np.dtype(dtype).itemsize
  name = FIELDNAMES[index]
  if per_box is None:
    # Feature width not known yet: infer it from this row.
    if num_boxes <= 0 or len(data) % (itemsize * num_boxes):
      raise errors.DataError(
          errors.BOX_COUNT_MISMATCH,
          f"field {name!r} holds {len(data)} bytes, not a whole number of "
          f"{num_boxes} boxes of {np.dtype(dtype).name}", path=path, line=row.line,
          key=row.fields[0])
    per_box = len(data) // (itemsize * num_boxes)
  expected = num_boxes * per_box * itemsize
  if len(data) != expected:
    raise errors.DataError(
        errors.BOX_COUNT_MISMATCH,
        f"num_boxes={num_boxes} but field {name!r} holds {len(data)} bytes; expected "
        f"{num_boxes} x {per_box} {np.dtype(dtype).name} = {expected} bytes",
        path=path, line=row.line, key=row.fields[0])
  arr = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
  # Boxes and features are matrices even when a row has a single column.
  return arr.reshape((num_boxes, per_box)) if name in ("boxes", "features") else arr


def decode_row(row: TsvRow, path: str, feature_dim: int | None = None) -> ImageFeatures:
  """Decodes and validates one row.

  Args:
    row: from `iter_rows`.
    path: the file, for messages.
    feature_dim: expected F; None infers it from the row.

  Returns:
    The decoded image.

  Raises:
    DataError: wrong column count, non-integer counts, bad base64, array
      lengths that disagree with `num_boxes`, non-positive image size.
  """
  if len(row.fields) != len(FIELDNAMES):
    raise errors.DataError(
        errors.TRUNCATED_ROW,
        f"row has {len(row.fields)} tab-separated fields; expected {len(FIELDNAMES)} "
        f"({', '.join(FIELDNAMES)})", path=path, line=row.line,
        key=row.fields[0] if row.fields else None)
  img_id = row.fields[0]
  if not img_id:
    raise errors.DataError(errors.BAD_FIELD, "empty img_id", path=path, line=row.line)
  img_h = _decode_int(row, path, 1)
  img_w = _decode_int(row, path, 2)
  num_boxes = _decode_int(row, path, 7)
  if img_h <= 0 or img_w <= 0:
    raise errors.DataError(errors.BAD_VALUE,
                           f"image size {img_w}x{img_h}; expected positive width and height",
                           path=path, line=row.line, key=img_id)
  if num_boxes <= 0:
    raise errors.DataError(errors.BAD_VALUE, f"num_boxes={num_boxes}; expected > 0",
                           path=path, line=row.line, key=img_id)
  return ImageFeatures(
      img_id=img_id, img_h=img_h, img_w=img_w,
      objects_id=_array(row, path, 3, np.int64, num_boxes, 1),
      objects_conf=_array(row, path, 4, np.float32, num_boxes, 1),
      attrs_id=_array(row, path, 5, np.int64, num_boxes, 1),
      attrs_conf=_array(row, path, 6, np.float32, num_boxes, 1),
      boxes=_array(row, path, 8, np.float32, num_boxes, 4),
      features=_array(row, path, 9, np.float32, num_boxes, feature_dim))


def normalised_boxes(img: ImageFeatures, path: str, line: int) -> np.ndarray:
  """Boxes divided by the image size, checked to lie in [0, 1] (± 1e-5).

  Returns:
    float32 [n, 4] (x1/w, y1/h, x2/w, y2/h), as the reference feeds the model.
  """
  boxes = img.boxes.astype(np.float32, copy=True)
  boxes[:, (0, 2)] /= img.img_w
  boxes[:, (1, 3)] /= img.img_h
  bad = ~np.isfinite(boxes) | (boxes < -BOX_TOLERANCE) | (boxes > 1 + BOX_TOLERANCE)
  if bad.any():
    box = int(np.argwhere(bad)[0][0])
    raise errors.DataError(
        errors.BAD_VALUE,
        f"box {box} = {img.boxes[box].tolist()} px lies outside the {img.img_w}x{img.img_h} "
        f"image; expected coordinates within [0, 1] ± {BOX_TOLERANCE} after division by "
        "width/height", path=path, line=line, key=img.img_id)
  return boxes


def features_fp16(img: ImageFeatures, path: str, line: int) -> np.ndarray:
  """Features as float16, refusing values float16 cannot hold."""
  feats = img.features
  if not np.isfinite(feats).all() or np.abs(feats).max() > _FP16_MAX:
    raise errors.DataError(
        errors.BAD_VALUE,
        f"features contain non-finite values or magnitudes above {_FP16_MAX:g}; expected "
        "finite values storable as float16", path=path, line=line, key=img.img_id)
  return feats.astype(np.float16)


def encode_row(img: ImageFeatures) -> str:
  """One TSV line (without newline) in the reference format."""
  def b64(arr, dtype):
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
                            .tobytes()).decode("ascii")
  return "\t".join([
      img.img_id, str(img.img_h), str(img.img_w),
      b64(img.objects_id, np.int64), b64(img.objects_conf, np.float32),
      b64(img.attrs_id, np.int64), b64(img.attrs_conf, np.float32),
      str(img.num_boxes), b64(img.boxes, np.float32), b64(img.features, np.float32)])


def write_tsv(path: str, images: Iterable[ImageFeatures]) -> int:
  """Writes images as a reference TSV (via a temporary file, then renamed).

  Returns:
    Number of rows written.
  """
  tmp = f"{path}.tmp{os.getpid()}"
  n = 0
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    for img in images:
      f.write(encode_row(img))
      f.write("\n")
      n += 1
  os.replace(tmp, path)
  return n
