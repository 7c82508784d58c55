"""Small configs and random inputs shared by the model and conversion tests."""

from __future__ import annotations

import numpy as np

TINY = dict(vocab_size=120, hidden_size=32, num_attention_heads=4, intermediate_size=48,
             l_layers=2, x_layers=2, r_layers=1, visual_feat_dim=24, num_qa_labels=9,
             num_object_labels=13, num_attr_labels=7, max_position_embeddings=24)


def random_inputs(batch: int, seq_len: int = 9, num_objects: int = 5, *, cfg=None,
                  seed: int = 0, pad_text: bool = True, mask_objects: bool = True
                  ) -> dict[str, np.ndarray]:
  """Random model inputs with padded sentences and (optionally) masked boxes."""
  cfg = dict(TINY, **(cfg or {}))
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, cfg["vocab_size"], (batch, seq_len))
  mask = np.ones((batch, seq_len), np.int64)
  if pad_text:
    for b in range(batch):
      length = rng.integers(3, seq_len + 1) if b else seq_len
      mask[b, length:] = 0
  ids = np.where(mask == 1, ids, 0)
  vmask = np.ones((batch, num_objects), np.int64)
  if mask_objects and batch > 1:
    vmask[-1, num_objects // 2 + 1:] = 0
  return dict(
      input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
      visual_feats=rng.normal(size=(batch, num_objects, cfg["visual_feat_dim"])).astype(np.float32),
      visual_pos=rng.uniform(size=(batch, num_objects, 4)).astype(np.float32),
      visual_attention_mask=vmask)


def random_pretraining_labels(inputs: dict[str, np.ndarray], *, cfg=None, seed: int = 1
                              ) -> dict[str, np.ndarray]:
  """Labels in the pre-training batch format (-100 = ignored)."""
  cfg = dict(TINY, **(cfg or {}))
  rng = np.random.default_rng(seed)
  b, t = inputs["input_ids"].shape
  o = inputs["visual_feats"].shape[1]
  mlm = np.where(rng.uniform(size=(b, t)) < 0.3, rng.integers(0, cfg["vocab_size"], (b, t)), -100)
  mlm[:, 1] = rng.integers(0, cfg["vocab_size"], b)
  ans = rng.integers(0, cfg["num_qa_labels"], b)
  ans[0] = -100
  return dict(
      masked_lm_labels=mlm, matched_label=rng.integers(0, 2, b), ans=ans,
      obj_labels=rng.integers(0, cfg["num_object_labels"], (b, o)),
      obj_conf=rng.uniform(size=(b, o)).astype(np.float32),
      attr_labels=rng.integers(0, cfg["num_attr_labels"], (b, o)),
      attr_conf=rng.uniform(size=(b, o)).astype(np.float32),
      feat_targets=rng.normal(size=(b, o, cfg["visual_feat_dim"])).astype(np.float32),
      feat_mask=(rng.uniform(size=(b, o)) < 0.3).astype(np.float32))


def max_rel_error(ours, reference) -> float:
  """max |ours - reference| / max |reference|."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-12))
