"""What the three fine-tuning tasks (VQA, GQA, NLVR2) share: loss plumbing and whole-split prediction.

A fine-tuning task's objective is one loss per example averaged over the
batch's real examples (`_mask`), and its dev metric is computed from a
prediction for every example of the split, not from a sample of batches: the
benchmarks score every question. `predict_split` runs the split once (padded
last batch, `_index` naming each example's record), gathers the per-example
outputs from every host, refuses NaN/Inf scores, and returns them in record
order with the examples' ids; the tasks turn them into metrics and
submission files.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.tasks.base import Batch, EvalStep, Metrics, PlaceBatch, Task

MASK, INDEX = "_mask", "_index"
FEATURE_KEYS = ("visual_feats",)
MODEL_INPUTS = ("input_ids", "visual_feats", "visual_pos", "attention_mask",
                "token_type_ids", "visual_attention_mask")


def model_config_from(config: ml_collections.ConfigDict,
                      data_fields: Mapping[str, int]) -> LxmertConfig:
  """The LxmertConfig of a fine-tuning run: `config.model` with the data's sizes.

  The pre-training heads are switched off: a fine-tuned model has only its
  task's head.
  """
  fields = dict(config.model.to_dict())
  fields.update(data_fields)
  fields.update(task_mask_lm=False, task_obj_predict=False, task_matched=False,
                task_qa=False)
  try:
    return LxmertConfig(**fields)
  except TypeError as e:
    raise ValueError(f"config.model: {e}; known fields are "
                     f"{sorted(LxmertConfig.__dataclass_fields__)}") from e


class NonFiniteScoresError(ValueError):
  """The model produced NaN or Inf scores for some examples of a split."""


@dataclasses.dataclass
class SplitPredictions:
  """Per-example outputs over a whole split, in record order.

  Attributes:
    split: the split(s) predicted.
    ids: each example's question id (NLVR2: identifier).
    predicted: the predicted label (answer id; NLVR2: 1 = true) of each example.
    outputs: the task's other per-example outputs (e.g. `loss`, `score`).
  """

  split: str
  ids: list[str]
  predicted: np.ndarray
  outputs: dict[str, np.ndarray]


def gather_rows(x: jax.Array) -> np.ndarray:
  """A batch-sharded array as one host array with every process's rows."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


