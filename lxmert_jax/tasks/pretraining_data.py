"""The pre-training task's data: the prepared dataset, or the built-in corpus built on demand.

Reads `config.data` (a directory prepared by `python -m lxmert_jax.data.prepare
pretrain`, its splits and the loader's settings) and serves the training and
evaluation batches the task asks for. Imports the data libraries (grain,
tensorflow-datasets); the task itself does not, so that its objective can be
used where they are not installed.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Optional

from absl import logging
import ml_collections
import numpy as np

from lxmert_jax import data as data_lib
from lxmert_jax.tasks import data_shards, demo_corpus
from lxmert_jax.tasks.base import DataNotFoundError


class PretrainData:
  """The run's pre-training data: location, sizes, train and eval iterators.

  With `config.data.build_demo` and no prepared directory, the built-in
  synthetic corpus is generated first (into `data.dir`, or `WORKDIR/demo_data`
  when `data.dir` is empty), by every process that does not find it
  (`demo_corpus`). Each process reads its shard of the data (`data_shards`).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    cfg = config.data
    self.dir = demo_corpus.data_dir(cfg, workdir)
    if not self.dir:
      raise DataNotFoundError(_missing_data_message("(empty)"))
    if cfg.build_demo:
      demo_corpus.ensure(self.dir, cfg, "pretrain", self._prepared)
    if not self._prepared():
      raise DataNotFoundError(_missing_data_message(self.dir))
    self.info = data_lib.dataset_info(self.dir)
    self.num_train = num_train = self._num_examples(cfg.train_split)
    if self._num_examples(cfg.eval_split) < config.batch_size:
      logging.warning("eval split %s has fewer than batch_size=%d examples; evaluation "
                      "will be skipped", cfg.eval_split, config.batch_size)
    self.shard_count = data_shards.checked_shard_count(config.batch_size)
    self.per_shard_batch = config.batch_size // self.shard_count
    self.steps_per_epoch = num_train // config.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} training "
                       f"examples of {self.dir}")

  def _prepared(self) -> bool:
    try:
      data_lib.dataset_info(self.dir)
    except (FileNotFoundError, OSError, ValueError):
      return False
    return True

  def _num_examples(self, split: str) -> int:
    """Examples of a split or of a `+`-joined list of splits."""
    available = self.info["num_examples"]
    names = split.split("+")
    missing = [n for n in names if n not in available]
    if missing:
      raise DataNotFoundError(f"{self.dir} has no split(s) {missing} (from {split!r}); "
                              f"prepared splits: {sorted(available)}")
    return sum(available[n] for n in names)

  def model_fields(self) -> dict[str, int]:
    """LxmertConfig sizes dictated by the data."""
    return {k: self.info[k] for k in ("vocab_size", "num_qa_labels", "num_object_labels",
                                      "num_attr_labels", "visual_feat_dim")}

  def _batches(self, split: str, *, shuffle: bool, num_epochs: Optional[int],
               seed: int) -> Iterator[Mapping[str, np.ndarray]]:
    """This process's batches of `split`: of its shard, or of all when emulating."""
    cfg = self.config.data

    def loader(shard_index: int, shard_count: int):
      return data_lib.make_pretrain_loader(
          self.dir, split, batch_size=self.per_shard_batch, seed=seed,
          max_seq_length=cfg.max_seq_length, num_objects=cfg.num_objects, shuffle=shuffle,
          num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count,
          worker_count=cfg.worker_count, drop_remainder=True, feature_dtype=np.float16)

    return data_shards.iterate(loader, self.shard_count)

  def train_iterator(self) -> Iterator[Mapping[str, np.ndarray]]:
    """An endless, checkpointable iterator over shuffled training batches."""
    return self._batches(self.config.data.train_split, shuffle=True, num_epochs=None,
                         seed=self.config.seed)

  def eval_batches(self) -> Iterator[Mapping[str, np.ndarray]]:
    """`eval_batches` batches of the eval split, the same ones every time.

    Shuffled with a fixed seed: records are stored image by image, so the
    first batches in file order would cover only a few images.
    """
    loader = self._batches(self.config.data.eval_split, shuffle=True, num_epochs=1,
                           seed=self.config.seed)
    limit = self.config.eval_batches
    for i, batch in enumerate(loader):
      if 0 < limit <= i:
        break
      yield batch


def _missing_data_message(data_dir: str) -> str:
  return (
      f"config.data.dir={data_dir} is not a prepared LXMERT pre-training dataset. "
      "Prepare the real data (the original TSV features and JSON annotations) with "
      "`python -m lxmert_jax.data.prepare pretrain --root RAW --out DIR` and pass "
      "--config.data.dir=DIR, or run the built-in synthetic corpus with "
      "`python -m lxmert_jax.main --config=configs/pretrain.py:demo --workdir=runs/demo`.")
