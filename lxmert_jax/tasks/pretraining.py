"""LXMERT pre-training as a task for the trainer: five objectives on image-sentence pairs.

The model is `LxmertForPreTraining`; the loss is the weighted sum of the
enabled objectives (`objectives.pretraining`), with the masked-LM and
feature-regression decoders run on the masked rows only when
`mlm_decode_fraction` / `feat_decode_fraction` are set
(`objectives.masked_decoding`, gathered per data-parallel shard). The
evaluation adds an image-use control: the language-side accuracies again,
with every sentence paired with another example's image.

This module imports no data library; `build` loads the data side
(`tasks.pretraining_data`) only when a run needs it, so the benchmark can
time this task's step on a bare accelerator image.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.task_models import LxmertForPreTraining
from lxmert_jax.objectives import losses, masked_decoding
from lxmert_jax.objectives import pretraining as objective
from lxmert_jax.tasks.base import Batch, EvalStep, Metrics, PlaceBatch, Task
from lxmert_jax.training import metric_sums
from lxmert_jax.training import step as step_lib

MODEL_INPUTS = ("input_ids", "visual_feats", "visual_pos", "attention_mask",
                "token_type_ids", "visual_attention_mask")
FEATURE_KEYS = ("visual_feats", "feat_targets")
# Per-box batch fields, moved together when a sentence gets another image.
IMAGE_KEYS = ("visual_feats", "visual_pos", "visual_attention_mask", "obj_labels", "obj_conf",
              "attr_labels", "attr_conf", "feat_targets", "feat_mask")
# Language-side accuracies that can only rise above their text-only level by
# using the image.
GROUNDED_TASKS = ("mlm", "qa")
OTHER_IMAGE = "other_image"


def model_config_from(config: ml_collections.ConfigDict,
                      data_fields: Mapping[str, int]) -> LxmertConfig:
  """The LxmertConfig of a run: variant fields, dataset sizes, task switches.

  Args:
    config: the run config (`model` block and `objective.tasks`).
    data_fields: sizes the dataset dictates (vocab, label and feature sizes).
  """
  fields = dict(config.model.to_dict())
  fields.update(data_fields)
  fields.update(objective.model_task_switches(config.objective))
  try:
    return LxmertConfig(**fields)
  except TypeError as e:
    known = sorted(LxmertConfig.__dataclass_fields__)
    raise ValueError(f"config.model: {e}; known fields are {known}") from e


def features_as_float32(batch: Batch) -> Batch:
  """RoI features and their regression targets as float32, on the device.

  The loader sends them as float16, the precision they are stored in: half
  the bytes for the host to assemble and to copy to the device, and the cast
  is exact, so the model and the losses see the reference's float32 values.
  """
  return {**batch, **{k: jnp.asarray(batch[k], jnp.float32) for k in FEATURE_KEYS
                      if k in batch}}


def _rolled_by_one(images: Batch) -> Batch:
  return {k: jnp.roll(v, 1, axis=0) for k, v in images.items()}


def with_other_images(batch: Batch) -> Batch:
  """The batch with each sentence paired with the next example's image.

  Masked words and answers are often guessable from the sentence alone, so
  their accuracies say little about grounding; the drop from this control
  to the real pairing is what the model takes from the image.

  On a placed (global, sharded) batch the roll runs on the devices over the
  whole batch, so every sentence gets the same other image however many
  processes hold the batch's parts; the result keeps the batch's sharding.
  """
  images = {k: v for k, v in batch.items() if k in IMAGE_KEYS}
  shardings = ({k: v.sharding for k, v in images.items()}
               if all(isinstance(v, jax.Array) for v in images.values()) else None)
  return {**batch, **jax.jit(_rolled_by_one, out_shardings=shardings)(images)}


class PretrainingTask(Task):
  """The five LXMERT pre-training objectives on the pre-training data.

  Args:
    config: the run config (`objective`, decode fractions, `eval_batches`).
    model_config: the model's config (from `model_config_from`).
    steps_per_epoch: optimiser steps per epoch (the QA loss's schedule).
    num_groups: blocks the batch is gathered in for masked decoding (the
      data-parallel shards of the mesh).
    data: the data side (`pretraining_data.PretrainData`); None for a task
      that only computes steps (the benchmark).
  """

  name = "pretraining"

  def __init__(self, config: ml_collections.ConfigDict, model_config: LxmertConfig,
               steps_per_epoch: int, num_groups: int = 1, data: Optional[Any] = None):
    self.config = config
    # The pre-training answer table, for transferring the answer head later.
    self.answers = (list(data.info["answers"]) if data is not None and model_config.task_qa
                    else None)
    self.model_config = model_config
    self.model = LxmertForPreTraining(model_config)
    self._steps_per_epoch = steps_per_epoch
    self.num_groups = num_groups
    self.data = data

  # --- Objective ---------------------------------------------------------------

  def prepare_batch(self, batch: Batch) -> Batch:
    return features_as_float32(batch)

  def loss_counts(self, batch: Batch) -> Mapping[str, jax.Array]:
    return losses.batch_counts(batch, self.model_config)

  def _weights(self, step: jax.Array) -> dict[str, jax.Array]:
    return objective.loss_weights(self.config.objective, step, self._steps_per_epoch)

  def _score(self, step: jax.Array, counts: Mapping[str, jax.Array]):
    weights = self._weights(step)
    return lambda heads, labels: objective.compute(heads, labels, self.model_config, weights,
                                                   counts)

  def _decoding(self) -> dict[str, Any]:
    return dict(mlm_fraction=self.config.mlm_decode_fraction,
                feat_fraction=self.config.feat_decode_fraction, num_groups=self.num_groups)

  def loss(self, params: Any, batch: Batch, key: jax.Array, step: jax.Array,
           counts: Mapping[str, jax.Array], *, deterministic: bool
           ) -> tuple[jax.Array, Metrics]:
    """The weighted loss; `decode_fallback` is 1 when the batch decoded every row."""
    (loss, metrics), fallback = masked_decoding.pretraining_scores(
        self.model, params, {k: batch[k] for k in MODEL_INPUTS}, batch, key,
        self._score(step, counts), deterministic=deterministic, **self._decoding())
    return loss, dict(metrics, decode_fallback=fallback.astype(jnp.float32))

  def grads(self, params: Any, batch: Batch, key: jax.Array, step: jax.Array,
            counts: Mapping[str, jax.Array]) -> tuple[Any, Metrics]:
    """The gradients of `loss`, the backbone differentiated once outside the decoding cond."""
    grads, metrics, fallback = masked_decoding.pretraining_grads(
        self.model, params, {k: batch[k] for k in MODEL_INPUTS}, batch, key,
        self._score(step, counts), **self._decoding())
    return grads, dict(metrics, decode_fallback=fallback.astype(jnp.float32))

  def step_metrics(self, step: jax.Array) -> Metrics:
    return {"weight/qa": self._weights(step)["qa"]}

  # --- Data --------------------------------------------------------------------

  @property
  def steps_per_epoch(self) -> int:
    return self._steps_per_epoch

  def _require_data(self) -> Any:
    if self.data is None:
      raise ValueError("this PretrainingTask was built without data; use tasks.build")
    return self.data

  def train_iterator(self) -> Iterator[Mapping[str, np.ndarray]]:
    return self._require_data().train_iterator()

  def evaluate(self, eval_step: EvalStep, state: Any, place: PlaceBatch) -> dict[str, float]:
    """Mean losses and accuracies over the evaluation batches.

    Also `eval/other_image/{acc,loss}/{mlm,qa}`: the same accuracies and
    losses with every sentence paired with another example's image
    (`with_other_images`). A model that ignores the image scores exactly the
    same both ways; the loss, unlike the accuracy on a few hundred labels,
    shows a small dependence on the image above noise.
    """
    sums: dict[str, float] = {}
    control: dict[str, float] = {}
    num = 0
    for host_batch in self._require_data().eval_batches():
      batch = place(host_batch)
      for target, pairing in ((sums, batch), (control, with_other_images(batch))):
        metric_sums.add_to(target, jax.device_get(eval_step(state, pairing)))
      num += 1
    if not num:
      return {}
    out = {f"eval/{k}": v for k, v in metric_sums.summarize(sums, num).items()}
    for key, value in metric_sums.summarize(control, num).items():
      kind, _, task = key.partition("/")
      if kind in ("acc", "loss") and task in GROUNDED_TASKS:
        out[f"eval/{OTHER_IMAGE}/{key}"] = value
    return out

  # --- Reporting ---------------------------------------------------------------

  def describe(self) -> Optional[str]:
    def decoding(fraction: float) -> str:
      return f"<= {fraction:.0%} of each shard's rows" if fraction > 0 else "every row"
    line = (f"decoders: masked LM on {decoding(self.config.mlm_decode_fraction)}, feature "
            f"regression on {decoding(self.config.feat_decode_fraction)}")
    if self.data is None:
      return line
    cfg = self.config.data
    return (f"data {self.data.dir}: train {cfg.train_split} ({self.data.num_train:,} "
            f"examples), eval {cfg.eval_split}; {line}")

  def format_metrics(self, metrics: Mapping[str, float], prefix: str,
                     chance: Optional[Mapping[str, float]] = None) -> str:
    """`loss 6.02 | mlm 1.09 acc 0.59 | matched ...` for one prefix (train/eval).

    Args:
      metrics: rows such as `{prefix}/loss/mlm`, `{prefix}/acc/mlm`.
      prefix: "train" or "eval".
      chance: when given, each accuracy is followed by the chance level.
    """
    if f"{prefix}/loss" not in metrics:
      return "(none)"
    parts = [f"loss {metrics[f'{prefix}/loss']:.3f}"]
    for task in objective.TASKS:
      loss, acc = metrics.get(f"{prefix}/loss/{task}"), metrics.get(f"{prefix}/acc/{task}")
      if loss is None and acc is None:
        continue
      item = task if loss is None else f"{task} {loss:.3f}"
      if acc is not None:
        item += f" acc {acc:.3f}" + (f" (chance {chance[task]:.2g})" if chance else "")
      parts.append(item)
    return " | ".join(parts)

  def final_summary(self, first: Mapping[str, float], last: Mapping[str, float],
                    evaluation: Mapping[str, float]) -> list[str]:
    chance = objective.chance_accuracy(self.model_config)
    return [f"first train: {self.format_metrics(first, 'train', chance)}",
            f"last train:  {self.format_metrics(last, 'train', chance)}",
            f"last eval:   {self.format_metrics(evaluation, 'eval', chance)}",
            f"image use:   {format_image_use(evaluation)}"]


def format_image_use(metrics: Mapping[str, float]) -> str:
  """`mlm acc 0.62 (0.57 with another image) | qa ...` for the final summary."""
  parts = []
  for task in GROUNDED_TASKS:
    own, other = metrics.get(f"eval/acc/{task}"), metrics.get(f"eval/{OTHER_IMAGE}/acc/{task}")
    if own is not None and other is not None:
      parts.append(f"{task} acc {own:.3f} ({other:.3f} with another example's image)")
  return " | ".join(parts) or "(none)"


def build(config: ml_collections.ConfigDict, workdir: str,
          mesh: jax.sharding.Mesh) -> PretrainingTask:
  """The pre-training task of a run, its data found (or the demo corpus built) first."""
  from lxmert_jax.tasks import pretraining_data  # pylint: disable=import-outside-toplevel
  data = pretraining_data.PretrainData(config, workdir)
  model_config = model_config_from(config, data.model_fields())
  return PretrainingTask(config, model_config, data.steps_per_epoch,
                         num_groups=step_lib.batch_shards(mesh), data=data)
