"""Our model checkpoint directory: `config.json` plus orbax-saved parameters.

Layout of a directory written by `save_model`:

    config.json   transformers-style LXMERT config, `architectures` naming the
                  task model, our dtypes under `lxmert_jax`
    params/       the parameter tree, saved with orbax's StandardCheckpointer

A directory is written under a temporary name and renamed into place only
when complete, so a failed or interrupted save never leaves a checkpoint that
looks valid.

Orbax finds the per-process pieces of a save by glob matching under the
checkpoint's path, so a path containing `[` or `]` saves "successfully" into a
checkpoint that cannot be restored. `save_model` refuses such paths before
writing anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.model import task_models
from lxmert_jax.model import encoders
from lxmert_jax.model.config import LxmertConfig

_GLOB_BRACKETS = ("[", "]")

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "LxmertModel": encoders.LxmertModel,
    "LxmertForPreTraining": task_models.LxmertForPreTraining,
    "LxmertForQuestionAnswering": task_models.LxmertForQuestionAnswering,
    "LxmertForNLVR2": task_models.LxmertForNLVR2,
}


def model_class(architecture: str) -> type[nn.Module]:
  """The Flax module class of a transformers-style architecture name."""
  try:
    return ARCHITECTURES[architecture]
  except KeyError:
    raise ValueError(f"unknown architecture {architecture!r}; expected one of "
                     f"{sorted(ARCHITECTURES)}") from None


def architecture_name(model: nn.Module) -> str:
  for name, cls in ARCHITECTURES.items():
    if type(model) is cls:
      return name
  raise ValueError(f"{type(model).__name__} is not an LXMERT task model")


def abstract_params(model: nn.Module, batch_size: int = 1) -> Any:
  """Shapes and dtypes of the model's parameters, without allocating them."""
  inputs = task_models.init_inputs(model, batch_size)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))
  return nn.meta.unbox(shapes["params"])


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary directory that replaces `directory` only on success.

  On any error the temporary directory is removed and `directory` is left as
  it was, so a failed write never leaves a directory that looks complete.
  """
  directory = os.path.abspath(os.fspath(directory))
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(directory) + "-", dir=parent)
  try:
    yield tmp
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def read_json_object(path: str) -> dict[str, Any]:
  """The JSON object in the file at `path`.

  Raises:
    ConversionError: the file is not valid JSON, or holds something else than
      an object; the message names the file.
  """
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict):
    raise ConversionError(f"{path}: expected a JSON object, found {type(data).__name__}")
  return data


def check_output_directory(directory: str | os.PathLike) -> None:
  """Raises `ConversionError` if orbax cannot write a checkpoint at `directory`.

  Orbax glob-matches under the checkpoint's absolute path when it finishes a
  save, and `[`/`]` make that path a pattern that no longer matches itself.
  """
  path = os.path.abspath(os.fspath(directory))
  if any(c in path for c in _GLOB_BRACKETS):
    raise ConversionError(
        f"{path}: cannot write an lxmert_jax checkpoint under a path containing '[' or "
        "']' (orbax treats them as glob patterns and writes a checkpoint it cannot "
        "read back); choose an output directory without brackets")


def save_model(directory: str | os.PathLike, model: nn.Module, params: Any) -> str:
  """Writes `config.json` and `params/` atomically; returns the directory.

  Raises:
    ConversionError: `directory` contains `[` or `]` (nothing is written).
  """
  check_output_directory(directory)
  with atomic_directory(directory) as tmp:
    model.config.to_json_file(os.path.join(tmp, "config.json"),
                              architectures=[architecture_name(model)])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, "params"), nn.meta.unbox(params))
    checkpointer.wait_until_finished()
    checkpointer.close()
  return os.path.abspath(os.fspath(directory))


def load_config(directory: str | os.PathLike) -> tuple[LxmertConfig, str]:
  """The config and architecture name stored in a checkpoint directory."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no such directory; expected an lxmert_jax "
                            "checkpoint (config.json and params/)")
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory}: no config.json; not an lxmert_jax checkpoint")
  data = read_json_object(path)
  architectures = data.get("architectures") or ["LxmertForPreTraining"]
  return config_from_dict(data, path), architectures[0]


def config_from_dict(data: dict[str, Any], source: str) -> LxmertConfig:
  """`LxmertConfig.from_dict`, its complaints raised as `ConversionError`s."""
  try:
    return LxmertConfig.from_dict(data, source=source)
  except (TypeError, ValueError) as e:
    message = str(e) if str(e).startswith(source) else f"{source}: {e}"
    raise ConversionError(message) from e


def load_model(directory: str | os.PathLike, **config_overrides: Any
               ) -> tuple[nn.Module, Any]:
  """Loads `(model, params)` from a directory written by `save_model`.

  Args:
    directory: the checkpoint directory.
    **config_overrides: config fields to change, e.g. `dtype="bfloat16"`.
  """
  config, architecture = load_config(directory)
  try:
    cls = model_class(architecture)
  except ValueError as e:
    raise ConversionError(f"{os.path.join(directory, 'config.json')}: {e}") from e
  model = cls(config.replace(**config_overrides))
  target = abstract_params(model)
  params_dir = os.path.join(os.path.abspath(directory), "params")
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"{directory}: no params/ directory")
  try:
    params = ocp.StandardCheckpointer().restore(params_dir, target)
  except ValueError as e:
    raise ConversionError(f"{params_dir}: cannot restore the parameters of {architecture} "
                          f"described by config.json ({e})") from e
  return model, params
