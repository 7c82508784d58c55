"""What the trainer needs from a task, and nothing else.

The trainer (`lxmert_jax.training.trainer`) owns the mesh, the state, the
jitted step with gradient accumulation, the loop, checkpoints, preemption,
the NaN guard and logging. A task supplies the rest: its model, its
batch -> (loss, metrics) function, its data and its evaluation. Pre-training
is one task; fine-tuning tasks plug into the same trainer.

Losses and gradient accumulation: a task's loss is a sum over what it
averages (labelled words, examples, boxes) divided by how many of those the
batch has (`loss_counts`, read from the labels alone). The trainer takes the
whole batch's counts first and hands them to every micro-batch, so the
micro-batches' gradients and metrics add up to exactly the whole batch's,
however unevenly the labels fall between them.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = dict[str, Array]
# `(state, batch) -> metrics`: the trainer's jitted evaluation of one batch.
EvalStep = Callable[[Any, Batch], Metrics]
# Puts one host batch on the devices, split over the mesh's data axes.
PlaceBatch = Callable[[Mapping[str, Any]], Batch]


class DataNotFoundError(FileNotFoundError):
  """The task's data directory is missing or holds no prepared dataset."""


class Task(abc.ABC):
  """A task for the trainer: model, objective, data, evaluation, reporting.

  Subclasses set `name`, `model` (the flax module trained) and
  `model_config` (its `LxmertConfig`, written next to the checkpoints).
  The objective methods run inside the jitted step: they must be pure
  functions of their array arguments.
  """

  name: str
  model: nn.Module
  model_config: Any
  # The answer of each answer-head row (written to the run's answers.json and
  # used to transfer a checkpoint's answer head); None without an answer head.
  answers: Optional[Sequence[str]] = None

  # --- Objective ---------------------------------------------------------------

  def prepare_batch(self, batch: Batch) -> Batch:
    """Device-side conversion of a batch before the step (e.g. dtype casts)."""
    return batch

  @abc.abstractmethod
  def loss_counts(self, batch: Batch) -> Mapping[str, Array]:
    """What each of the loss's terms averages over in `batch`, from its labels."""

  @abc.abstractmethod
  def loss(self, params: Any, batch: Batch, key: Array, step: Array,
           counts: Mapping[str, Array], *, deterministic: bool) -> tuple[Array, Metrics]:
    """The (micro-)batch's loss, its terms' sums divided by `counts`, and metrics.

    Args:
      params: the model parameters.
      batch: a prepared (micro-)batch.
      key: the dropout key.
      step: the optimiser step (for schedules inside the objective).
      counts: `loss_counts` of the whole batch this one is part of.
      deterministic: no dropout (evaluation).

    Returns:
      (loss, metrics). Every metric must add up over micro-batches (a share
      of the whole batch's value, or a `<name>_correct`/`<name>_count` sum).
    """

  def grads(self, params: Any, batch: Batch, key: Array, step: Array,
            counts: Mapping[str, Array]) -> tuple[Any, Metrics]:
    """Gradients of `loss` in training mode, and its metrics.

    Override for a cheaper computation of the same gradients.
    """
    def loss(p):
      return self.loss(p, batch, key, step, counts, deterministic=False)
    grads, metrics = jax.grad(loss, has_aux=True)(params)
    return grads, metrics

  def step_metrics(self, step: Array) -> Metrics:
    """Per-step values that do not add up over micro-batches (e.g. a loss weight)."""
    del step
    return {}

  # --- Data --------------------------------------------------------------------

  @property
  @abc.abstractmethod
  def steps_per_epoch(self) -> int:
    """Optimiser steps per pass over the training data."""

  @abc.abstractmethod
  def train_iterator(self) -> Iterator[Mapping[str, Any]]:
    """Endless host batches with grain's `get_state`/`set_state` (checkpointed)."""

  @abc.abstractmethod
  def evaluate(self, eval_step: EvalStep, state: Any, place: PlaceBatch) -> dict[str, float]:
    """Evaluation metrics (`eval/...` keys) of `state`; {} when there is nothing to evaluate."""

  # --- Reporting ---------------------------------------------------------------

  def format_metrics(self, metrics: Mapping[str, float], prefix: str) -> str:
    """One console line for the `{prefix}/...` metrics."""
    keys = sorted(k for k in metrics if k.startswith(prefix + "/")
                  and k != f"{prefix}/examples_per_sec")  # The log line has its own rate.
    return " | ".join(f"{k[len(prefix) + 1:]} {metrics[k]:.4g}" for k in keys) or "(none)"

  def final_summary(self, first: Mapping[str, float], last: Mapping[str, float],
                    evaluation: Mapping[str, float]) -> list[str]:
    """Lines printed at the end of a run: first and last training logs, evaluation."""
    return [f"first train: {self.format_metrics(first, 'train')}",
            f"last train:  {self.format_metrics(last, 'train')}",
            f"last eval:   {self.format_metrics(evaluation, 'eval')}"]

  def describe(self) -> Optional[str]:
    """A start-up line about the task's data and settings, if any."""
    return None
