"""Where a run's initial parameters come from (`config.init.mode`).

* `scratch`: the model's own initialiser (N(0, 0.02) weights, zero biases,
  unit LayerNorm scales), as the paper pre-trained LXMERT.
* `lxmert`: a saved LXMERT: a run directory of the trainer (its best
  checkpoint, or `init.step`), our checkpoint directory (`config.json` +
  `params/`) or a transformers `save_pretrained` directory. Parameters whose
  shape differs keep their fresh initialisation. With `init.encoder_only`
  only the encoder (`lxmert/...`) is loaded (the original's `--loadLXMERT`,
  used for NLVR2). A task with an answer vocabulary gets the checkpoint's
  answer head transferred answer by answer (`answer_transfer`, the
  original's `--loadLXMERTQA`); the checkpoint's own answer table comes from
  its `answers.json` or from `init.answers` (e.g. the original
  `all_ans.json`).
* `bert`: the language side from a BERT checkpoint in Hugging Face format, as
  the released code's default: embeddings, the first `l_layers` encoder
  layers, the pooler, and the masked-LM transform/bias and next-sentence head
  when the checkpoint has them. Everything else is initialised from scratch.

A bare `LxmertModel` names its encoder's parameters without the task models'
`lxmert/` prefix; both modes map across it, so the encoder of any LXMERT
checkpoint loads into any task model and the other way round.

Each non-scratch mode logs and returns a report of what was loaded and what
was initialised. Loading nothing at all is an error, not a report: it means the
checkpoint is not the kind `init.mode` expects, or is for another model size.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lxmert_jax import paths

from lxmert_jax.convert import checkpoints
from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.convert.hf import hf_key
from lxmert_jax.inference import saved_models
from lxmert_jax.model import task_models
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.training import answer_transfer

MODES = ("scratch", "lxmert", "bert")
_BERT_LAYER = re.compile(r"layer_(\d+)")
# The task models' name for their LxmertModel; a bare LxmertModel has none.
_ENCODER = "lxmert/"
_EXPECTED = {
    "lxmert": "an LXMERT checkpoint (ours or transformers') with parameters of the "
              "model's names and shapes",
    "bert": "a BERT checkpoint with embeddings, encoder.layer.N and pooler weights",
}


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

  def summary(self) -> str:
    """The report's first line and the answer-head transfer, for a run's start-up lines."""
    lines = str(self).split("\n")[:1]
    lines += [f"  {n}" for n in self.notes if n.startswith("answer head")]
    return "\n".join(lines)


def initial_params(init: ml_collections.ConfigDict, model: nn.Module,
                   model_config: LxmertConfig, init_key: jax.Array,
                   answers: Optional[Sequence[str]] = None
                   ) -> tuple[Optional[Any], Optional[InitReport]]:
  """The starting parameters for `config.init`, and the load report.

  Args:
    init: the `init` config block (`mode`, `path`; optional `step`,
      `encoder_only`, `answers`).
    model: the task model being trained.
    model_config: its config.
    init_key: the key of the model's own initialiser (for what is not loaded).
    answers: the task's answer vocabulary (label2ans), for the answer-head
      transfer; None for a task without one.

  Returns:
    (params, report); (None, None) for `scratch`, meaning the sharded
    initialiser should create the parameters itself.

  Raises:
    ValueError: the checkpoint filled no parameter of `model`.
  """
  if init.mode not in MODES:
    raise ValueError(f"init.mode {init.mode!r}: expected one of {MODES}")
  if init.mode == "scratch":
    return None, None
  if not init.path or not paths.resolve(init.path).is_dir():
    raise FileNotFoundError(f"init.path {init.path!r} for init.mode={init.mode!r} is not a "
                            "directory")
  fresh = _fresh_params(model, init_key)
  if init.mode == "lxmert":
    params, report = _merge_lxmert(fresh, init, answers)
  else:
    params, report = load_bert(fresh, init.path, model_config.l_layers)
  if not report.loaded:
    raise ValueError(_nothing_loaded(init, model, report))
  logging.info("%s", report)
  return params, report


def _nothing_loaded(init: ml_collections.ConfigDict, model: nn.Module,
                    report: InitReport) -> str:
  message = (f"{init.path}: init.mode={init.mode!r} loaded no parameters into "
             f"{type(model).__name__}; expected {_EXPECTED[init.mode]}")
  if report.notes:
    message += f"; {len(report.notes)} names matched with other shapes, e.g. {report.notes[0]}"
  if report.unused:
    message += f"; the checkpoint holds e.g. {', '.join(report.unused[:3])}"
  return message


def _fresh_params(model: nn.Module, key: jax.Array) -> Any:
  inputs = task_models.init_inputs(model)
  params = jax.jit(lambda k: nn.unbox(model.init(k, **inputs)["params"]))(key)
  return jax.tree.map(np.asarray, params)


def _flat(tree: Any) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(k.key for k in path): leaf for path, leaf in leaves}


def _unflat_like(tree: Any, flat: Mapping[str, Any]) -> Any:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return jax.tree_util.tree_unflatten(
      treedef, [flat["/".join(k.key for k in path)] for path, _ in leaves])


def _is_bare(flat: Mapping[str, Any]) -> bool:
  """Whether flat parameters are a bare LxmertModel's (no `lxmert/` prefix)."""
  return not any(k.startswith(_ENCODER) for k in flat)


