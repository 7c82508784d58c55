"""Our model checkpoint directory: `config.json` plus orbax-saved parameters.

Layout of a directory written by `save_model`:

    config.json   transformers-style LXMERT config, `architectures` naming the
                  task model, our dtypes under `lxmert_jax`
    params/       the parameter tree, saved with orbax's StandardCheckpointer
    answers.json  (models with an answer head) the answer of each output row,
                  a JSON list of strings; needed to turn scores into answers
                  and to transfer the head to another answer vocabulary

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
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.model import task_models
from lxmert_jax.model import encoders
from lxmert_jax.model.config import LxmertConfig

_GLOB_BRACKETS = ("[", "]")
ANSWERS_FILE = "answers.json"

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


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f"{path}: not valid JSON ({e})") from e


def read_json_object(path: str) -> dict[str, Any]:
  """The JSON object in the file at `path`.

  Raises:
    ConversionError: the file is not valid JSON, or holds something else than
      an object; the message names the file.
  """
  data = _read_json(path)
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


def save_model(directory: str | os.PathLike, model: nn.Module, params: Any,
               answers: Optional[Sequence[str]] = None) -> str:
  """Writes `config.json`, `params/` and `answers.json` atomically; returns the directory.

  Args:
    directory: where to write.
    model: the task model.
    params: its parameters.
    answers: the answer of each row of the answer head, if it has one.

  Raises:
    ConversionError: `directory` contains `[` or `]`, or `answers` does not
      fit the model's answer head (nothing is written).
  """
  check_output_directory(directory)
  if answers is not None:
    check_answers(model, answers, "answers")
  with atomic_directory(directory) as tmp:
    model.config.to_json_file(os.path.join(tmp, "config.json"),
                              architectures=[architecture_name(model)])
    if answers is not None:
      save_answers(tmp, answers)
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


def answer_head_size(model: nn.Module) -> Optional[int]:
  """The number of answers the model scores (None for a model without answers).

  NLVR2's two-way classifier is not an answer vocabulary, so it has none.
  """
  if isinstance(model, task_models.LxmertForQuestionAnswering):
    return model.config.num_qa_labels
  if isinstance(model, task_models.LxmertForPreTraining) and model.config.task_qa:
    return model.config.num_qa_labels
  return None


def check_answers(model: nn.Module, answers: Sequence[str], source: str) -> None:
  """Raises `ConversionError` unless `answers` has one string per answer-head row."""
  size = answer_head_size(model)
  if size is None:
    raise ConversionError(f"{source}: {type(model).__name__} has no answer head to name "
                          "answers for")
  if not all(isinstance(a, str) for a in answers):
    bad = next(i for i, a in enumerate(answers) if not isinstance(a, str))
    raise ConversionError(f"{source}[{bad}]: expected an answer string, found "
                          f"{answers[bad]!r}")
  if len(answers) != size:
    raise ConversionError(f"{source}: {len(answers)} answers for an answer head of {size} "
                          "rows; the answer vocabulary must be the one the head was "
                          "trained on")


def save_answers(directory: str | os.PathLike, answers: Sequence[str]) -> str:
  """Writes `answers.json` (a list of answer strings) into `directory`."""
  path = os.path.join(os.fspath(directory), ANSWERS_FILE)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(list(answers), f, ensure_ascii=False)
  return path


def read_answer_list(path: str) -> list[str]:
  """An answer vocabulary file: a JSON list of strings, or the original `all_ans.json`.

  `all_ans.json` (the original pre-training answer table) is a list of
  `{"ans": str, "dsets": [...]}`; its order is the order of the 9500-way
  head's rows.

  Raises:
    ConversionError: the file is not valid JSON or an item is neither a string
      nor an object with a string `ans` (the message names the index).
  """
  data = _read_json(path)
  if not isinstance(data, list):
    raise ConversionError(f"{path}: expected a JSON list of answers, found "
                          f"{type(data).__name__}")
  answers = []
  for i, item in enumerate(data):
    if isinstance(item, dict) and isinstance(item.get("ans"), str):
      item = item["ans"]
    if not isinstance(item, str):
      raise ConversionError(f"{path}[{i}]: expected an answer string or an object with a "
                            f"string 'ans', found {item!r}")
    answers.append(item)
  return answers


def load_answers(directory: str | os.PathLike) -> Optional[list[str]]:
  """The `answers.json` of a checkpoint directory, or None if it has none."""
  path = os.path.join(os.fspath(directory), ANSWERS_FILE)
  return read_answer_list(path) if os.path.exists(path) else None
