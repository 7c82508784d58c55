"""Shared tiny prepared corpora for the data tests (built once per process)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import numpy as np

from lxmert_jax.data import layout
from lxmert_jax.data.prepare import synthetic_corpus
from lxmert_jax.data.prepare import tsv_features

TINY = dict(num_images=24, seed=3, feature_dim=16, num_boxes=6)


@functools.lru_cache(maxsize=None)
def tiny_data(num_images: int = TINY["num_images"], seed: int = TINY["seed"],
              feature_dim: int = TINY["feature_dim"], num_boxes: int = TINY["num_boxes"],
              **corpus_options) -> str:
  """A prepared synthetic corpus (all tasks); read-only for the tests.

  `corpus_options`: `max_objects`, `caption_style` of `build_demo_data`.
  """
  root = tempfile.mkdtemp(prefix="lxmert_data_test_")
  atexit.register(shutil.rmtree, root, True)
  return synthetic_corpus.build_demo_data(os.path.join(root, "data"), num_images=num_images,
                                          seed=seed, feature_dim=feature_dim,
                                          num_boxes=num_boxes, **corpus_options)


def corpus_dir(data_dir: str) -> str:
  return os.path.join(data_dir, "corpus")


@functools.lru_cache(maxsize=None)
def tsv_images(root: str, set_name: str) -> dict[str, tsv_features.ImageFeatures]:
  """The images of one reference TSV under corpus `root`, by img_id."""
  path = os.path.join(root, layout.FEATURE_FILES[set_name])
  return {img.img_id: img for img in
          (tsv_features.decode_row(row, path) for row in tsv_features.iter_rows(path))}


def expected_image(img: tsv_features.ImageFeatures, num_objects: int) -> dict[str, np.ndarray]:
  """What a batch should hold for a TSV image, worked out from the TSV alone.

  Loader tests compare against this rather than against the feature store the
  loaders read through, so a fault in storing or padding features shows.
  Features go through float16 (the stored precision); boxes are normalised by
  the image size; everything is zero-padded or cut to `num_objects` boxes.
  """
  n = min(len(img.boxes), num_objects)
  boxes = img.boxes / np.array([img.img_w, img.img_h] * 2, np.float32)

  def fit(values: np.ndarray, dtype) -> np.ndarray:
    out = np.zeros((num_objects,) + values.shape[1:], dtype)
    out[:n] = values[:n]
    return out

  return {"features": fit(img.features.astype(np.float16).astype(np.float32), np.float32),
          "boxes": fit(boxes, np.float32), "objects_id": fit(img.objects_id, np.int32),
          "mask": fit(np.ones(len(img.boxes), np.int32), np.int32)}


def collect(loader, max_batches: int | None = None) -> dict[str, np.ndarray]:
  """Concatenates the batches of a loader along the batch axis."""
  batches = []
  for i, batch in enumerate(loader):
    if max_batches is not None and i >= max_batches:
      break
    batches.append(batch)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
