"""The pre-training objective: which tasks run, how they are weighted, when.

The five LXMERT pre-training tasks (masked LM, image-sentence matching,
RoI-feature regression, detected-label classification for objects and
attributes, and question answering) are summed with per-task weights. A task
switched off is removed from the model (its head is not built), so it costs
nothing; a weight only scales a task that runs.

The QA loss has its own schedule. The released code trains it with weight 1
from the first epoch; the EMNLP paper's model added it only for the second
half (10 of 20 epochs) with weight 2, to compensate for more than half of the
sentences carrying no answer. `objective.qa_start_epoch` and
`objective.weights.qa` express both.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections

from lxmert_jax.objectives import losses

TASKS = losses.LOSS_TERMS  # ("mlm", "matched", "obj", "attr", "feat", "qa")
ACCURACY_TASKS = ("mlm", "matched", "qa", "obj", "attr")

_MODEL_SWITCHES = {"mlm": "task_mask_lm", "matched": "task_matched", "qa": "task_qa",
                   "obj": "visual_obj_loss", "attr": "visual_attr_loss",
                   "feat": "visual_feat_loss"}


def model_task_switches(objective: ml_collections.ConfigDict) -> dict[str, bool]:
  """The `LxmertConfig` task fields implied by `objective.tasks`."""
  unknown = sorted(set(objective.tasks.keys()) - set(TASKS))
  if unknown:
    raise ValueError(f"objective.tasks has unknown tasks {unknown}; expected {list(TASKS)}")
  on = {task: bool(objective.tasks.get(task, True)) for task in TASKS}
  if not any(on.values()):
    raise ValueError("objective.tasks: every task is switched off; nothing to train")
  switches = {_MODEL_SWITCHES[task]: on[task] for task in TASKS}
  switches["task_obj_predict"] = on["obj"] or on["attr"] or on["feat"]
  return switches


def loss_weights(objective: ml_collections.ConfigDict, step: jax.Array,
                 steps_per_epoch: int) -> dict[str, jax.Array]:
  """Per-task loss weights at `step` (traceable: `step` may be a tracer).

  Args:
    objective: the `objective` config block (`weights`, `qa_start_epoch`).
    step: the optimiser step of the batch.
    steps_per_epoch: optimiser steps per pass over the training data.

  Returns:
    A float32 weight per task; QA's is 0 before `qa_start_epoch`.
  """
  weights = {task: jnp.float32(objective.weights.get(task, 1.0)) for task in TASKS}
  epoch = jnp.asarray(step) // max(int(steps_per_epoch), 1)
  weights["qa"] = jnp.where(epoch >= objective.qa_start_epoch, weights["qa"], 0.0)
  return weights


def compute(outputs: Any, batch: Mapping[str, jax.Array], model_config: Any,
            weights: Mapping[str, jax.Array], counts: Optional[Mapping[str, jax.Array]] = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted total loss and the step's metrics.

  Args:
    outputs: the heads' outputs.
    batch: the labels (pipeline format).
    model_config: task switches and the visual normaliser.
    weights: per-task weights (`loss_weights`).
    counts: what each task's loss is averaged over (`losses.batch_counts`
      of the whole batch); by default this batch's own.

  Returns:
    (total loss, metrics) where metrics hold `loss`, `loss/<task>` (the
    unweighted per-task means) and `<task>_correct` / `<task>_count` sums
    for the accuracies. With the whole batch's `counts`, every metric of a
    micro-batch is its share of the whole batch's: they add up.
  """
  total, terms = losses.pretraining_losses(outputs, batch, model_config, weights, counts)
  metrics = {"loss": total}
  metrics.update({f"loss/{k}": v for k, v in terms.items()})
  # A switched-off task may still have logits (transformers always runs the
  # masked-LM head); its untrained accuracy would only mislead.
  metrics.update({k: v for k, v in losses.pretraining_metrics(outputs, batch).items()
                  if getattr(model_config, _MODEL_SWITCHES[k.rsplit("_", 1)[0]])})
  return total, metrics


def chance_accuracy(model_config: Any) -> dict[str, float]:
  """Accuracy of uniform guessing per task, to judge the learned accuracies."""
  return {"mlm": 1.0 / model_config.vocab_size, "matched": 0.5,
          "qa": 1.0 / model_config.num_qa_labels, "obj": 1.0 / model_config.num_object_labels,
          "attr": 1.0 / model_config.num_attr_labels}
