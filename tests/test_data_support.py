"""Shared tiny prepared corpora for the data tests (built once per process)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import numpy as np

from lxmert_jax.data.prepare import synthetic_corpus

TINY = dict(num_images=24, seed=3, feature_dim=16, num_boxes=6)


@functools.lru_cache(maxsize=None)
def tiny_data(num_images: int = TINY["num_images"], seed: int = TINY["seed"],
              feature_dim: int = TINY["feature_dim"], num_boxes: int = TINY["num_boxes"]) -> str:
  """A prepared synthetic corpus (all tasks); read-only for the tests."""
  root = tempfile.mkdtemp(prefix="lxmert_data_test_")
  atexit.register(shutil.rmtree, root, True)
  return synthetic_corpus.build_demo_data(os.path.join(root, "data"), num_images=num_images,
                                          seed=seed, feature_dim=feature_dim,
                                          num_boxes=num_boxes)


def corpus_dir(data_dir: str) -> str:
  return os.path.join(data_dir, "corpus")


def collect(loader, max_batches: int | None = None) -> dict[str, np.ndarray]:
  """Concatenates the batches of a loader along the batch axis."""
  batches = []
  for i, batch in enumerate(loader):
    if max_batches is not None and i >= max_batches:
      break
    batches.append(batch)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
