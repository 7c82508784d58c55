"""One module per task: what it trains, on which data, and how it is evaluated.

`config.task` names the task of a run; each task module has
`build(config, workdir, mesh) -> tasks.base.Task`.
"""

from __future__ import annotations

import importlib

import jax
import ml_collections

from lxmert_jax.tasks.base import Task

# Task name -> module (imported when a run asks for it).
TASK_MODULES = {
    "pretraining": "lxmert_jax.tasks.pretraining",
    "vqa": "lxmert_jax.tasks.question_answering",
    "gqa": "lxmert_jax.tasks.question_answering",
    "nlvr2": "lxmert_jax.tasks.nlvr2",
}


def build(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh) -> Task:
  """The task `config.task` names, with its data."""
  name = config.get("task", "pretraining")
  if name not in TASK_MODULES:
    raise ValueError(f"config.task {name!r}: expected one of {sorted(TASK_MODULES)}")
  return importlib.import_module(TASK_MODULES[name]).build(config, workdir, mesh)
