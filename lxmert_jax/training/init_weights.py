"""Where a run's initial parameters come from (`config.init.mode`).

* `scratch`: the model's own initialiser (N(0, 0.02) weights, zero biases,
  unit LayerNorm scales), as the paper pre-trained LXMERT.
* `lxmert`: a saved LXMERT, either our checkpoint directory (`config.json` +
  `params/`) or a transformers `save_pretrained` directory. Parameters whose
  shape differs (e.g. an answer head with another number of answers) keep
  their fresh initialisation.
* `bert`: the language side from a BERT checkpoint in Hugging Face format, as
  the released code's default: embeddings, the first `l_layers` encoder
  layers, the pooler, and the masked-LM transform/bias and next-sentence head
  when the checkpoint has them. Everything else is initialised from scratch.

Each non-scratch mode logs and returns a report of what was loaded and what
was initialised.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Optional

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lxmert_jax import convert
from lxmert_jax.convert import checkpoints
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.encoders import dummy_inputs

MODES = ("scratch", "lxmert", "bert")
_BERT_LAYER = re.compile(r"layer_(\d+)")


@dataclasses.dataclass
class InitReport:
  """What an initialisation loaded, and from where.

  Attributes:
    source: the checkpoint path (empty for scratch).
    loaded: our parameter paths ('a/b/kernel') filled from the checkpoint.
    initialised: our parameter paths that kept the model's own init.
    unused: checkpoint keys that were not used.
    notes: reasons for parameters left initialised (e.g. shape differences).
  """

  source: str
  loaded: list[str]
  initialised: list[str]
  unused: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    lines = [f"init from {self.source}: loaded {len(self.loaded)} parameters, "
             f"initialised {len(self.initialised)}, unused checkpoint keys {len(self.unused)}"]
    lines += [f"  initialised: {p}" for p in self.initialised]
    lines += [f"  note: {n}" for n in self.notes]
    if self.unused:
      lines.append(f"  unused: {', '.join(self.unused[:20])}"
                   + (" ..." if len(self.unused) > 20 else ""))
    return "\n".join(lines)


def initial_params(init: ml_collections.ConfigDict, model: nn.Module,
                   model_config: LxmertConfig, init_key: jax.Array
                   ) -> tuple[Optional[Any], Optional[InitReport]]:
  """The starting parameters for `config.init`, and the load report.

  Args:
    init: the `init` config block (`mode`, `path`).
    model: the task model being trained.
    model_config: its config.
    init_key: the key of the model's own initialiser (for what is not loaded).

  Returns:
    (params, report); (None, None) for `scratch`, meaning the sharded
    initialiser should create the parameters itself.
  """
  if init.mode not in MODES:
    raise ValueError(f"init.mode {init.mode!r}: expected one of {MODES}")
  if init.mode == "scratch":
    return None, None
  if not init.path or not os.path.isdir(init.path):
    raise FileNotFoundError(f"init.path {init.path!r} for init.mode={init.mode!r} is not a "
                            "directory")
  fresh = _fresh_params(model, model_config, init_key)
  if init.mode == "lxmert":
    params, report = _merge_lxmert(fresh, init.path)
  else:
    params, report = load_bert(fresh, init.path, model_config.l_layers)
  logging.info("%s", report)
  return params, report


def _fresh_params(model: nn.Module, model_config: LxmertConfig, key: jax.Array) -> Any:
  inputs = dummy_inputs(model_config, batch_size=1, seq_len=4, num_objects=2)
  params = jax.jit(lambda k: nn.unbox(model.init(k, **inputs)["params"]))(key)
  return jax.tree.map(np.asarray, params)


def _flat(tree: Any) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(k.key for k in path): leaf for path, leaf in leaves}


def _unflat_like(tree: Any, flat: Mapping[str, Any]) -> Any:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return jax.tree_util.tree_unflatten(
      treedef, [flat["/".join(k.key for k in path)] for path, _ in leaves])


def _merge_lxmert(fresh: Any, path: str) -> tuple[Any, InitReport]:
  """Loads a saved LXMERT (ours or transformers') into the fresh tree."""
  if os.path.isdir(os.path.join(path, "params")):
    _, loaded = checkpoints.load_model(path)
  else:
    _, loaded = convert.from_pretrained_hf(path)
  source = _flat(jax.tree.map(np.asarray, loaded))
  target = _flat(fresh)
  report = InitReport(source=path, loaded=[], initialised=[])
  for key, value in target.items():
    if key not in source:
      report.initialised.append(key)
    elif source[key].shape != value.shape:
      report.initialised.append(key)
      report.notes.append(f"{key}: checkpoint shape {source[key].shape} differs from "
                          f"model shape {value.shape}")
    else:
      target[key] = source[key].astype(value.dtype)
      report.loaded.append(key)
  report.unused = sorted(set(source) - set(target))
  return _unflat_like(fresh, target), report


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a Hugging Face directory (safetensors, else PyTorch .bin)."""
  safetensors_path = os.path.join(path, "model.safetensors")
  if os.path.exists(safetensors_path):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return dict(load_file(safetensors_path))
  bin_path = os.path.join(path, "pytorch_model.bin")
  if os.path.exists(bin_path):
    import torch  # pylint: disable=import-outside-toplevel
    state = torch.load(bin_path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}
  raise FileNotFoundError(f"{path}: neither model.safetensors nor pytorch_model.bin found")


def _bert_candidates(our_key: str) -> list[str]:
  """The BERT state-dict keys that may hold our parameter `our_key`.

  Our `lxmert/...` paths map to `bert....` (or unprefixed, as `BertModel`
  saves them); `cls/...` keeps its name. Old checkpoints name LayerNorm
  parameters gamma/beta.
  """
  parts = tuple(our_key.split("/"))
  hf = convert.hf_key(parts)
  if hf.startswith("lxmert."):
    rest = hf[len("lxmert."):]
    keys = [f"bert.{rest}", rest]
  else:
    keys = [hf]
  if "LayerNorm" in hf:
    keys += [k.replace(".weight", ".gamma").replace(".bias", ".beta") for k in keys]
  return keys


def _is_bert_part(our_key: str, l_layers: int) -> bool:
  parts = our_key.split("/")
  if parts[0] == "cls":
    return parts[1] in ("predictions", "seq_relationship")
  if parts[0] != "lxmert":
    return False
  if parts[1] in ("embeddings", "pooler"):
    return True
  if parts[1] == "encoder":
    match = _BERT_LAYER.fullmatch(parts[2])
    return bool(match) and int(match.group(1)) < l_layers
  return False


def load_bert(fresh: Any, path: str, l_layers: int) -> tuple[Any, InitReport]:
  """Copies a BERT checkpoint's language encoder into the fresh tree.

  Args:
    fresh: freshly initialised parameters of the LXMERT task model.
    path: a Hugging Face BERT directory (`model.safetensors` or
      `pytorch_model.bin`; `BertModel` or `BertForPreTraining` keys).
    l_layers: the number of language layers; BERT layers 0..l_layers-1 are
      used and the rest reported as unused.

  Returns:
    (params, report). Embeddings, language layers and pooler must be present;
    the masked-LM and next-sentence heads are optional.

  Raises:
    ValueError: a required BERT key is missing or a shape differs.
  """
  state = _read_state_dict(path)
  target = _flat(fresh)
  report = InitReport(source=path, loaded=[], initialised=[])
  used: set[str] = set()
  missing, mismatched = [], []
  for key, value in target.items():
    if not _is_bert_part(key, l_layers):
      report.initialised.append(key)
      continue
    found = next((c for c in _bert_candidates(key) if c in state), None)
    if found is None:
      if key.startswith("cls/"):
        report.initialised.append(key)
      else:
        missing.append(_bert_candidates(key)[0])
      continue
    tensor = np.asarray(state[found])
    tensor = tensor.T if key.endswith("kernel") else tensor
    if tensor.shape != value.shape:
      mismatched.append(f"{found}: {tensor.shape} vs model {value.shape}")
      continue
    target[key] = tensor.astype(value.dtype)
    report.loaded.append(key)
    used.add(found)
  if missing or mismatched:
    raise ValueError(f"{path} does not fit the language encoder: missing {missing}; "
                     f"shape mismatches {mismatched}")
  report.unused = sorted(set(state) - used)
  return _unflat_like(fresh, target), report
