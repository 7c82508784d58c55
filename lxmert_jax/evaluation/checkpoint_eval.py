"""Scoring a fine-tuned checkpoint on a split and writing the benchmark's submission file.

`evaluate_checkpoint` loads a model (a run directory's best checkpoint, an
lxmert_jax checkpoint or a transformers directory), checks that it is the
task's model with the task's answer vocabulary, predicts every example of the
split, and writes `metrics.json` (when the split has labels) and the
submission file the benchmark's server takes (only when every example of the
split has exactly one prediction).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import ml_collections

from lxmert_jax import paths, tasks
from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.inference import saved_models
from lxmert_jax.tasks.finetuning import FinetuningTask
from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.training import step as step_lib

METRICS_FILE = "metrics.json"


class CheckpointMismatchError(ValueError):
  """The checkpoint is not a model of the task being evaluated."""


def check_model_fits_task(saved: saved_models.SavedModel, task: FinetuningTask) -> list[str]:
  """Raises `CheckpointMismatchError` unless `saved` is `task`'s model; returns warnings.

  The architecture must be the task's, the answer head must have one row per
  answer of the task's vocabulary, and a stored answer list must be the
  task's (same answers, same order): a head trained on another vocabulary
  would name the wrong answer for every row.
  """
  wanted = type(task.model).__name__
  found = type(saved.model).__name__
  if found != wanted:
    raise CheckpointMismatchError(f"{saved.source}: holds an {found}, but {task.name} is "
                                  f"evaluated with an {wanted}")
  if task.answers is None:
    return []
  rows = saved.model.config.num_qa_labels
  if rows != len(task.answers):
    raise CheckpointMismatchError(
        f"{saved.source}: its answer head has {rows} rows but the {task.name} data's answer "
        f"vocabulary has {len(task.answers)} answers; was it fine-tuned on other data?")
  if saved.answers is None:
    return [f"{saved.source} has no answers.json: assuming its {rows} answer rows are the "
            "task's vocabulary in order"]
  if list(saved.answers) != list(task.answers):
    diff = next(i for i, (a, b) in enumerate(zip(saved.answers, task.answers)) if a != b)
    raise CheckpointMismatchError(
        f"{saved.source}/answers.json differs from the {task.name} data's answer vocabulary "
        f"(row {diff}: {saved.answers[diff]!r} vs {task.answers[diff]!r}); the checkpoint "
        "was fine-tuned with another vocabulary")
  return []


def evaluate_checkpoint(config: ml_collections.ConfigDict, model_path: str, split: str,
                        out_dir: str, *, step: saved_models.Step = "best",
                        workdir: Optional[str] = None) -> dict[str, Any]:
  """Predicts `split` with the model at `model_path`; writes metrics and the submission.

  Args:
    config: the fine-tuning config (task, data, mesh, eval files).
    model_path: a run directory, an lxmert_jax checkpoint or a transformers
      directory.
    split: the split(s) to predict, e.g. "minival" or "test".
    out_dir: where `metrics.json` and the submission file go.
    step: which checkpoint of a run directory.
    workdir: where the demo data lives when `config.data.dir` is empty.

  Returns:
    The summary written to `metrics.json`.
  """
  mesh = sharding_lib.make_mesh(config.mesh)
  task = tasks.build(config, workdir or model_path, mesh)
  if not isinstance(task, FinetuningTask):
    raise ValueError(f"config.task {config.task!r} has no benchmark evaluation; expected "
                     "vqa, gqa or nlvr2")
  batch_size = config.get("eval_batch_size", 0) or config.batch_size
  step_lib.check_batch_layout(batch_size, mesh, 1, jax.process_count())
  try:
    saved = saved_models.load_saved_model(model_path, step)
  except ConversionError as e:
    raise CheckpointMismatchError(str(e)) from e
  warnings = check_model_fits_task(saved, task)
  params = jax.device_put(saved.params, sharding_lib.replicated(mesh))
  batch_sh = sharding_lib.batch_sharding(mesh)
  predictions = task.predict_split(params, split,
                                   lambda b: sharding_lib.global_batch(b, batch_sh))
  summary: dict[str, Any] = {
      "task": task.name, "split": split, "checkpoint": os.fspath(model_path),
      "step": saved.step, "num_examples": len(predictions.ids), "warnings": warnings}
  if task.labelled(predictions):
    summary["metrics"] = task.split_metrics(predictions)
  else:
    summary["metrics"] = {}
    summary["warnings"].append(f"split {split} has no labels: only the submission is written")
  out = paths.resolve(out_dir)
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    submission = task.write_submission(
        predictions, os.fspath(out / task.submission_name.format(split=split.replace("+", "_"))))
    summary["submission"] = os.fspath(submission)
    paths.write_bytes(out / METRICS_FILE, (json.dumps(summary, indent=2) + "\n").encode())
  return summary
