"""One loader for every place a trained LXMERT can live.

Fine-tuning starts from, evaluation scores, and prediction answers with a
model that may be in any of three kinds of directory:

* a run directory of `python -m lxmert_jax.main` (`model_config.json`,
  `run_config.json`, `checkpoints/<step>/`): the parameters of its best
  checkpoint by the run's `ckpt.best_metric` (or the latest, or a given step)
  are restored alone, without the optimiser state;
* our checkpoint directory (`config.json` + `params/`, from `save_model`,
  `python -m lxmert_jax.convert ...` or `export`);
* a transformers `save_pretrained` directory.

Each may hold `answers.json`, the answer of each row of the answer head.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp

from lxmert_jax import paths
from lxmert_jax.convert import checkpoints
from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.convert.hf import from_pretrained_hf

MODEL_CONFIG_FILE = "model_config.json"
RUN_CONFIG_FILE = "run_config.json"
CHECKPOINTS_DIR = "checkpoints"
STATE_ITEM = "state"
Step = Union[int, str]  # A step number, "best" or "latest".


@dataclasses.dataclass
class SavedModel:
  """A model with its parameters, its answer vocabulary and where it came from.

  Attributes:
    model: the task model (architecture from the directory's config).
    params: its parameters (plain arrays).
    answers: the answer of each answer-head row, or None when the directory
      has no `answers.json` (or the model has no answer head).
    source: the directory.
    step: the training step restored from a run directory (else None).
  """

  model: nn.Module
  params: Any
  answers: Optional[list[str]]
  source: str
  step: Optional[int] = None


def is_run_directory(path: paths.PathLike) -> bool:
  """Whether `path` is a work directory of the trainer."""
  root = paths.resolve(path)
  return (root / MODEL_CONFIG_FILE).exists() and (root / CHECKPOINTS_DIR).is_dir()


def load_run_config(path: paths.PathLike) -> ml_collections.ConfigDict:
  """The config a run directory was trained with (`run_config.json`)."""
  file = paths.resolve(path) / RUN_CONFIG_FILE
  if not file.exists():
    raise FileNotFoundError(f"{file}: no such file; the run directory was not written by "
                            "this version's trainer, pass --config explicitly")
  try:
    return ml_collections.ConfigDict(json.loads(file.read_text()))
  except json.JSONDecodeError as e:
    raise ConversionError(f"{file}: not valid JSON ({e})") from e


def _run_model(root: Any) -> nn.Module:
  config_path = root / MODEL_CONFIG_FILE
  data = checkpoints.read_json_object(os.fspath(config_path))
  architectures = data.get("architectures") or ["LxmertForPreTraining"]
  config = checkpoints.config_from_dict(data, os.fspath(config_path))
  try:
    return checkpoints.model_class(architectures[0])(config)
  except ValueError as e:
    raise ConversionError(f"{config_path}: {e}") from e


def _manager(root: Any, run_config: Optional[ml_collections.ConfigDict]
             ) -> ocp.CheckpointManager:
  """A read-only view of a run's checkpoints that knows its best-checkpoint metric."""
  options = {}
  if run_config is not None and run_config.get("ckpt") is not None:
    metric = run_config.ckpt.best_metric
    options = dict(best_fn=lambda metrics: float(metrics[metric]),
                   best_mode=run_config.ckpt.best_mode)
  return ocp.CheckpointManager(root / CHECKPOINTS_DIR,
                               options=ocp.CheckpointManagerOptions(create=False, **options),
                               item_names=(STATE_ITEM, "data_iter"))


def resolve_step(path: paths.PathLike, step: Step = "best") -> int:
  """The checkpoint step of a run directory that `step` names.

  "best" is the best checkpoint by the run's `ckpt.best_metric` among those
  saved with evaluation metrics, falling back to the latest when none was.

  Raises:
    FileNotFoundError: the run has no checkpoint, or not the step asked for.
  """
  root = paths.resolve(path)
  run_config = load_run_config(root) if (root / RUN_CONFIG_FILE).exists() else None
  manager = _manager(root, run_config)
  try:
    steps = list(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f"{root / CHECKPOINTS_DIR}: no complete checkpoint")
    if step == "latest":
      return int(manager.latest_step())
    if step == "best":
      best = manager.best_step() if run_config is not None else None
      return int(best if best is not None else manager.latest_step())
    if isinstance(step, str) and not step.isdigit():
      raise ValueError(f"checkpoint step {step!r}: expected 'best', 'latest' or a number")
    if int(step) not in steps:
      raise FileNotFoundError(f"{root / CHECKPOINTS_DIR}: no checkpoint at step {step}; "
                              f"saved steps: {sorted(steps)}")
    return int(step)
  finally:
    manager.close()


def load_run_params(path: paths.PathLike, model: nn.Module, step: int) -> Any:
  """The parameters of checkpoint `step` of a run, restored alone on one device."""
  state_dir = paths.resolve(path) / CHECKPOINTS_DIR / str(step) / STATE_ITEM
  abstract = checkpoints.abstract_params(model)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract)
  try:
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir, args=ocp.args.PyTreeRestore(item={"params": abstract},
                                               restore_args={"params": restore_args},
                                               partial_restore=True))
  except (ValueError, KeyError) as e:
    raise ConversionError(f"{state_dir}: cannot restore the parameters of "
                          f"{type(model).__name__} described by {MODEL_CONFIG_FILE} ({e})") from e
  return restored["params"]


def load_saved_model(path: paths.PathLike, step: Step = "best") -> SavedModel:
  """Loads a run directory, our checkpoint directory or a transformers directory.

  Args:
    path: the directory.
    step: for a run directory, which checkpoint ("best", "latest" or a step).

  Raises:
    FileNotFoundError: `path` is none of the three kinds.
    ConversionError: its files do not describe a loadable model.
  """
  source = os.fspath(path)
  if is_run_directory(source):
    root = paths.resolve(source)
    model = _run_model(root)
    chosen = resolve_step(root, step)
    params = load_run_params(root, model, chosen)
    answers_path = root / checkpoints.ANSWERS_FILE
    answers = (checkpoints.read_answer_list(os.fspath(answers_path))
               if answers_path.exists() else None)
    return SavedModel(model, params, answers, source, chosen)
  if not os.path.isdir(source):
    raise FileNotFoundError(f"{source}: no such directory; expected a run directory, an "
                            "lxmert_jax checkpoint or a transformers directory")
  if os.path.isdir(os.path.join(source, "params")):
    model, params = checkpoints.load_model(source)
  elif os.path.exists(os.path.join(source, "config.json")):
    model, params = from_pretrained_hf(source)
  else:
    raise FileNotFoundError(
        f"{source}: neither a run directory ({MODEL_CONFIG_FILE} + {CHECKPOINTS_DIR}/), an "
        "lxmert_jax checkpoint (config.json + params/) nor a transformers directory "
        "(config.json + model.safetensors)")
  return SavedModel(model, params, checkpoints.load_answers(source), source)
