"""Pre-training batches: the reference's per-sentence construction over grain.

Per record (one image-sentence pair), with the record's own generator:

1. matching: with probability 0.5 the sentence is replaced by the sentence of
   a uniformly random other datum whose image differs (`matched_label` 0);
2. QA target: -100 without a label, with an empty (pruned) label, or when
   mismatched; else the answer (sampled ∝ score if several);
3. the (possibly replaced) sentence's word pieces, cut to T-2, are masked
   (15%: 80% [MASK], 10% random id over the whole vocabulary, 10% kept),
   framed with [CLS]/[SEP] (label -100) and padded to T;
4. object masking on the image's real boxes (15%: 80% zeroed, 10% replaced by
   a box feature of a random datum's image, 10% kept; `feat_mask` 1 on all
   selected); `feat_targets` are the unmasked features.

Batch (numpy; B per host, T tokens, O boxes, F feature width):

    input_ids, attention_mask, token_type_ids, masked_lm_labels  int32 [B, T]
    visual_feats, feat_targets   float32 [B, O, F]  (float16 with
                                 `feature_dtype=np.float16`: the stored
                                 values, half the bytes to assemble and to
                                 send to the device, which casts exactly)
    visual_pos                   float32 [B, O, 4]  (x1, y1, x2, y2 in [0, 1])
    visual_attention_mask        int32 [B, O]
    obj_labels, attr_labels      int32 [B, O]
    obj_conf, attr_conf, feat_mask  float32 [B, O]
    matched_label, ans           int32 [B]
    (+ `_mask` float32 [B] when `drop_remainder=False`: 0 marks padding.)

Random box features come, by default, from a bank of `feature_bank_size`
(datum, box) draws made once from the loader seed: each replacement picks a
bank row uniformly. Every replacement then has the reference's distribution
(the feature of a uniform box of a uniform datum's image), but replacements
reuse the bank's rows instead of each reading a new image, which would cost
a second image read for about half the examples. `feature_bank_size=0` reads
a fresh random image for every replacement, exactly as the reference does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import grain
import numpy as np

from lxmert_jax.data import layout
from lxmert_jax.data.pipeline import common
from lxmert_jax.data.pipeline import masking
from lxmert_jax.data import store
from lxmert_jax.data import tokenization

IGNORE = masking.IGNORE


# What building an example reads from a pre-training record (each decoded
# field costs time per read; the image of a record comes from the index).
_RECORD_FIELDS = ("token_ids", "has_label", "ans_ids", "ans_scores")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """Construction parameters (defaults are the reference's)."""

  max_seq_length: int = 20
  num_objects: int = 36
  mask_prob: float = 0.15
  obj_mask_prob: float = 0.15
  task_matched: bool = True
  mismatch_prob: float = 0.5
  feature_bank_size: int = 4096
  seed: int = 0


class PretrainData:
  """Records of the selected splits/sources, their images, and tokenisation.

  Picklable: data sources re-open lazily in each worker process.
  """

  def __init__(self, data_dir: str, splits: Sequence[str], cfg: PretrainConfig,
               sources: Sequence[str] | None = None,
               tokenizer: tokenization.Tokenizer | None = None):
    self.cfg = cfg
    self.sources = list(sources) if sources is not None else None
    meta = store.task_metadata(data_dir, "pretrain")
    stored = meta["tokenizer"]
    retokenize = tokenizer is not None and tokenizer.fingerprint != stored["fingerprint"]
    self.records = store.Records(data_dir, "pretrain", splits,
                                 fields=_RECORD_FIELDS + (("sent",) if retokenize else ()))
    arrays = [np.load(os.path.join(layout.task_path(data_dir, "pretrain"), f"{s}.index.npz"))
              for s in splits]
    source_ids = np.concatenate([a["source"] for a in arrays])
    feat_set = np.concatenate([a["feat_set"] for a in arrays]).astype(np.int64)
    feat_index = np.concatenate([a["feat_index"] for a in arrays]).astype(np.int64)
    if sources is None:
      selected = np.arange(source_ids.shape[0])
    else:
      unknown = sorted(set(sources) - set(meta["sources"]))
      if unknown:
        raise ValueError(f"unknown source(s) {unknown}; the data has {meta['sources']}")
      wanted = [meta["sources"].index(s) for s in sources]
      selected = np.flatnonzero(np.isin(source_ids, wanted))
    if selected.shape[0] == 0:
      raise ValueError(f"no pre-training records in splits {list(splits)} for sources {sources}")
    # Compact arrays: they are pickled to every grain worker.
    self.selected = selected.astype(np.int32 if selected[-1] < 2**31 else np.int64)
    # One int64 per datum identifies its image: feature set << 32 | index.
    self.image_keys = (feat_set[selected] << 32) | feat_index[selected]
    if cfg.task_matched and np.unique(self.image_keys).shape[0] < 2:
      raise ValueError("sentence-image matching needs at least two images")
    self.images = store.FeatureStore(data_dir, meta["feature_sets"], cfg.num_objects)
    self.retokenizer = tokenizer if retokenize else None
    if tokenizer is not None:
      self.vocab_size = tokenizer.vocab_size
      self.special = {"pad": tokenizer.pad_id, "cls": tokenizer.cls_id, "sep": tokenizer.sep_id,
                      "mask": tokenizer.mask_id}
    else:
      self.vocab_size = stored["vocab_size"]
      self.special = dict(meta["special_ids"])
    self._bank = None

  def __len__(self) -> int:
    return int(self.selected.shape[0])

  def __repr__(self) -> str:
    return (f"PretrainData({self.records!r}, sources={self.sources}, selected={len(self)}, "
            f"{self.cfg})")

  def record(self, position: int) -> dict[str, Any]:
    """The stored record of a selected datum."""
    return self.records[self.selected[position]]

  def image_of(self, position: int) -> tuple[int, int]:
    """`(feat_set, feat_index)` of a selected datum's image."""
    key = int(self.image_keys[position])
    return key >> 32, key & 0xFFFFFFFF

  def pieces(self, record: dict[str, Any]) -> np.ndarray:
    if self.retokenizer is None:
      return record["token_ids"]
    sent = record["sent"].decode("utf-8") if isinstance(record["sent"], bytes) else record["sent"]
    return np.asarray(self.retokenizer.tokenize_ids([sent])[0], np.int32)

  def random_box(self, rng: np.random.Generator) -> np.ndarray:
    """A box feature (float16 [F]) of a uniformly random datum's image."""
    if self.cfg.feature_bank_size:
      bank = self.bank()
      return bank[int(rng.integers(bank.shape[0]))]
    d = int(rng.integers(len(self)))
    raw = self.images.raw(*self.image_of(d))
    n = min(int(raw["num_boxes"]), self.cfg.num_objects)
    return raw["features"][int(rng.integers(n))]

  def bank(self) -> np.ndarray:
    """float16 [K, F] box features drawn once from the loader seed."""
    if self._bank is None:
      rng = np.random.default_rng([self.cfg.seed, 0x62616E6B])
      k = self.cfg.feature_bank_size
      data = rng.integers(len(self), size=k)
      box_u = rng.random(k)
      rows = np.empty((k, self.images.feature_dim), np.float16)
      for i in np.argsort(data, kind="stable"):
        d = data[i]
        raw = self.images.raw(*self.image_of(d))
        n = min(int(raw["num_boxes"]), self.cfg.num_objects)
        rows[i] = raw["features"][int(box_u[i] * n)]
      self._bank = rows
    return self._bank

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_bank"] = None
    return state


class _Source(grain.sources.RandomAccessDataSource):
  """Grain source over the selected data: yields positions, not records.

  The record is read by `BuildExample`, which reads other records anyway;
  handing grain a plain int keeps its per-element bookkeeping cheap.
  """

  def __init__(self, data: PretrainData):
    self.data = data

  def __len__(self) -> int:
    return len(self.data)

  def __repr__(self) -> str:
    # Grain compares reprs to check a restored iterator reads the same data.
    return f"PretrainSource({self.data!r})"

  def __getitem__(self, position: int) -> int:
    return int(position)


class BuildExample(grain.transforms.RandomMap):
  """One pre-training example from one record (see the module docstring)."""

  def __init__(self, data: PretrainData):
    self.data = data

  def random_map(self, element: int | dict[str, Any],
                 rng: np.random.Generator) -> dict[str, Any]:
    data, cfg = self.data, self.data.cfg
    # A position, or a dict {"position", "_mask"} from an evaluation's padding.
    pos = element if isinstance(element, int) else element["position"]
    record = data.record(pos)
    # 1. Sentence-image matching.
    matched = 1
    text_record = record
    if cfg.task_matched and rng.random() < cfg.mismatch_prob:
      matched = 0
      text_record = data.record(masking.draw_other(data.image_keys, data.image_keys[pos], rng))
    # 2. QA target (never for mismatched pairs).
    ans = IGNORE
    if matched and record["has_label"]:
      ans = masking.sample_answer(record["ans_ids"], record["ans_scores"], rng)
    # 3. Word masking.
    pieces = data.pieces(text_record)[:cfg.max_seq_length - 2]
    ids, labels = masking.mask_tokens(pieces, rng, vocab_size=data.vocab_size,
                                      mask_id=data.special["mask"], mask_prob=cfg.mask_prob)
    input_ids, attention_mask, lm_labels = masking.frame_with_labels(
        ids, labels, cfg.max_seq_length, cls_id=data.special["cls"], sep_id=data.special["sep"],
        pad_id=data.special["pad"])
    # 4. Object masking.
    image = data.images.image(*data.image_of(pos))
    zero, replace, selected = masking.select_objects(image["mask"], rng, cfg.obj_mask_prob)
    feats = image["features"]
    masked = feats
    if selected.any():
      masked = feats.copy()
      masked[zero] = 0
      for box in np.flatnonzero(replace):
        masked[box] = data.random_box(rng)
    example = {
        "input_ids": input_ids, "attention_mask": attention_mask,
        "token_type_ids": np.zeros_like(input_ids), "masked_lm_labels": lm_labels,
        "visual_feats": masked, "feat_targets": feats, "visual_pos": image["boxes"],
        "visual_attention_mask": image["mask"],
        "obj_labels": image["objects_id"], "obj_conf": image["objects_conf"],
        "attr_labels": image["attrs_id"], "attr_conf": image["attrs_conf"],
        "feat_mask": selected.astype(np.float32),
        "matched_label": np.int32(matched), "ans": np.int32(ans),
    }
    if isinstance(element, dict):
      example[common.MASK_KEY] = element[common.MASK_KEY]
    return example


class CollatePretrain:
  """Stacks examples; features stay float16 or go to float32 once.

  For float32, `visual_feats` differs from `feat_targets` only on the boxes
  selected for masking, so each example's targets are converted once and
  copied, and only the selected rows are converted from the masked float16
  features.
  """

  def __init__(self, feature_dtype: np.dtype = np.float32):
    self.feature_dtype = np.dtype(feature_dtype)
    if self.feature_dtype not in (np.float16, np.float32):
      raise ValueError(f"feature_dtype {self.feature_dtype}: expected float16 or float32")
    self.pool = common.BufferPool()

  def enable_shared_memory_output(self) -> None:
    """Called by grain when batches are produced in worker processes."""
    self.pool.enable_shared_memory_output()

  def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    big = ("visual_feats", "feat_targets")
    first = examples[0]
    batch = {k: np.stack([e[k] for e in examples]) for k in first if k not in big}
    shape = (len(examples),) + first["feat_targets"].shape
    targets = self.pool.empty(shape, self.feature_dtype)
    visual = self.pool.empty(shape, self.feature_dtype)
    if self.feature_dtype == np.float16:
      np.stack([e["feat_targets"] for e in examples], out=targets)
      np.stack([e["visual_feats"] for e in examples], out=visual)
      batch["visual_feats"] = visual
      batch["feat_targets"] = targets
      return batch
    for i, example in enumerate(examples):
      common.to_float32(example["feat_targets"], targets[i])
      np.copyto(visual[i], targets[i])
      rows = np.flatnonzero(example["feat_mask"])
      if rows.size:
        visual[i, rows] = common.to_float32(example["visual_feats"][rows])
    batch["visual_feats"] = visual
    batch["feat_targets"] = targets
    return batch


def make_pretrain_loader(data_dir: str, split: str | Sequence[str], *, batch_size: int,
                         seed: int, max_seq_length: int = 20, num_objects: int = 36,
                         tokenizer: tokenization.Tokenizer | None = None, shuffle: bool = True,
                         num_epochs: int | None = None, shard_index: int | None = None,
                         shard_count: int | None = None, worker_count: int = 0,
                         drop_remainder: bool = True, mask_prob: float = 0.15,
                         obj_mask_prob: float = 0.15, sources: Sequence[str] | None = None,
                         task_matched: bool = True, feature_bank_size: int = 4096,
                         read_threads: int | None = None,
                         worker_buffer_size: int = 1,
                         feature_dtype: np.dtype = np.float32) -> grain.DataLoader:
  """A grain DataLoader of pre-training batches (format in the module docstring).

  Args:
    data_dir: root of the prepared data.
    split: pre-training split(s): "mscoco_train+mscoco_nominival+vgnococo" or a list.
    batch_size: per-host batch size B.
    seed: shuffling and all per-record randomness.
    max_seq_length: T.
    num_objects: O; images with fewer boxes are padded, extra boxes dropped.
    tokenizer: None uses the word pieces stored at preparation; a tokenizer
      with a different vocabulary re-tokenises each sentence.
    shuffle: reshuffle every epoch.
    num_epochs: None repeats forever.
    shard_index, shard_count: this host's shard (default from JAX).
    worker_count: grain worker processes (0: in this process).
    drop_remainder: drop the last partial batch (training); False pads it
      with masked examples and adds `_mask` (evaluation).
    mask_prob: word-piece masking probability.
    obj_mask_prob: box masking probability.
    sources: keep only these text sources (e.g. ["mscoco", "vg"] for captions).
    task_matched: build mismatched pairs (else every pair is matched).
    feature_bank_size: see the module docstring; 0 reads random images.
    read_threads: grain read-ahead threads (default none; scale with workers).
    worker_buffer_size: batches buffered per worker.
    feature_dtype: of `visual_feats` and `feat_targets`: float32, or float16
      (the stored values; the training loop casts them on the device).

  Returns:
    The loader; iterate it for batches, `iter(loader).get_state()` /
    `set_state()` to checkpoint the position.
  """
  cfg = PretrainConfig(max_seq_length=max_seq_length, num_objects=num_objects,
                       mask_prob=mask_prob, obj_mask_prob=obj_mask_prob,
                       task_matched=task_matched, feature_bank_size=feature_bank_size, seed=seed)
  data = PretrainData(data_dir, store.resolve_splits(split), cfg, sources=sources,
                      tokenizer=tokenizer)
  return common.make_loader(
      _Source(data), [BuildExample(data)], batch_size=batch_size, seed=seed, shuffle=shuffle,
      num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count,
      drop_remainder=drop_remainder, worker_count=worker_count, read_threads=read_threads,
      worker_buffer_size=worker_buffer_size, batch_fn=CollatePretrain(feature_dtype))
