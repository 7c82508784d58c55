"""Per-image `.npz` features (bottom-up-attention.pytorch) -> a feature set.

Users who fine-tune or predict on their own images extract Faster R-CNN
features with MILVLG/bottom-up-attention.pytorch (`extract_features.py`),
which writes one `<image name>.npz` per image. This module reads such a folder
into the same decoded images the reference TSV reader yields (boxes in pixels,
float features, detector labels) and stores them with `feature_sets`' writer,
so the loaders cannot tell the two sources apart.

Keys read, as `utils/extract_utils.py` (`save_roi_features`,
`save_roi_features_by_bbox`) writes them with `np.savez_compressed`:

    x           float [num_bbox, F]  RoI features (F = 2048 for the R101 model)
    bbox        float [num_bbox, 4]  x1, y1, x2, y2 in pixels of the original image
    num_bbox    int
    image_h, image_w  int            original image size (also in `info`)
    info        dict, optional       objects_id / objects_conf (argmax / max over
                                     the non-background classes) and, when the
                                     model predicts attributes, attrs_id / attrs_conf

`info` is a pickled 0-d object array. It is read with an unpickler that builds
only numpy arrays, dtypes and scalars (and plain Python containers), so a
crafted file cannot run code. Labels it does not hold are stored as id -1 with
confidence 0 (the pre-training losses ignore labels below zero). Files are
read in name order; the img_id is the file name without `.npz`.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import zipfile
import zlib
from typing import IO, Any, Iterator, Sequence

import numpy as np
import tqdm

from lxmert_jax.data import errors
from lxmert_jax.data import layout
from lxmert_jax.data import tfds_builders
from lxmert_jax.data.prepare import feature_sets
from lxmert_jax.data.prepare import tsv_features

try:
  from numpy._core import multiarray as _multiarray  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
  from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

SUFFIX = ".npz"
# Stored bytes aimed at per part (TFDS holds a part in memory while writing);
# parts are sized for the extractor's largest box count.
DEFAULT_PART_BYTES = 384 << 20
_PART_SIZING_BOXES = 100
# Label pairs in `info`: (id key, confidence key).
LABEL_KEYS = (("objects_id", "objects_conf"), ("attrs_id", "attrs_conf"))

# What `np.save` writes for an object array holding dicts of arrays and
# numbers, under numpy 1.x (`numpy.core`) and 2.x (`numpy._core`) names
# (`_codecs.encode` rebuilds bytes in protocol-2 pickles).
_SAFE_GLOBALS = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
}


class _Refused(pickle.UnpicklingError):
  """A pickle asked for a global outside `_SAFE_GLOBALS`."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Builds numpy arrays, dtypes and scalars; refuses every other global."""

  def find_class(self, module: str, name: str) -> Any:
    found = _SAFE_GLOBALS.get((module, name))
    if found is None:
      raise _Refused(f"{module}.{name}")
    return found


def npz_files(directory: str) -> list[str]:
  """The `.npz` files of a folder, sorted by name (the stored record order)."""
  if not os.path.isdir(directory):
    raise errors.DataError(errors.BAD_FIELD, "not a directory; expected the folder of "
                           "per-image .npz feature files", path=directory)
  files = sorted(os.path.join(directory, name) for name in os.listdir(directory)
                 if name.endswith(SUFFIX) and os.path.isfile(os.path.join(directory, name)))
  if not files:
    raise errors.DataError(errors.BAD_FIELD, f"no *{SUFFIX} files; expected one per image as "
                           "extract_features.py writes them", path=directory)
  return files


def img_id_of(path: str) -> str:
  return os.path.basename(path)[:-len(SUFFIX)]


def _unreadable(path: str, key: str | None, err: BaseException) -> errors.DataError:
  return errors.DataError(errors.UNREADABLE_FILE, f"cannot be read ({type(err).__name__}: "
                          f"{err}); expected a numpy .npz archive", path=path, key=key)


