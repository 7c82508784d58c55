"""Running the masked-LM and feature-regression decoders only where a loss reads them.

Two pre-training decoders produce far more than their losses use. The
masked-LM decoder ([B*T, D] x [D, 30,522], the largest matmul of the model)
is scored only at the ~15% masked word pieces, and the feature-regression
decoder ([B*O, D] x [D, 2,048]) only at the ~15% masked boxes. Gathering
those rows into a static number of slots before decoding skips the rest; the
losses are the same sums over the same rows.

Shapes must be static under `jit`, so the number of slots is a fixed
fraction of the rows. A batch with more masked rows than slots takes, through
`lax.cond`, the branch that decodes every row: the loss and its gradients are
exactly those of the full decoders either way. The price is a second copy of
the heads in the compiled step, and no saving in peak memory: XLA reserves
the temporaries of the larger (full) branch.

Take gradients inside the branches (`run` returns them), not of the
`lax.cond`: differentiating a cond makes each branch also return the other
branch's residuals, filled with zeros, so every step would write a second
set of the model's activations. For the base model's step at batch 16 that
raised XLA's memory estimate from 4.82 to 5.54 GB and made the step 28%
slower on a CPU; with the gradients inside, the estimate is 4.82 GB again.
`pretraining_grads` goes one step further: the backbone runs (forward and
backward) once, outside the cond, and only the heads are in the branches,
so the step compiles one copy of the backbone instead of two.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from lxmert_jax.objectives import losses
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.gather import take_rows

Array = jax.Array
Batch = Mapping[str, Array]
Result = TypeVar("Result")


def capacity(fraction: float, num_rows: int) -> Optional[int]:
  """Slots for `fraction` of `num_rows` rows: ceil(fraction * rows), None when off."""
  return max(1, math.ceil(fraction * num_rows)) if fraction > 0 else None


def gather_rows(valid: Array, num_slots: int) -> tuple[Array, Array, Array]:
  """Per group, the indices of the True entries of `valid`, padded to a static size.

  Args:
    valid: [G, R] booleans: G groups (blocks of whole examples) of R rows.
    num_slots: the static number K of indices per group.

  Returns:
    (indices [G, K] into each group's R rows, padding slots pointing at row
    0; filled [G, K], True for the slots that hold a valid row; overflow,
    True when some group had more than K valid rows and some were left out).
  """
  def one_group(flags):
    (indices,) = jnp.nonzero(flags, size=num_slots, fill_value=0)
    return indices, jnp.sum(flags)

  indices, counts = jax.vmap(one_group)(valid)
  filled = jnp.arange(num_slots)[None, :] < counts[:, None]
  return indices, filled, jnp.any(counts > num_slots)


def gather_masked_positions(labels: Array, num_slots: int, num_groups: int = 1
                            ) -> tuple[Array, Array, Array]:
  """The labelled text positions of masked-LM `labels` [B, T], `num_slots` per group.

  Args:
    labels: [B, T] masked-LM labels (negative: not scored).
    num_slots: K, the slots of each group.
    num_groups: G, the number of equal blocks of examples gathered
      separately (the batch's data-parallel shards).

  Returns:
    (positions [G, K] into each group's (B/G)*T positions, their labels
    [G, K] with padding slots set to IGNORE_INDEX, overflow).
  """
  flat = labels.reshape(num_groups, -1)
  positions, filled, overflow = gather_rows(flat >= 0, num_slots)
  picked = jnp.take_along_axis(flat, positions, axis=1)
  return positions, jnp.where(filled, picked, losses.IGNORE_INDEX), overflow


def gather_masked_boxes(feat_targets: Array, feat_mask: Array, num_slots: int,
                        num_groups: int = 1) -> tuple[Array, Array, Array, Array]:
  """The masked boxes' regression targets, `num_slots` per group.

  Args:
    feat_targets: [B, O, F] the boxes' original features.
    feat_mask: [B, O], non-zero on the boxes whose features were masked.
    num_slots: K, the slots of each group.
    num_groups: G, as in `gather_masked_positions`.

  Returns:
    (positions [G, K] into each group's (B/G)*O boxes, targets [G, K, F],
    mask [G, K] (the box's mask value, 0 in padding slots), overflow).
  """
  flat_mask = feat_mask.reshape(num_groups, -1)
  positions, filled, overflow = gather_rows(flat_mask != 0, num_slots)
  targets = take_rows(feat_targets, positions)
  picked = jnp.take_along_axis(flat_mask, positions, axis=1)
  mask = jnp.where(filled, picked, jnp.zeros((), flat_mask.dtype))
  return positions, targets, mask, overflow


def with_masked_decoding(run: Callable[[Mapping[str, Array], Batch], Result], batch: Batch,
                         config: LxmertConfig, *, mlm_fraction: float,
                         feat_fraction: float, num_groups: int = 1) -> tuple[Result, Array]:
  """`run(positions, batch)` with the decoders restricted to the masked rows.

  Args:
    run: computes the model and its losses, and for training their
      gradients (see the module docstring). `positions` holds the keyword
      arguments for `LxmertForPreTraining` (`mlm_positions`,
      `feat_positions`), empty for full decoding; the batch it gets has the
      labels of the gathered rows in place of the full ones (see
      `gathered_batch`).
    batch: a pre-training batch (`masked_lm_labels`, `feat_targets`,
      `feat_mask`, ...).
    config: the model config; a decoder whose task is off is not gathered.
    mlm_fraction: slots for the masked-LM decoder, as a fraction of the
      text positions (0: decode every position).
    feat_fraction: slots for the feature-regression decoder, as a fraction
      of the boxes (0: decode every box).
    num_groups: the batch is gathered in this many equal blocks of examples,
      each with its own slots (the fractions apply per block). Set it to
      the number of data-parallel shards: each device then gathers and
      decodes its own rows, and no hidden states cross devices.

  Returns:
    (`run`'s result, fallback): the result is the gathered branch's, or the
    full branch's when a block has more masked rows than slots, in which
    case `fallback` is True.
  """
  if batch["masked_lm_labels"].shape[0] % num_groups:
    raise ValueError(f"masked decoding: batch of {batch['masked_lm_labels'].shape[0]} "
                     f"examples does not split into {num_groups} groups")
  mlm_slots = (capacity(mlm_fraction, batch["masked_lm_labels"].size // num_groups)
               if config.task_mask_lm else None)
  feat_on = config.task_obj_predict and "feat" in config.visual_losses
  feat_slots = (capacity(feat_fraction, batch["feat_mask"].size // num_groups)
                if feat_on else None)
  if mlm_slots is None and feat_slots is None:
    return run({}, batch), jnp.zeros((), bool)
  positions, gathered, overflow = gathered_batch(batch, mlm_slots, feat_slots, num_groups)
  result = jax.lax.cond(overflow, lambda: run({}, batch), lambda: run(positions, gathered))
  return result, overflow


def gathered_batch(batch: Batch, mlm_slots: Optional[int], feat_slots: Optional[int],
                   num_groups: int = 1) -> tuple[dict[str, Array], dict[str, Array], Array]:
  """(model keyword arguments, batch with gathered labels, overflow) for the given slots.

  The gathered batch holds `masked_lm_labels` [G, K_mlm] and `feat_targets`
  [G, K_feat, F] / `feat_mask` [G, K_feat] for the gathered rows, and
  `feat_num_boxes`, the B*O boxes the feature loss averages over (as the
  reference does, unmasked boxes counting as zeros).
  """
  positions: dict[str, Array] = {}
  out = dict(batch)
  overflow = jnp.zeros((), bool)
  if mlm_slots is not None:
    positions["mlm_positions"], out["masked_lm_labels"], over = gather_masked_positions(
        batch["masked_lm_labels"], mlm_slots, num_groups)
    overflow = overflow | over
  if feat_slots is not None:
    positions["feat_positions"], out["feat_targets"], out["feat_mask"], over = (
        gather_masked_boxes(batch["feat_targets"], batch["feat_mask"], feat_slots, num_groups))
    out[losses.FEAT_NUM_BOXES] = batch["feat_mask"].size
    overflow = overflow | over
  return positions, out, overflow


def _head_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The parameters `LxmertForPreTraining.decode` reads: the heads' and the word embeddings."""
  heads = {k: v for k, v in params.items() if k != "lxmert"}
  heads["lxmert"] = {"embeddings": {
      "word_embeddings": params["lxmert"]["embeddings"]["word_embeddings"]}}
  return heads


def _add_head_grads(grads: Mapping[str, Any], head_grads: Mapping[str, Any]) -> dict[str, Any]:
  """Backbone gradients (zero for the heads) plus the heads' (and the tied decoder's)."""
  out = {k: head_grads[k] if k in head_grads and k != "lxmert" else v for k, v in grads.items()}
  embeddings = dict(out["lxmert"]["embeddings"])
  embeddings["word_embeddings"] = jax.tree.map(
      jnp.add, embeddings["word_embeddings"],
      head_grads["lxmert"]["embeddings"]["word_embeddings"])
  out["lxmert"] = {**out["lxmert"], "embeddings": embeddings}
  return out


def _encoder(model: nn.Module, inputs: Mapping[str, Array], key: Array,
             deterministic: bool) -> Callable[[Any], tuple[Array, Array, Array]]:
  """`params -> (language, vision, pooled)` outputs of the model's backbone."""
  def encode(params):
    base = model.apply({"params": params}, **inputs, deterministic=deterministic,
                       rngs={"dropout": key}, method=type(model).encode)
    return base.language_output, base.vision_output, base.pooled_output
  return encode


def _decode(model: nn.Module, params: Any, streams: tuple[Array, Array, Array],
            positions: Mapping[str, Array]) -> Any:
  """The model's heads on the backbone's outputs, decoding `positions` only."""
  return model.apply({"params": params}, *streams, **positions, method=type(model).decode)


def pretraining_scores(model: nn.Module, params: Mapping[str, Any],
                       inputs: Mapping[str, Array], batch: Batch, key: Array,
                       score: Callable[[Any, Batch], Result], *, deterministic: bool,
                       mlm_fraction: float, feat_fraction: float, num_groups: int = 1
                       ) -> tuple[Result, Array]:
  """`score(heads, labels)` for an `LxmertForPreTraining`, decoding masked rows only.

  The backbone runs once, outside `with_masked_decoding`'s cond; only the
  heads are in its branches. No gradients: see `pretraining_grads`.

  Returns:
    (`score`'s result, fallback flag).
  """
  streams = _encoder(model, inputs, key, deterministic)(params)
  return with_masked_decoding(
      lambda positions, labels: score(_decode(model, params, streams, positions), labels),
      batch, model.config, mlm_fraction=mlm_fraction, feat_fraction=feat_fraction,
      num_groups=num_groups)


def pretraining_grads(model: nn.Module, params: Mapping[str, Any], inputs: Mapping[str, Array],
                      batch: Batch, key: Array,
                      score: Callable[[Any, Batch], tuple[Array, Mapping[str, Array]]], *,
                      mlm_fraction: float, feat_fraction: float, num_groups: int = 1
                      ) -> tuple[Any, Mapping[str, Array], Array]:
  """Gradients of `score`'s loss for an `LxmertForPreTraining`, decoding masked rows only.

  The backbone runs once, in training mode (dropout from `key`); its outputs
  go to the heads inside `with_masked_decoding`'s branches, where the heads'
  gradients and the gradients of the backbone's outputs are taken; the
  backbone's own backward pass follows, outside the cond. The compiled step
  holds one copy of the backbone and two of the (small) heads.

  Args:
    model: the `LxmertForPreTraining`.
    params: its parameters.
    inputs: the model's input arrays (ids, masks, features, boxes).
    batch: the labels (`masked_lm_labels`, `feat_targets`, `feat_mask`, ...).
    key: the dropout key.
    score: `(heads output, labels) -> (loss, metrics)`; the labels are the
      gathered ones when the decoders run on gathered rows.
    mlm_fraction, feat_fraction, num_groups: see `with_masked_decoding`.

  Returns:
    (gradients for every parameter, score's metrics, fallback flag).
  """
  streams, backbone_vjp = jax.vjp(_encoder(model, inputs, key, deterministic=False), params)

  def run(positions, labels):
    def head_loss(head_params, streams_):
      return score(_decode(model, head_params, streams_, positions), labels)
    (_, metrics), grads = jax.value_and_grad(head_loss, argnums=(0, 1), has_aux=True)(
        _head_params(params), streams)
    return grads, metrics

  ((head_grads, stream_grads), metrics), fallback = with_masked_decoding(
      run, batch, model.config, mlm_fraction=mlm_fraction, feat_fraction=feat_fraction,
      num_groups=num_groups)
  (grads,) = backbone_vjp(stream_grads)
  return _add_head_grads(grads, head_grads), metrics, fallback
