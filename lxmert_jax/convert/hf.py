"""Weight conversion between Hugging Face, the original LXMERT code and ours.

Our parameter tree mirrors transformers' module names, so a key maps by rule:
`lxmert/encoder/layer_3/attention/self/query/kernel` is
`lxmert.encoder.layer.3.attention.self.query.weight` transposed; LayerNorm
`scale` is `weight`; an embedding table is `weight` as is. The masked-LM
decoder is tied to the word embeddings and is not stored separately.

Command line:

    python -m lxmert_jax.convert hf-to-jax HF_DIR OUT_DIR
    python -m lxmert_jax.convert jax-to-hf CKPT_DIR OUT_DIR
    python -m lxmert_jax.convert original-to-jax Epoch20_LXRT.pth OUT_DIR

Reading safetensors needs only numpy; `pytorch_model.bin` and the original
`.pth` files need torch (the `[torch]` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np

from lxmert_jax.convert import checkpoints
from lxmert_jax.model.config import LxmertConfig

TIED_DECODER_KEY = "cls.predictions.decoder.weight"
WORD_EMBEDDING_KEY = "lxmert.embeddings.word_embeddings.weight"
_LIST_MODULE = re.compile(r"(layer|r_layers|x_layers|logit_fc)_(\d+)")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


class ConversionError(ValueError):
  """A checkpoint does not match the model it is converted into or from."""


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
                         source: str = "checkpoint") -> dict[str, Any]:
  """Builds the Flax parameter tree of `model` from a transformers state dict.

  Every parameter of the model must be present with the right shape, and every
  key of the state dict must be used; otherwise a `ConversionError` lists the
  missing keys, the unexpected keys and each shape mismatch.
  """
  target = _flat_params(checkpoints.abstract_params(model))
  remaining = dict(state_dict)
  tied = remaining.pop(TIED_DECODER_KEY, None)
  if tied is not None and WORD_EMBEDDING_KEY in remaining and not np.array_equal(
      tied, remaining[WORD_EMBEDDING_KEY]):
    raise ConversionError(
        f"{source}: {TIED_DECODER_KEY} differs from {WORD_EMBEDDING_KEY}; LXMERT ties "
        "the masked-LM decoder to the word embeddings")
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
      mismatched.append(f"{key}: checkpoint {value.shape} vs model {expected}")
      continue
    params[path] = (value.T if is_kernel else value).astype(leaf.dtype)
  problems = []
  if missing:
    problems.append(f"missing keys ({len(missing)}): {sorted(missing)}")
  if remaining:
    problems.append(f"unexpected keys ({len(remaining)}): {sorted(remaining)}")
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
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(config_path):
    raise ConversionError(f"{hf_dir}: no config.json; expected a transformers "
                          "`save_pretrained` directory")
  with open(config_path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f"{config_path}: not valid JSON ({e})") from e
  if data.get("model_type") != "lxmert":
    raise ConversionError(f"{config_path}: model_type is {data.get('model_type')!r}, "
                          "expected 'lxmert'")
  architecture = (data.get("architectures") or ["LxmertForPreTraining"])[0]
  if architecture not in checkpoints.ARCHITECTURES:
    raise ConversionError(f"{config_path}: architecture {architecture!r} is not one of "
                          f"{sorted(checkpoints.ARCHITECTURES)}")
  return LxmertConfig.from_dict(data, source=config_path), architecture, _read_weights(hf_dir)


def _read_weights(hf_dir: str) -> dict[str, np.ndarray]:
  safetensors_path = os.path.join(hf_dir, "model.safetensors")
  if os.path.exists(safetensors_path):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return load_file(safetensors_path)
  bin_path = os.path.join(hf_dir, "pytorch_model.bin")
  if os.path.exists(bin_path):
    return _torch_load(bin_path)
  raise ConversionError(f"{hf_dir}: neither model.safetensors nor pytorch_model.bin found")


def _torch_load(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError(f"{path}: reading PyTorch files needs torch "
                          "(pip install 'lxmert-jax[torch]')") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ConversionError(f"{path}: expected a state dict, found {type(state).__name__}")
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


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


# --- The original repository's snapshots ---------------------------------------


def original_to_hf_state_dict(state_dict: Mapping[str, np.ndarray],
                              source: str = "snapshot") -> tuple[dict[str, np.ndarray], str]:
  """Renames an original LXMERT state dict to transformers keys.

  Handles pre-training snapshots (`*_LXRT.pth`: `bert.*`, `cls.*`,
  `obj_predict_head.*`, `answer_head.*`) and fine-tuned `BEST.pth` files
  (`lxrt_encoder.model.bert.*`, `logit_fc.*`), with or without DataParallel's
  `module.` prefixes.

  Returns:
    (renamed state dict, architecture name).
  """
  renamed = {}
  for key, value in state_dict.items():
    key = key.replace("module.", "")
    if key.startswith("lxrt_encoder.model.bert."):
      key = "lxmert." + key[len("lxrt_encoder.model.bert."):]
    elif key.startswith("bert."):
      key = "lxmert." + key[len("bert."):]
    elif key.startswith("logit_fc."):
      key = "answer_head." + key
    renamed[key] = value
  if not any(k.startswith("lxmert.") for k in renamed):
    raise ConversionError(f"{source}: no `bert.` or `lxrt_encoder.model.bert.` keys; "
                          "not an LXMERT snapshot")
  if "cls.predictions.bias" in renamed:
    return renamed, "LxmertForPreTraining"
  head = renamed.get("answer_head.logit_fc.3.weight")
  if head is None:
    return renamed, "LxmertModel"
  hidden = renamed["lxmert.pooler.dense.weight"].shape[0]
  if head.shape[0] == 2 and head.shape[1] == 2 * hidden and renamed[
      "answer_head.logit_fc.0.weight"].shape[1] == 2 * hidden:
    return renamed, "LxmertForNLVR2"
  return renamed, "LxmertForQuestionAnswering"


def infer_config(state_dict: Mapping[str, np.ndarray], num_attention_heads: int = 12,
                 **overrides: Any) -> LxmertConfig:
  """An LxmertConfig from the shapes of a transformers-keyed state dict.

  The number of attention heads cannot be read from shapes; the original code
  always uses 12. The visual loss normaliser is the original's 1/0.15.
  """
  def count(prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for k in state_dict for m in [pattern.match(k)] if m})

  word = state_dict[WORD_EMBEDDING_KEY]
  fields = dict(
      vocab_size=word.shape[0], hidden_size=word.shape[1],
      num_attention_heads=num_attention_heads,
      max_position_embeddings=state_dict["lxmert.embeddings.position_embeddings.weight"].shape[0],
      type_vocab_size=state_dict["lxmert.embeddings.token_type_embeddings.weight"].shape[0],
      intermediate_size=state_dict["lxmert.encoder.layer.0.intermediate.dense.weight"].shape[0],
      visual_feat_dim=state_dict["lxmert.encoder.visn_fc.visn_fc.weight"].shape[1],
      visual_pos_dim=state_dict["lxmert.encoder.visn_fc.box_fc.weight"].shape[1],
      l_layers=count("lxmert.encoder.layer"), r_layers=count("lxmert.encoder.r_layers"),
      x_layers=count("lxmert.encoder.x_layers"), visual_loss_normalizer=1 / 0.15)
  if "answer_head.logit_fc.3.weight" in state_dict:
    fields["num_qa_labels"] = state_dict["answer_head.logit_fc.3.weight"].shape[0]
  else:
    fields["task_qa"] = False
  for key, field, flag in (("obj", "num_object_labels", "visual_obj_loss"),
                           ("attr", "num_attr_labels", "visual_attr_loss"),
                           ("feat", None, "visual_feat_loss")):
    weight = state_dict.get(f"obj_predict_head.decoder_dict.{key}.weight")
    if weight is None:
      fields[flag] = False
    elif field:
      fields[field] = weight.shape[0]
  if not any(k.startswith("obj_predict_head.") for k in state_dict):
    fields["task_obj_predict"] = False
  fields.update(overrides)
  return LxmertConfig(**fields)


def from_original(path: str | os.PathLike, num_attention_heads: int = 12
                  ) -> tuple[nn.Module, dict[str, Any]]:
  """Loads an original `*_LXRT.pth` or fine-tuned `BEST.pth` as `(model, params)`."""
  path = os.fspath(path)
  state_dict, architecture = original_to_hf_state_dict(_torch_load(path), source=path)
  model_state = state_dict
  if architecture == "LxmertModel":
    model_state = {k[len("lxmert."):]: v for k, v in state_dict.items()
                   if k.startswith("lxmert.")}
  config = infer_config(state_dict, num_attention_heads)
  model = checkpoints.model_class(architecture)(config)
  return model, state_dict_to_params(model_state, model, source=path)


# --- Command line --------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m lxmert_jax.convert",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for name, help_text in (("hf-to-jax", "a transformers directory to an lxmert_jax checkpoint"),
                          ("jax-to-hf", "an lxmert_jax checkpoint to a transformers directory"),
                          ("original-to-jax", "an original .pth snapshot to an lxmert_jax "
                           "checkpoint")):
    cmd = sub.add_parser(name, help=help_text)
    cmd.add_argument("source")
    cmd.add_argument("out_dir")
    if name == "original-to-jax":
      cmd.add_argument("--num-attention-heads", type=int, default=12)
  args = parser.parse_args(argv)
  if args.command == "hf-to-jax":
    model, params = from_pretrained_hf(args.source)
    checkpoints.save_model(args.out_dir, model, params)
  elif args.command == "original-to-jax":
    model, params = from_original(args.source, args.num_attention_heads)
    checkpoints.save_model(args.out_dir, model, params)
  else:
    model, params = checkpoints.load_model(args.source)
    save_pretrained_hf(model.config, params, args.out_dir,
                       checkpoints.architecture_name(model))
  count = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
  print(f"wrote {args.out_dir}: {type(model).__name__}, {count:,} parameters")


if __name__ == "__main__":
  main()