def _lxmert_source_key(key: str, source_bare: bool, target_bare: bool) -> Optional[str]:
  """The checkpoint's name for our parameter `key`; None if it cannot have one."""
  if source_bare == target_bare:
    return key
  if target_bare:
    return _ENCODER + key
  return key[len(_ENCODER):] if key.startswith(_ENCODER) else None


def _checkpoint_answers(init: ml_collections.ConfigDict,
                        saved: saved_models.SavedModel) -> Optional[list[str]]:
  """The answer table of the checkpoint's answer head: `init.answers`, else its answers.json."""
  if init.get("answers"):
    return checkpoints.read_answer_list(init.answers)
  return saved.answers


def _merge_lxmert(fresh: Any, init: ml_collections.ConfigDict,
                  answers: Optional[Sequence[str]]) -> tuple[Any, InitReport]:
  """Loads a saved LXMERT (a run, ours or transformers') into the fresh tree."""
  saved = saved_models.load_saved_model(init.path, init.get("step", "best"))
  source = _flat(jax.tree.map(np.asarray, saved.params))
  target = _flat(fresh)
  source_bare, target_bare = _is_bare(source), _is_bare(target)
  encoder_only = init.get("encoder_only", False)
  where = init.path + (f" (step {saved.step})" if saved.step is not None else "")
  report = InitReport(source=where, loaded=[], initialised=[])
  transfer = (answers is not None and answer_transfer.has_answer_head(target)
              and answer_transfer.has_answer_head(source) and not encoder_only)
  used: set[str] = set()
  for key, value in target.items():
    found = _lxmert_source_key(key, source_bare, target_bare)
    if found not in source or (encoder_only and not key.startswith(_ENCODER)):
      report.initialised.append(key)
      continue
    if transfer and key in (answer_transfer.KERNEL, answer_transfer.BIAS):
      continue  # Filled answer by answer below.
    used.add(found)
    if source[found].shape != value.shape:
      report.initialised.append(key)
      report.notes.append(f"{key}: checkpoint shape {source[found].shape} differs from "
                          f"model shape {value.shape}")
    else:
      target[key] = source[found].astype(value.dtype)
      report.loaded.append(key)
  if transfer:
    _transfer_answers(init, saved, source, target, answers, report, used)
  report.unused = sorted(set(source) - used)
  return _unflat_like(fresh, target), report


def _transfer_answers(init: ml_collections.ConfigDict, saved: saved_models.SavedModel,
                      source: Mapping[str, np.ndarray], target: dict[str, Any],
                      answers: Sequence[str], report: InitReport, used: set[str]) -> None:
  """The answer-by-answer transfer of the output layer (see `answer_transfer`)."""
  keys = (answer_transfer.KERNEL, answer_transfer.BIAS)
  table = _checkpoint_answers(init, saved)
  if table is None:
    if source[keys[0]].shape != target[keys[0]].shape:
      raise ConversionError(
          f"{init.path}: its answer head has {source[keys[0]].shape[-1]} rows but no answer "
          f"table ({checkpoints.ANSWERS_FILE}) says which answer each row is, so it cannot be "
          f"transferred to the task's {len(answers)} answers; pass "
          "--config.init.answers=FILE (e.g. the original data/lxmert/all_ans.json) or "
          "--config.init.encoder_only=True")
    for key in keys:
      target[key] = np.asarray(source[key]).astype(target[key].dtype)
      report.loaded.append(key)
      used.add(key)
    report.notes.append(f"answer head: {len(answers)} rows loaded by index (the checkpoint "
                        "has no answer table; its rows are assumed to be the task's answers)")
    return
  transferred = answer_transfer.transfer_answer_rows(target, source, table, answers,
                                                     source_name=init.path)
  report.loaded.extend(keys)
  used.update(keys)
  report.notes.append(str(transferred))


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

  Our `lxmert/...` paths (a task model's; see `load_bert` for a bare
  encoder's) map to `bert....` (or unprefixed, as `BertModel` saves them);
  `cls/...` keeps its name. Old checkpoints name LayerNorm parameters
  gamma/beta.
  """
  parts = tuple(our_key.split("/"))
  hf = hf_key(parts)
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
    fresh: freshly initialised parameters of an LXMERT task model or of a
      bare LxmertModel.
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
  prefix = _ENCODER if _is_bare(target) else ""
  report = InitReport(source=path, loaded=[], initialised=[])
  used: set[str] = set()
  missing, mismatched = [], []
  for key, value in target.items():
    task_key = prefix + key
    if not _is_bert_part(task_key, l_layers):
      report.initialised.append(key)
      continue
    candidates = _bert_candidates(task_key)
    found = next((c for c in candidates if c in state), None)
    if found is None:
      if key.startswith("cls/"):
        report.initialised.append(key)
      else:
        missing.append(candidates[0])
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
