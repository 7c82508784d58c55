"""NLVR2 fine-tuning: is a statement true of a pair of images?

The original's model (`LxmertForNLVR2`): the statement runs against each
image, the two pooled outputs are concatenated and classified two ways, with
cross-entropy. The dev metrics are those of lil-lab/nlvr's `metrics.py`:
accuracy over image pairs, and consistency, the fraction of statements whose
every image pair is right.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lxmert_jax import evaluation
from lxmert_jax.evaluation import submission
from lxmert_jax.model.task_models import LxmertForNLVR2
from lxmert_jax.tasks import finetuning
from lxmert_jax.tasks.base import Batch
from lxmert_jax.tasks.finetuning import MODEL_INPUTS, SplitPredictions, model_config_from


class NLVR2Task(finetuning.FinetuningTask):
  """NLVR2 fine-tuning of `LxmertForNLVR2`."""

  name = "nlvr2"

  def __init__(self, config: ml_collections.ConfigDict, model_config: Any, data: Any = None):
    super().__init__(config, data)
    self.model_config = model_config
    self.model = LxmertForNLVR2(model_config)

  def example_outputs(self, params: Any, batch: Batch, key: jax.Array, *,
                      deterministic: bool) -> dict[str, jax.Array]:
    out = self.model.apply({"params": params}, **{k: batch[k] for k in MODEL_INPUTS},
                           deterministic=deterministic, rngs={"dropout": key})
    logits = out.logits.astype(jnp.float32)
    labels = batch["label"].astype(jnp.int32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return {"loss": loss, "predicted": predicted,
            "score": (predicted == labels).astype(jnp.float32),
            "finite": jnp.all(jnp.isfinite(logits), axis=-1)}

  def split_metrics(self, predictions: SplitPredictions) -> dict[str, float]:
    labels = self.data.split_labels(predictions.split)
    examples = [{"identifier": i, "label": int(l)} for i, l in zip(predictions.ids, labels)]
    scores = evaluation.evaluate_nlvr2(
        {i: int(p) for i, p in zip(predictions.ids, predictions.predicted)}, examples)
    return {"loss": float(np.mean(predictions.outputs["loss"])), "accuracy": scores.accuracy,
            "consistency": scores.consistency}

  @property
  def submission_name(self) -> str:
    return "nlvr2_{split}_predictions.csv"

  def write_submission(self, predictions: SplitPredictions, path: str) -> str:
    pairs = [(i, bool(p)) for i, p in zip(predictions.ids, predictions.predicted)]
    submission.write_nlvr2_submission(path, pairs, predictions.ids)
    return path

  def chance_level(self) -> str:
    labels = self.data.split_labels(self.config.data.eval_split)
    if not labels.size:
      return ""
    true = float(np.mean(labels))
    return (f"answering {'True' if true >= 0.5 else 'False'} for every pair scores accuracy "
            f"{max(true, 1 - true):.3f}")


def build(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh) -> NLVR2Task:
  """The NLVR2 task of a run, its data found or built first."""
  del mesh
  from lxmert_jax.tasks import finetuning_data  # pylint: disable=import-outside-toplevel
  data = finetuning_data.FinetuneData(config, workdir, "nlvr2")
  return NLVR2Task(config, model_config_from(config, data.model_fields()), data)