class FinetuningTask(Task):
  """Base of the VQA/GQA and NLVR2 tasks.

  Subclasses set `name`, `model`, `model_config`, and implement `example_outputs`
  (per-example loss, prediction and score), `split_metrics` and
  `write_submission`.

  Args:
    config: the run config.
    data: the data side (`finetuning_data.FinetuneData`).
  """

  score_name = "accuracy"  # The training log's `acc/<score_name>`.

  def __init__(self, config: ml_collections.ConfigDict, data: Any):
    self.config = config
    self.data = data
    self._predict_fn: Optional[Callable[..., Any]] = None

  # --- Objective ---------------------------------------------------------------

  def prepare_batch(self, batch: Batch) -> Batch:
    return {**batch, **{k: jnp.asarray(batch[k], jnp.float32) for k in FEATURE_KEYS}}

  @staticmethod
  def example_mask(batch: Batch) -> jax.Array:
    """1 for real examples (training batches have no padding)."""
    if MASK in batch:
      return batch[MASK].astype(jnp.float32)
    return jnp.ones((batch["input_ids"].shape[0],), jnp.float32)

  def loss_counts(self, batch: Batch) -> Mapping[str, jax.Array]:
    return {"examples": jnp.sum(self.example_mask(batch))}

  @abc.abstractmethod
  def example_outputs(self, params: Any, batch: Batch, key: jax.Array, *,
                      deterministic: bool) -> dict[str, jax.Array]:
    """Per-example `loss`, `predicted`, `score` (credit of the prediction) and `finite`."""

  def loss(self, params: Any, batch: Batch, key: jax.Array, step: jax.Array,
           counts: Mapping[str, jax.Array], *, deterministic: bool
           ) -> tuple[jax.Array, Metrics]:
    del step
    out = self.example_outputs(params, batch, key, deterministic=deterministic)
    mask = self.example_mask(batch)
    count = jnp.maximum(counts["examples"], 1.0)
    loss = jnp.sum(out["loss"] * mask) / count
    return loss, {"loss": loss, f"{self.score_name}_correct": jnp.sum(out["score"] * mask),
                  f"{self.score_name}_count": jnp.sum(mask)}

  # --- Data --------------------------------------------------------------------

  @property
  def steps_per_epoch(self) -> int:
    return self.data.steps_per_epoch

  def train_iterator(self) -> Iterator[Mapping[str, np.ndarray]]:
    return self.data.train_iterator()

  # --- Prediction and evaluation -------------------------------------------------

  def _outputs_fn(self) -> Callable[..., Any]:
    if self._predict_fn is None:
      def outputs(params, batch):
        batch = self.prepare_batch(batch)
        out = self.example_outputs(params, batch, jax.random.key(0), deterministic=True)
        return dict(out, **{k: batch[k] for k in (MASK, INDEX)})
      self._predict_fn = jax.jit(outputs)
    return self._predict_fn

  def predict_split(self, params: Any, split: str, place: PlaceBatch) -> SplitPredictions:
    """Runs every example of `split` and returns its outputs in record order.

    Raises:
      NonFiniteScoresError: some example's scores are NaN/Inf (naming the
        first such examples); no prediction is returned for a broken model.
    """
    fn = self._outputs_fn()
    batch_size = self.config.get("eval_batch_size", 0) or self.config.batch_size
    parts: dict[str, list[np.ndarray]] = {}
    for host_batch in self.data.eval_batches(split, batch_size):
      device_batch = place({k: v for k, v in host_batch.items()
                            if np.asarray(v).dtype.kind in "biuf"})
      for key, value in fn(params, device_batch).items():
        parts.setdefault(key, []).append(gather_rows(value))
    rows = {k: np.concatenate(v) for k, v in parts.items()}
    real = rows[MASK] > 0
    order = np.argsort(rows[INDEX][real], kind="stable")
    rows = {k: v[real][order] for k, v in rows.items()}
    ids = self.data.example_ids(split)
    if not np.array_equal(rows[INDEX], np.arange(len(ids))):
      raise RuntimeError(f"split {split}: predicted {len(rows[INDEX])} examples, expected each "
                         f"of the {len(ids)} records once")
    bad = np.flatnonzero(~rows.pop("finite").astype(bool))
    if bad.size:
      raise NonFiniteScoresError(
          f"split {split}: the model's scores are NaN or Inf for {bad.size} of {len(ids)} "
          f"examples, e.g. {[ids[i] for i in bad[:5]]}; no predictions were written")
    predicted = rows.pop("predicted")
    for key in (MASK, INDEX):
      rows.pop(key)
    return SplitPredictions(split=split, ids=ids, predicted=predicted, outputs=rows)

  def evaluate(self, eval_step: EvalStep, state: Any, place: PlaceBatch) -> dict[str, float]:
    """The dev metrics of `state` on the whole eval split (`eval/...` keys)."""
    del eval_step  # The whole split is predicted instead.
    predictions = self.predict_split(state.params, self.config.data.eval_split, place)
    return {f"eval/{k}": v for k, v in self.split_metrics(predictions).items()}

  @abc.abstractmethod
  def split_metrics(self, predictions: SplitPredictions) -> dict[str, float]:
    """The benchmark's metrics of a labelled split's predictions."""

  @abc.abstractmethod
  def write_submission(self, predictions: SplitPredictions, path: str) -> str:
    """Writes the benchmark's submission file for `predictions`; returns its path."""

  @property
  @abc.abstractmethod
  def submission_name(self) -> str:
    """The submission file's name, e.g. `vqa_minival_submission.json`, with `{split}`."""

  def labelled(self, predictions: SplitPredictions) -> bool:
    """Whether the split has labels to score (test splits often do not)."""
    return True

  # --- Reporting ---------------------------------------------------------------

  def describe(self) -> Optional[str]:
    cfg = self.config.data
    return (f"data {self.data.dir}: train {cfg.train_split} ({self.data.num_train:,} "
            f"examples), evaluation on all of {cfg.eval_split} "
            f"({self.data.num_examples(cfg.eval_split):,} examples)")

  def final_summary(self, first: Mapping[str, float], last: Mapping[str, float],
                    evaluation: Mapping[str, float]) -> list[str]:
    lines = super().final_summary(first, last, evaluation)
    baseline = self.chance_level()
    if baseline:
      lines.append(f"chance:      {baseline}")
    return lines

  def chance_level(self) -> str:
    """A line naming the dev metric a model that ignores its inputs would reach."""
    return ""
