"""Weight conversion between Hugging Face transformers' LXMERT and ours.

Our parameter tree mirrors transformers' module names, so a key maps by rule:
`lxmert/encoder/layer_3/attention/self/query/kernel` is
`lxmert.encoder.layer.3.attention.self.query.weight` transposed; LayerNorm
`scale` is `weight`; an embedding table is `weight` as is. The masked-LM
decoder is tied to the word embeddings and is not stored separately.

The original repository's snapshots are renamed to these keys by
`lxmert_jax.convert.original`; the command line is `lxmert_jax.convert.cli`.
Reading safetensors needs only numpy; `pytorch_model.bin` needs torch (the
`[torch]` extra).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np

from lxmert_jax.convert import checkpoints
from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.model.config import LxmertConfig

TIED_DECODER_KEY = "cls.predictions.decoder.weight"
WORD_EMBEDDING_KEY = "lxmert.embeddings.word_embeddings.weight"
_LIST_MODULE = re.compile(r"(layer|r_layers|x_layers|logit_fc)_(\d+)")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def hf_key(path: tuple[str, ...]) -> str:
  """The transformers state-dict key of a Flax parameter path."""
  parts = []
  for component in path[:-1]:
    match = _LIST_MODULE.fullmatch(component)
    parts.extend(match.groups() if match else (component,))
  return ".".join(parts + [_LEAF_NAMES[path[-1]]])


def _flat_params(tree: Any) -> dict[tuple[str, ...], Any]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): leaf for path, leaf in flat}


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = tree
    for component in path[:-1]:
      node = node.setdefault(component, {})
    node[path[-1]] = leaf
  return tree


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], model: nn.Module,
                         source: str = "checkpoint",
                         source_keys: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
  """Builds the Flax parameter tree of `model` from a transformers state dict.

  Every parameter of the model must be present with the right shape, and every
  key of the state dict must be used; otherwise a `ConversionError` lists the
  missing keys, the unexpected keys and each shape mismatch. A mismatch names
  the key as it is in the file, our parameter path and both shapes.

  Args:
    state_dict: transformers-keyed arrays (PyTorch layouts).
    model: the Flax task model the parameters are for.
    source: the file or directory the state dict came from, for messages.
    source_keys: the key each state-dict key has in `source` where the two
      differ (a renamed original snapshot); others are reported as they are.
  """
  origin = dict(source_keys or {})

  def named(key: str) -> str:
    return origin.get(key, key)

  target = _flat_params(checkpoints.abstract_params(model))
  remaining = dict(state_dict)
  tied = remaining.pop(TIED_DECODER_KEY, None)
  if tied is not None and WORD_EMBEDDING_KEY in remaining and not np.array_equal(
      tied, remaining[WORD_EMBEDDING_KEY]):
    raise ConversionError(
        f"{source}: {named(TIED_DECODER_KEY)} differs from {named(WORD_EMBEDDING_KEY)}; "
        "LXMERT ties the masked-LM decoder to the word embeddings")
  params, missing, mismatched = {}, [], []
  for path, leaf in target.items():
    key = hf_key(path)
    if key not in remaining:
      missing.append(key)
      continue
    value = np.asarray(remaining.pop(key))
    is_kernel = path[-1] == "kernel"
    expected = tuple(leaf.shape)[::-1] if is_kernel else tuple(leaf.shape)
    if value.shape != expected:
      layout = f", kept transposed as {tuple(leaf.shape)}" if is_kernel else ""
      mismatched.append(f"{named(key)} (our {'/'.join(path)}{layout}): checkpoint "
                        f"{value.shape} vs model {expected}")
      continue
    params[path] = (value.T if is_kernel else value).astype(leaf.dtype)
  problems = []
  if missing:
    problems.append(f"missing keys ({len(missing)}): {sorted(missing)}")
  if remaining:
    problems.append(f"unexpected keys ({len(remaining)}): {sorted(map(named, remaining))}")
  if mismatched:
    problems.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
  if problems:
    raise ConversionError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
  return _unflatten(params)


def params_to_state_dict(params: Any) -> dict[str, np.ndarray]:
  """The transformers state dict (PyTorch layouts, tied decoder omitted)."""
  state_dict = {}
  for path, leaf in _flat_params(nn.meta.unbox(params)).items():
    value = np.asarray(jax.device_get(leaf))
    state_dict[hf_key(path)] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
  return state_dict


# --- Hugging Face directories -------------------------------------------------


def read_hf_directory(hf_dir: str | os.PathLike
                      ) -> tuple[LxmertConfig, str, dict[str, np.ndarray]]:
  """Reads `(config, architecture, state_dict)` from a `save_pretrained` directory."""
  hf_dir = os.fspath(hf_dir)
  if not os.path.isdir(hf_dir):
    raise ConversionError(f"{hf_dir}: no such directory; expected a transformers "
                          "`save_pretrained` directory")
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(config_path):
    raise ConversionError(f"{hf_dir}: no config.json; expected a transformers "
                          "`save_pretrained` directory")
  data = checkpoints.read_json_object(config_path)
  if data.get("model_type") != "lxmert":
    raise ConversionError(f"{config_path}: model_type is {data.get('model_type')!r}, "
                          "expected 'lxmert'")
  architecture = (data.get("architectures") or ["LxmertForPreTraining"])[0]
  if architecture not in checkpoints.ARCHITECTURES:
    raise ConversionError(f"{config_path}: architecture {architecture!r} is not one of "
                          f"{sorted(checkpoints.ARCHITECTURES)}")
  config = checkpoints.config_from_dict(data, config_path)
  return config, architecture, _read_weights(hf_dir)


def _read_weights(hf_dir: str) -> dict[str, np.ndarray]:
  safetensors_path = os.path.join(hf_dir, "model.safetensors")
  if os.path.exists(safetensors_path):
    from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      return load_file(safetensors_path)
    except SafetensorError as e:
      raise ConversionError(f"{safetensors_path}: not a readable safetensors file ({e})") from e
  bin_path = os.path.join(hf_dir, "pytorch_model.bin")
  if os.path.exists(bin_path):
    return load_torch_state_dict(bin_path)
  raise ConversionError(f"{hf_dir}: neither model.safetensors nor pytorch_model.bin found")


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch state-dict file as numpy arrays (floats as float32)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError(f"{path}: reading PyTorch files needs torch "
                          "(pip install 'lxmert-jax[torch]')") from e
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file; expected a PyTorch state dict")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
    raise ConversionError(f"{path}: not a readable PyTorch file (torch.load with "
                          f"weights_only=True: {_torch_load_reason(e)})") from e
  if not isinstance(state, Mapping):
    raise ConversionError(f"{path}: expected a state dict, found {type(state).__name__}")
  not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
  if not_tensors:
    raise ConversionError(f"{path}: expected a state dict of tensors; not tensors: "
                          f"{not_tensors[:10]}")
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


def _torch_load_reason(error: Exception) -> str:
  """The informative line of a `torch.load` error (its unpickler's, if any)."""
  marker = "WeightsUnpickler error:"
  text = str(error)
  if marker in text:
    text = text.split(marker, 1)[1]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def from_pretrained_hf(hf_dir: str | os.PathLike, **config_overrides: Any
                       ) -> tuple[nn.Module, dict[str, Any]]:
  """Loads a transformers LXMERT directory as `(model, params)`.

  The task model follows the checkpoint's `architectures` entry.

  Args:
    hf_dir: a directory written by transformers' `save_pretrained`.
    **config_overrides: config fields to change, e.g. `dtype="bfloat16"`.
  """
  config, architecture, state_dict = read_hf_directory(hf_dir)
  model = checkpoints.model_class(architecture)(config.replace(**config_overrides))
  return model, state_dict_to_params(state_dict, model, source=os.fspath(hf_dir))


def hf_config_dict(config: LxmertConfig, architecture: str) -> dict[str, Any]:
  """The `config.json` content transformers expects (no fields of ours)."""
  data = config.to_dict()
  data.pop("lxmert_jax")
  data.update(architectures=[architecture], tie_word_embeddings=True)
  return data


def save_pretrained_hf(config: LxmertConfig, params: Any, out_dir: str | os.PathLike,
                       architecture: Optional[str] = None) -> str:
  """Writes a directory that transformers' `from_pretrained` loads.

  Args:
    config: the model config.
    params: the parameter tree of an LxmertModel, LxmertForPreTraining or
      LxmertForQuestionAnswering.
    out_dir: where to write `config.json` and `model.safetensors`.
    architecture: the transformers class name; inferred from `params` if None.
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  params = nn.meta.unbox(params)
  architecture = architecture or _infer_architecture(params)
  if architecture == "LxmertForNLVR2":
    raise ConversionError("transformers has no NLVR2 model; keep NLVR2 checkpoints "
                          "in lxmert_jax format")
  model = checkpoints.model_class(architecture)(config)
  expected = {hf_key(p) for p in _flat_params(checkpoints.abstract_params(model))}
  state_dict = params_to_state_dict(params)
  if set(state_dict) != expected:
    raise ConversionError(
        f"parameters do not fit {architecture}: missing {sorted(expected - set(state_dict))}, "
        f"unexpected {sorted(set(state_dict) - expected)}")
  with checkpoints.atomic_directory(out_dir) as tmp:
    save_file(state_dict, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      json.dump(hf_config_dict(config, architecture), f, indent=2, sort_keys=True)
  return os.path.abspath(os.fspath(out_dir))


def _infer_architecture(params: Mapping[str, Any]) -> str:
  if "lxmert" not in params:
    return "LxmertModel"
  if "cls" in params:
    return "LxmertForPreTraining"
  kernel = params.get("answer_head", {}).get("logit_fc_3", {}).get("kernel")
  if kernel is not None and kernel.shape[-1] == 2 and params["answer_head"][
      "logit_fc_0"]["kernel"].shape[0] == kernel.shape[0]:
    return "LxmertForNLVR2"
  return "LxmertForQuestionAnswering"
