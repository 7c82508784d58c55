"""The original LXMERT repository's `.pth` snapshots, read into our models.

The original code saves PyTorch state dicts under its own module names
(`bert.*`, `lxrt_encoder.model.bert.*`, `logit_fc.*`, often behind
DataParallel's `module.`). They are renamed to transformers keys and then
converted by `lxmert_jax.convert.hf`, which reports problems under the names
the snapshot itself uses. The config is not stored in a snapshot, so it is
inferred from the tensor shapes.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from lxmert_jax.convert import checkpoints
from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.convert.hf import WORD_EMBEDDING_KEY, load_torch_state_dict, state_dict_to_params
from lxmert_jax.model.config import LxmertConfig

_ENCODER_PREFIXES = ("lxrt_encoder.model.bert.", "bert.")


def hf_name(original_key: str) -> str:
  """The transformers key of an original snapshot's key."""
  key = original_key.replace("module.", "")
  for prefix in _ENCODER_PREFIXES:
    if key.startswith(prefix):
      return "lxmert." + key[len(prefix):]
  if key.startswith("logit_fc."):
    return "answer_head." + key
  return key


def original_to_hf_state_dict(state_dict: Mapping[str, np.ndarray],
                              source: str = "snapshot") -> tuple[dict[str, np.ndarray], str]:
  """Renames an original LXMERT state dict to transformers keys.

  Handles pre-training snapshots (`*_LXRT.pth`: `bert.*`, `cls.*`,
  `obj_predict_head.*`, `answer_head.*`) and fine-tuned `BEST.pth` files
  (`lxrt_encoder.model.bert.*`, `logit_fc.*`), with or without DataParallel's
  `module.` prefixes. `hf_name` gives the new name of each key.

  Returns:
    (renamed state dict, architecture name).
  """
  renamed: dict[str, np.ndarray] = {}
  original_of: dict[str, str] = {}
  for key, value in state_dict.items():
    new = hf_name(key)
    if new in renamed:
      raise ConversionError(f"{source}: {original_of[new]} and {key} both name {new}")
    renamed[new], original_of[new] = value, key
  if not any(k.startswith("lxmert.") for k in renamed):
    raise ConversionError(f"{source}: no `bert.` or `lxrt_encoder.model.bert.` keys; "
                          "not an LXMERT snapshot")
  if "cls.predictions.bias" in renamed:
    return renamed, "LxmertForPreTraining"
  head = renamed.get("answer_head.logit_fc.3.weight")
  if head is None:
    return renamed, "LxmertModel"
  first = renamed.get("answer_head.logit_fc.0.weight")
  pooler = renamed.get("lxmert.pooler.dense.weight")
  if pooler is not None and first is not None:
    hidden = pooler.shape[0]
    if head.shape == (2, 2 * hidden) and first.shape[1] == 2 * hidden:
      return renamed, "LxmertForNLVR2"
  return renamed, "LxmertForQuestionAnswering"


def infer_config(state_dict: Mapping[str, np.ndarray], num_attention_heads: int = 12,
                 **overrides: Any) -> LxmertConfig:
  """An LxmertConfig from the shapes of a transformers-keyed state dict.

  The number of attention heads cannot be read from shapes; the original code
  always uses 12. The visual loss normaliser is the original's 1/0.15.

  Raises:
    ConversionError: a tensor the config is read from is missing, or the
      shapes give an invalid config.
  """
  def shape(key: str) -> tuple[int, ...]:
    if key not in state_dict:
      raise ConversionError(f"no {key}; the model config is inferred from its shape")
    return tuple(np.shape(state_dict[key]))

  def count(prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for k in state_dict for m in [pattern.match(k)] if m})

  word = shape(WORD_EMBEDDING_KEY)
  fields = dict(
      vocab_size=word[0], hidden_size=word[1],
      num_attention_heads=num_attention_heads,
      max_position_embeddings=shape("lxmert.embeddings.position_embeddings.weight")[0],
      type_vocab_size=shape("lxmert.embeddings.token_type_embeddings.weight")[0],
      intermediate_size=shape("lxmert.encoder.layer.0.intermediate.dense.weight")[0],
      visual_feat_dim=shape("lxmert.encoder.visn_fc.visn_fc.weight")[1],
      visual_pos_dim=shape("lxmert.encoder.visn_fc.box_fc.weight")[1],
      l_layers=count("lxmert.encoder.layer"), r_layers=count("lxmert.encoder.r_layers"),
      x_layers=count("lxmert.encoder.x_layers"), visual_loss_normalizer=1 / 0.15)
  if "answer_head.logit_fc.3.weight" in state_dict:
    fields["num_qa_labels"] = shape("answer_head.logit_fc.3.weight")[0]
  else:
    fields["task_qa"] = False
  for key, field, flag in (("obj", "num_object_labels", "visual_obj_loss"),
                           ("attr", "num_attr_labels", "visual_attr_loss"),
                           ("feat", None, "visual_feat_loss")):
    weight = state_dict.get(f"obj_predict_head.decoder_dict.{key}.weight")
    if weight is None:
      fields[flag] = False
    elif field:
      fields[field] = np.shape(weight)[0]
  if not any(k.startswith("obj_predict_head.") for k in state_dict):
    fields["task_obj_predict"] = False
  fields.update(overrides)
  try:
    return LxmertConfig(**fields)
  except ValueError as e:
    raise ConversionError(f"the shapes give an invalid config: {e}") from e


def _encoder_only(by_hf_key: Mapping[str, Any]) -> dict[str, Any]:
  """The `lxmert.` entries, keyed as a bare LxmertModel names them."""
  return {k[len("lxmert."):]: v for k, v in by_hf_key.items() if k.startswith("lxmert.")}


def from_original(path: str | os.PathLike, num_attention_heads: int = 12
                  ) -> tuple[nn.Module, dict[str, Any]]:
  """Loads an original `*_LXRT.pth` or fine-tuned `BEST.pth` as `(model, params)`.

  Raises:
    ConversionError: the file is not a readable LXMERT snapshot, or its
      tensors do not fit the model their shapes describe; problems are named
      by the snapshot's own keys.
  """
  path = os.fspath(path)
  original = load_torch_state_dict(path)
  state_dict, architecture = original_to_hf_state_dict(original, source=path)
  source_keys = {hf_name(k): k for k in original}
  try:
    config = infer_config(state_dict, num_attention_heads)
  except ConversionError as e:
    raise ConversionError(f"{path}: {e}") from e
  if architecture == "LxmertModel":
    state_dict, source_keys = _encoder_only(state_dict), _encoder_only(source_keys)
  model = checkpoints.model_class(architecture)(config)
  return model, state_dict_to_params(state_dict, model, source=path, source_keys=source_keys)
