"""Fine-tuning and evaluation batches for VQA, GQA and NLVR2.

VQA / GQA batch (B per host, T tokens, O boxes, F features, A answers):

    input_ids, attention_mask, token_type_ids  int32 [B, T]
    visual_feats     float32 [B, O, F]
    visual_pos       float32 [B, O, 4]
    visual_attention_mask  int32 [B, O]
    answer_targets   float32 [B, A]   soft scores of the label's answers

NLVR2 batch: the same text keys, `visual_feats` [B, 2, O, F], `visual_pos`
[B, 2, O, 4], `visual_attention_mask` [B, 2, O] (image 0 then image 1), and
`label` int32 [B] (1 = the statement is true).

Evaluation loaders (`train=False`) keep every example: the last batch is
padded with masked copies, `_mask` float32 [B] is 1 for real examples,
`_index` int32 [B] is the example's position in the split(s) (-1 for padding),
and
`question_id` (a numpy str array [B]; the NLVR2 identifier for NLVR2) stays on
the host to match predictions back to questions.
"""

from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from lxmert_jax.data.pipeline import common
from lxmert_jax.data import store
from lxmert_jax.data import tokenization

TASKS = ("vqa", "gqa", "nlvr2")
QUESTION_ID_KEY = "question_id"


class _TaskData:
  """Records, images and tokenisation of one task's split(s)."""

  def __init__(self, task: str, data_dir: str, splits: Sequence[str], max_seq_length: int,
               num_objects: int, tokenizer: tokenization.Tokenizer | None):
    if task not in TASKS:
      raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    self.task = task
    self.max_seq_length = max_seq_length
    self.records = store.Records(data_dir, task, splits)
    meta = self.records.metadata
    self.images = store.FeatureStore(data_dir, meta["feature_sets"], num_objects)
    self.num_answers = len(meta.get("label2ans", ()))
    stored = meta["tokenizer"]
    self.retokenizer = None
    if tokenizer is not None and tokenizer.fingerprint != stored["fingerprint"]:
      self.retokenizer = tokenizer
    if tokenizer is not None:
      self.special = {"pad": tokenizer.pad_id, "cls": tokenizer.cls_id, "sep": tokenizer.sep_id}
    else:
      self.special = dict(meta["special_ids"])

  def text(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
    if self.retokenizer is None:
      pieces = record["token_ids"]
    else:
      sent = record["sent"]
      sent = sent.decode("utf-8") if isinstance(sent, bytes) else sent
      pieces = self.retokenizer.tokenize_ids([sent])[0]
    ids, mask = tokenization.frame_ids(pieces, self.max_seq_length, self.special["cls"],
                                       self.special["sep"], self.special["pad"])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


class BuildTaskExample(grain.transforms.Map):
  """One fine-tuning example from one record."""

  def __init__(self, data: _TaskData, keep_ids: bool):
    self.data = data
    self.keep_ids = keep_ids

  def map(self, record: dict[str, Any]) -> dict[str, Any]:
    data = self.data
    example = data.text(record)
    if data.task == "nlvr2":
      images = [data.images.image(record[f"feat_set{k}"], record[f"feat_index{k}"])
                for k in (0, 1)]
      example["visual_feats"] = np.stack([im["features"] for im in images])
      example["visual_pos"] = np.stack([im["boxes"] for im in images])
      example["visual_attention_mask"] = np.stack([im["mask"] for im in images])
      example["label"] = np.int32(record["label"])
      qid = record["identifier"]
    else:
      image = data.images.image(record["feat_set"], record["feat_index"])
      example["visual_feats"] = image["features"]
      example["visual_pos"] = image["boxes"]
      example["visual_attention_mask"] = image["mask"]
      targets = np.zeros((data.num_answers,), np.float32)
      targets[record["ans_ids"]] = record["ans_scores"]
      example["answer_targets"] = targets
      qid = record["question_id"]
    if self.keep_ids:
      example[QUESTION_ID_KEY] = np.asarray(qid.decode("utf-8") if isinstance(qid, bytes) else qid)
    for key in (common.MASK_KEY, common.INDEX_KEY):
      if key in record:
        example[key] = record[key]
    return example


def num_answers(data_dir: str, task: str) -> int:
  """Size of a VQA/GQA answer vocabulary (the answer head's width)."""
  return len(store.task_metadata(data_dir, task)["label2ans"])


def make_downstream_loader(task: str, data_dir: str, split: str | Sequence[str], *,
                           batch_size: int, seed: int, train: bool, max_seq_length: int = 20,
                           num_objects: int = 36,
                           tokenizer: tokenization.Tokenizer | None = None,
                           shuffle: bool | None = None, num_epochs: int | None = None,
                           shard_index: int | None = None, shard_count: int | None = None,
                           worker_count: int = 0, read_threads: int | None = None,
                           worker_buffer_size: int = 1) -> grain.DataLoader:
  """A grain DataLoader of VQA / GQA / NLVR2 batches (format in the module docstring).

  Args:
    task: "vqa", "gqa" or "nlvr2".
    data_dir: root of the prepared data.
    split: split(s), e.g. "train+nominival" or ["train", "valid"].
    batch_size: per-host batch size.
    seed: shuffling seed.
    train: training (shuffled, repeated, last partial batch dropped) or
      evaluation (in order, one pass, padded last batch, `_mask` and
      `question_id` kept).
    max_seq_length: T.
    num_objects: O.
    tokenizer: None uses the stored word pieces; another vocabulary
      re-tokenises.
    shuffle: override the mode's default.
    num_epochs: override the mode's default (train: forever; eval: 1).
    shard_index, shard_count: this host's shard (default from JAX).
    worker_count: grain worker processes.
    read_threads: grain read-ahead threads (default none; scale with workers).
    worker_buffer_size: batches buffered per worker.

  Returns:
    The loader; `iter(loader)` supports `get_state()`/`set_state()`.
  """
  data = _TaskData(task, data_dir, store.resolve_splits(split), max_seq_length, num_objects,
                   tokenizer)
  return common.make_loader(
      data.records, [BuildTaskExample(data, keep_ids=not train)], batch_size=batch_size,
      seed=seed, shuffle=train if shuffle is None else shuffle,
      num_epochs=(None if train else 1) if num_epochs is None else num_epochs,
      shard_index=shard_index, shard_count=shard_count, drop_remainder=train,
      worker_count=worker_count, read_threads=read_threads,
      worker_buffer_size=worker_buffer_size,
      batch_fn=common.StackWithFloat32(["visual_feats"]))
