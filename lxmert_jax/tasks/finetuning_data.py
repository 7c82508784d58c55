"""The fine-tuning tasks' data: a prepared VQA/GQA/NLVR2 dataset, or the built-in corpus's.

Reads `config.data` (a directory prepared by `python -m lxmert_jax.data.prepare
vqa|gqa|nlvr2`, the splits and the loader's settings) and serves training
batches, evaluation batches of a whole split and each example's id. Imports
the data libraries; the task modules load it only in `build`.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping, Optional

import ml_collections
import numpy as np

from lxmert_jax.data import store
from lxmert_jax.data.pipeline.downstream import make_downstream_loader
from lxmert_jax.data.prepare.synthetic_corpus import VQA_VAL_ANNOTATIONS
from lxmert_jax.tasks import data_shards, demo_corpus
from lxmert_jax.tasks.base import DataNotFoundError

ID_FIELDS = {"vqa": "question_id", "gqa": "question_id", "nlvr2": "identifier"}


class FinetuneData:
  """One benchmark's prepared data: sizes, answer vocabulary, loaders, example ids.

  With `config.data.build_demo` and no prepared dataset, the built-in corpus's
  task files are generated and prepared first (into `data.dir`, or
  `WORKDIR/demo_data` when `data.dir` is empty) by every process that does
  not find them (`demo_corpus`); a directory that already has the corpus
  (e.g. a pre-training demo's) gets the task added to it. Each process reads
  its shard of the data (`data_shards`).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, benchmark: str):
    self.config = config
    self.benchmark = benchmark
    cfg = config.data
    self.dir = demo_corpus.data_dir(cfg, workdir)
    if not self.dir:
      raise DataNotFoundError(_missing_data_message(benchmark, "(empty)"))
    if cfg.build_demo:
      demo_corpus.ensure(self.dir, cfg, benchmark, self._prepared)
    if not self._prepared():
      raise DataNotFoundError(_missing_data_message(benchmark, self.dir))
    self.info = store.dataset_info(self.dir, benchmark)
    self.num_train = self.num_examples(cfg.train_split)
    self.shard_count = data_shards.checked_shard_count(config.batch_size)
    self.steps_per_epoch = self.num_train // config.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"batch_size {config.batch_size} exceeds the {self.num_train} "
                       f"training examples of {self.dir} ({cfg.train_split})")
    self._ids: dict[str, list[str]] = {}
    self._labels: dict[tuple[str, str], list] = {}

  def _prepared(self) -> bool:
    try:
      store.dataset_info(self.dir, self.benchmark)
    except (FileNotFoundError, OSError, ValueError, KeyError):
      return False
    return True

  @property
  def label2ans(self) -> Optional[list[str]]:
    return self.info.get("label2ans")

  def num_examples(self, split: str) -> int:
    """Examples of a split or of a `+`-joined list of splits."""
    available = self.info["num_examples"]
    names = store.resolve_splits(split)
    missing = [n for n in names if n not in available]
    if missing:
      raise DataNotFoundError(
          f"{os.path.join(self.dir, 'lxmert_' + self.benchmark)} has no split(s) {missing} "
          f"(from {split!r}); prepared splits: {sorted(available)}")
    return sum(available[n] for n in names)

  def model_fields(self) -> dict[str, int]:
    """LxmertConfig sizes dictated by the data."""
    fields = {"vocab_size": self.info["vocab_size"],
              "visual_feat_dim": self.info["visual_feat_dim"]}
    if self.label2ans is not None:
      fields["num_qa_labels"] = len(self.label2ans)
    return fields

  def _batches(self, split: str, *, train: bool,
               batch_size: int) -> Iterator[Mapping[str, np.ndarray]]:
    """This process's batches of `split`: of its shard, or of all when emulating."""
    cfg = self.config.data

    def loader(shard_index: int, shard_count: int):
      return make_downstream_loader(
          self.benchmark, self.dir, split, batch_size=batch_size // shard_count,
          seed=self.config.seed, train=train, max_seq_length=cfg.max_seq_length,
          num_objects=cfg.num_objects, shard_index=shard_index, shard_count=shard_count,
          worker_count=cfg.worker_count)

    return data_shards.iterate(loader, self.shard_count)

  def train_iterator(self) -> Iterator[Mapping[str, np.ndarray]]:
    """An endless, checkpointable iterator over shuffled training batches."""
    return self._batches(self.config.data.train_split, train=True,
                         batch_size=self.config.batch_size)

  def eval_batches(self, split: str, batch_size: int) -> Iterator[Mapping[str, np.ndarray]]:
    """Every example of `split` once, in order; the last batch padded (`_mask` 0)."""
    self.num_examples(split)
    return self._batches(split, train=False, batch_size=batch_size)

  def example_ids(self, split: str) -> list[str]:
    """The question id (NLVR2: identifier) of each example of `split`, in record order."""
    if split not in self._ids:
      records = store.Records(self.dir, self.benchmark, store.resolve_splits(split),
                              fields=[ID_FIELDS[self.benchmark]])
      key = ID_FIELDS[self.benchmark]
      self._ids[split] = [_text(records[i][key]) for i in range(len(records))]
    return self._ids[split]

  def _fields(self, split: str, fields: tuple[str, ...]) -> list[dict]:
    """`fields` of every record of `split`, read once per run (the dev split is scored each epoch)."""
    key = (split, ",".join(fields))
    if key not in self._labels:
      records = store.Records(self.dir, self.benchmark, store.resolve_splits(split),
                              fields=list(fields))
      self._labels[key] = [records[i] for i in range(len(records))]
    return self._labels[key]

  def split_targets(self, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The `(answer ids, scores)` of each VQA/GQA example of `split` (empty when unlabelled)."""
    return [(np.asarray(r["ans_ids"]), np.asarray(r["ans_scores"]))
            for r in self._fields(split, ("ans_ids", "ans_scores"))]

  def split_labels(self, split: str) -> np.ndarray:
    """The NLVR2 label (1 = true) of each example of `split`."""
    return np.asarray([int(r["label"]) for r in self._fields(split, ("label",))])

  def demo_vqa_annotations(self) -> Optional[str]:
    """The built-in corpus's official-format VQA annotations, when this is the demo data."""
    path = os.path.join(self.dir, "corpus", "vqa", VQA_VAL_ANNOTATIONS)
    return path if self.config.data.build_demo and os.path.exists(path) else None


def _text(value: object) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _missing_data_message(benchmark: str, data_dir: str) -> str:
  return (
      f"config.data.dir={data_dir} holds no prepared {benchmark} dataset. Prepare the "
      f"benchmark's files with `python -m lxmert_jax.data.prepare {benchmark} --root RAW "
      f"--out DIR` and pass --config.data.dir=DIR, or run the built-in corpus with "
      f"`python -m lxmert_jax.main --config=configs/{benchmark}.py:demo "
      f"--workdir=runs/{benchmark}_demo`.")