def _read_info(f: IO[bytes], path: str) -> Any:
  """The object stored in `info.npy`, unpickled with numpy types only."""
  version = np.lib.format.read_magic(f)
  header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
  shape, _, dtype = header(f)
  if not dtype.hasobject:
    raise errors.DataError(errors.BAD_FIELD, f"info is a {dtype} array of shape {shape}; "
                           "expected the dict extract_features.py stores", path=path, key="info")
  try:
    value = _NumpyOnlyUnpickler(f).load()
  except _Refused as err:
    raise errors.DataError(
        errors.UNREADABLE_FILE, f"info needs {err} to unpickle; only numpy arrays, dtypes, "
        "scalars and plain containers are read (store its arrays as numpy arrays, or leave "
        "info out)", path=path, key="info") from None
  except Exception as err:  # pylint: disable=broad-except  # A malformed pickle.
    raise _unreadable(path, "info", err) from None
  if isinstance(value, np.ndarray) and value.shape == () and value.dtype.hasobject:
    value = value.item()
  if not isinstance(value, dict):
    raise errors.DataError(errors.BAD_FIELD, f"info holds a {type(value).__name__}; expected "
                           "the dict extract_features.py stores", path=path, key="info")
  return value


def _read_arrays(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
  """Every array of the archive (no pickles) and its `info` dict, if any."""
  arrays: dict[str, np.ndarray] = {}
  info = None
  key = None
  try:
    with zipfile.ZipFile(path) as zf:
      for member in zf.namelist():
        if not member.endswith(".npy"):
          continue
        key = member[:-4]
        with zf.open(member) as f:
          if key == "info":
            info = _read_info(f, path)
            continue
          try:
            arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
          except ValueError as err:
            if "allow_pickle" not in str(err):
              raise
            raise errors.DataError(errors.BAD_FIELD, "holds Python objects; expected a "
                                   "numeric array", path=path, key=key) from None
  except errors.DataError:
    raise
  except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as err:
    raise _unreadable(path, key, err) from None
  return arrays, info


def _integer(value: Any, path: str, key: str) -> int:
  arr = np.asarray(value)
  whole = arr.size == 1 and (arr.dtype.kind in "iu" or (
      arr.dtype.kind == "f" and np.isfinite(arr).all() and float(arr.reshape(())).is_integer()))
  if not whole:
    raise errors.DataError(errors.BAD_FIELD, f"is {arr.dtype} of shape {arr.shape}; expected "
                           "one integer", path=path, key=key)
  return int(arr.reshape(()))


def _matrix(arrays: dict, key: str, width: int | None, n: int, path: str,
            what: str) -> np.ndarray:
  if key not in arrays:
    raise errors.DataError(errors.MISSING_KEY, f"no {key!r} ({what}); expected the keys "
                           "x, bbox, num_bbox, image_h, image_w of extract_features.py "
                           "--extract-mode roi_feats or bbox_feats", path=path, key=key)
  arr = arrays[key]
  if arr.ndim != 2 or (width is not None and arr.shape[1] != width) or arr.dtype.kind not in "fiu":
    raise errors.DataError(errors.BAD_FIELD, f"{what} have shape {list(arr.shape)} "
                           f"({arr.dtype}); expected [num_bbox, {width or 'F'}] numbers",
                           path=path, key=key)
  if arr.shape[0] != n:
    raise errors.DataError(errors.BOX_COUNT_MISMATCH, f"num_bbox={n} but the {what} have "
                           f"{arr.shape[0]} rows; expected one row per box", path=path, key=key)
  if not np.isfinite(arr).all():
    bad = int(np.argwhere(~np.isfinite(arr))[0][0])
    raise errors.DataError(errors.BAD_VALUE, f"{what} hold non-finite values (first in box "
                           f"{bad}); expected finite numbers", path=path, key=key)
  return arr


def _labels(info: dict | None, n: int, path: str) -> tuple[list[np.ndarray], list[str]]:
  """[objects_id, objects_conf, attrs_id, attrs_conf] and the label kinds absent."""
  out, absent = [], []
  for id_key, conf_key in LABEL_KEYS:
    if info is None or id_key not in info:
      out += [np.full((n,), -1, np.int64), np.zeros((n,), np.float32)]
      absent.append(id_key)
      continue
    if conf_key not in info:
      raise errors.DataError(errors.MISSING_KEY, f"info has {id_key!r} but no {conf_key!r}; "
                             "expected both", path=path, key=f"info.{conf_key}")
    ids, conf = np.asarray(info[id_key]), np.asarray(info[conf_key])
    for key, arr in ((id_key, ids), (conf_key, conf)):
      if arr.shape != (n,) or arr.dtype.kind not in "fiu":
        raise errors.DataError(errors.BAD_FIELD, f"has shape {list(arr.shape)} ({arr.dtype}); "
                               f"expected [num_bbox={n}] numbers", path=path, key=f"info.{key}")
    if ids.dtype.kind == "f" and not (np.isfinite(ids).all() and (ids == np.round(ids)).all()):
      raise errors.DataError(errors.BAD_VALUE, "holds non-integer values; expected label ids",
                             path=path, key=f"info.{id_key}")
    if ids.min() < 0:
      raise errors.DataError(errors.BAD_VALUE, f"has value {ids.min()}; expected label ids >= 0",
                             path=path, key=f"info.{id_key}")
    if not np.isfinite(conf).all():
      raise errors.DataError(errors.BAD_VALUE, "holds non-finite values; expected "
                             "confidences", path=path, key=f"info.{conf_key}")
    out += [ids.astype(np.int64), conf.astype(np.float32)]
  return out, absent


def read_npz(path: str, feature_dim: int | None = None,
             dim_source: str | None = None) -> tuple[tsv_features.ImageFeatures, list[str]]:
  """Reads and validates one extractor file.

  Args:
    path: the `.npz` file.
    feature_dim: expected F (None: any).
    dim_source: where `feature_dim` came from, for messages.

  Returns:
    The image (as the TSV reader decodes it: boxes in pixels) and the label
    keys (`objects_id`, `attrs_id`) the file does not hold.

  Raises:
    DataError: naming the file and the key: unreadable archive, a missing
      key, shapes disagreeing with `num_bbox`, non-finite values, a feature
      width other than `feature_dim`, an unsafe or malformed `info`.
  """
  arrays, info = _read_arrays(path)
  if "num_bbox" not in arrays:
    raise errors.DataError(errors.MISSING_KEY, "no 'num_bbox'; expected the box count "
                           "extract_features.py stores", path=path, key="num_bbox")
  n = _integer(arrays["num_bbox"], path, "num_bbox")
  if n <= 0:
    raise errors.DataError(errors.BAD_VALUE, f"num_bbox={n}; expected > 0", path=path,
                           key="num_bbox")
  size = {}
  for key in ("image_h", "image_w"):
    if key in arrays:
      size[key] = _integer(arrays[key], path, key)
    elif info is not None and key in info:
      size[key] = _integer(info[key], path, f"info.{key}")
    else:
      raise errors.DataError(errors.MISSING_KEY, f"no {key!r} (the image size boxes are "
                             "normalised by); expected it beside bbox", path=path, key=key)
    if size[key] <= 0:
      raise errors.DataError(errors.BAD_VALUE, f"{key}={size[key]}; expected > 0", path=path,
                             key=key)
  feats = _matrix(arrays, "x", None, n, path, "features")
  if feature_dim is not None and feats.shape[1] != feature_dim:
    raise errors.DataError(errors.BAD_FIELD, f"features are {feats.shape[1]} wide; expected "
                           f"{feature_dim} like {dim_source or 'the other files'}", path=path,
                           key="x")
  boxes = _matrix(arrays, "bbox", 4, n, path, "boxes")
  (obj_id, obj_conf, attr_id, attr_conf), absent = _labels(info, n, path)
  img = tsv_features.ImageFeatures(
      img_id=img_id_of(path), img_h=size["image_h"], img_w=size["image_w"],
      objects_id=obj_id, objects_conf=obj_conf, attrs_id=attr_id, attrs_conf=attr_conf,
      boxes=boxes.astype(np.float32), features=feats.astype(np.float32))
  return img, absent


class _NpzIndex(feature_sets.ImageIndex):
  """The image index, plus how many images lacked each kind of detector label."""

  def __init__(self):
    super().__init__()
    self.absent: collections.Counter = collections.Counter()

  def metadata(self, log: errors.SkipLog) -> dict:
    return {**super().metadata(log), "labels_absent": dict(self.absent)}


class _NpzImages:
  """Turns `.npz` files into feature records, remembering where each image went."""

  def __init__(self, files: Sequence[str], feature_dim: int, dim_source: str,
               log: errors.SkipLog, progress: bool, desc: str):
    self.files = files
    self.feature_dim = feature_dim
    self.dim_source = dim_source
    self.log = log
    self.index = _NpzIndex()
    self.files_read = 0
    self.pbar = tqdm.tqdm(total=len(files), unit=" img", desc=desc, disable=not progress,
                          mininterval=1.0)

  def _record(self, path: str) -> tuple[dict, list[str]]:
    img, absent = read_npz(path, self.feature_dim, self.dim_source)
    self.index.check_new(img.img_id, path, None)
    return feature_sets.stored_record(img, path, None, lowest_label_id=-1), absent

  def part(self, start: int, stop: int) -> Iterator[dict]:
    """Records of files[start:stop]."""
    for path in self.files[start:stop]:
      self.files_read += 1
      self.pbar.update(1)
      out = self.log.guard(lambda path=path: self._record(path))
      if out is None:
        continue
      record, absent = out
      self.index.add(record, os.path.basename(path))
      self.index.absent.update(absent)
      if self.files_read % 256 == 0:
        self.pbar.set_postfix(images=len(self.index.img_index), skipped=self.log.total)
      yield record

  def close(self) -> None:
    self.pbar.set_postfix(images=len(self.index.img_index), skipped=self.log.total)
    self.pbar.close()


def _first_readable(files: Sequence[str]) -> tuple[str, tsv_features.ImageFeatures]:
  """The first file that reads (bad ones are reported by the main pass)."""
  for path in files:
    try:
      return path, read_npz(path)[0]
    except errors.DataError:
      continue
  # Nothing reads: let the main pass report the first file's problem.
  return files[0], read_npz(files[0])[0]


def prepare_npz_features(data_dir: str, set_name: str, directory: str, *,
                         skip_bad: bool = False, overwrite: bool = False,
                         feature_dim: int | None = None, part_images: int | None = None,
                         compress: bool = False,
                         progress: bool = True) -> feature_sets.PrepareReport:
  """Writes `lxmert_features/<set_name>` from a folder of `.npz` files (idempotent).

  Args:
    data_dir: root of the prepared data.
    set_name: the feature set name.
    directory: the folder `extract_features.py --out-dir` wrote.
    skip_bad: count and skip bad files instead of stopping at the first.
    overwrite: rebuild even if a complete dataset exists.
    feature_dim: expected F (default: from the first readable file).
    part_images: images per stored part (default: about `DEFAULT_PART_BYTES`
      of records at 100 boxes an image).
    compress: zstd-compress the records.
    progress: show a progress bar.

  Returns:
    The report; `reused` if a complete set from the same files was there.

  Raises:
    DataError: on the first bad file (unless `skip_bad`), or when an existing
      set was prepared from other files.
  """
  layout.check_name(set_name, "feature set")
  report = feature_sets.PrepareReport(name=f"{tfds_builders.FEATURES_NAME}/{set_name}",
                                      path=layout.features_path(data_dir, set_name))
  files = npz_files(directory)
  source = {"source_file": os.path.abspath(directory),
            "source_size": sum(os.path.getsize(p) for p in files), "source_files": len(files)}
  if feature_sets.reuse_existing(data_dir, set_name, source, overwrite, report, directory):
    return report
  log = errors.SkipLog(skip_bad=skip_bad)
  dim_source, first = _first_readable(files)
  dim = feature_dim or int(first.features.shape[1])
  if part_images is None:
    per_image = max(first.num_boxes, _PART_SIZING_BOXES) * (2 * dim + 32)
    part_images = max(1, DEFAULT_PART_BYTES // per_image)
  images = _NpzImages(files, dim, dim_source if feature_dim is None else "feature_dim", log,
                      progress, os.path.basename(os.path.normpath(directory)))
  bounds = list(range(0, len(files), part_images)) + [len(files)]
  try:
    feature_sets.write_feature_set(
        data_dir, set_name, [lambda lo=lo, hi=hi: images.part(lo, hi)
                             for lo, hi in zip(bounds, bounds[1:])],
        images.index, log, feature_dim=dim, metadata={**source, "source_format": "npz"},
        overwrite=overwrite, compress=compress)
  finally:
    images.close()
  report.read[tfds_builders.IMAGES_SPLIT] = images.files_read
  report.written[tfds_builders.IMAGES_SPLIT] = len(images.index.img_index)
  report.skipped = log
  for key, n in sorted(images.index.absent.items()):
    report.notes.append(f"images without {key} in info (stored as -1, confidence 0): {n}")
  return report
