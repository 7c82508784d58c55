"""LXMERT configuration, field for field compatible with transformers' `LxmertConfig`.

The field names are those of Hugging Face's `config.json`, so a checkpoint's
configuration can be read and written without a translation table. Two fields
are our own: `dtype` (the compute dtype of matmuls and activations) and
`param_dtype` (the storage dtype of parameters). LayerNorm statistics, softmax
and losses stay in float32 whatever `dtype` is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from etils import epath
import jax.numpy as jnp

# Keys of a Hugging Face `config.json` that describe the checkpoint rather than
# the architecture; they are accepted on reading and not kept.
_HF_BOOKKEEPING_KEYS = frozenset({
    "architectures", "model_type", "transformers_version", "torch_dtype",
    "dtype", "pad_token_id", "bos_token_id", "eos_token_id", "output_attentions",
    "output_hidden_states", "return_dict", "use_return_dict", "id2label",
    "label2id", "problem_type", "tie_word_embeddings", "num_hidden_layers",
    "_name_or_path", "chunk_size_feed_forward", "is_encoder_decoder",
    "tokenizer_class", "num_labels", "vocab_file", "lxmert_jax",
})

_DTYPES = ("float32", "bfloat16", "float16")
_ATTENTION_IMPLEMENTATIONS = ("reference", "xla", "cudnn")
# Fields of ours that transformers' config does not have.
_OWN_FIELDS = ("dtype", "param_dtype", "attention_implementation")


@dataclasses.dataclass(frozen=True)
class LxmertConfig:
  """Architecture and pre-training switches of an LXMERT model.

  Defaults are those of `unc-nlp/lxmert-base-uncased` (9/5/5 layers, hidden
  768, 9500 pre-training answers).
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_attention_heads: int = 12
  num_qa_labels: int = 9500
  num_object_labels: int = 1600
  num_attr_labels: int = 400
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  l_layers: int = 9
  x_layers: int = 5
  r_layers: int = 5
  visual_feat_dim: int = 2048
  visual_pos_dim: int = 4
  visual_loss_normalizer: float = 6.67
  task_matched: bool = True
  task_mask_lm: bool = True
  task_obj_predict: bool = True
  task_qa: bool = True
  visual_obj_loss: bool = True
  visual_attr_loss: bool = True
  visual_feat_loss: bool = True
  # Our own fields (stored under `lxmert_jax` in config.json).
  # Compute and storage dtypes.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # "reference": softmax written out, with dropout on the attention
  # probabilities exactly as the reference. "xla" / "cudnn":
  # `jax.nn.dot_product_attention` with that implementation; faster, but it has
  # no attention-probability dropout and returns no attention maps.
  attention_implementation: str = "reference"

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
          f"hidden_size ({self.hidden_size}) must be a multiple of "
          f"num_attention_heads ({self.num_attention_heads})")
    if self.hidden_act not in ("gelu", "gelu_new", "relu", "gelu_python"):
      raise ValueError(
          f"hidden_act {self.hidden_act!r} is not supported; expected one of "
          "'gelu', 'gelu_new', 'gelu_python', 'relu'")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {_DTYPES}")
    if self.attention_implementation not in _ATTENTION_IMPLEMENTATIONS:
      raise ValueError(
          f"attention_implementation {self.attention_implementation!r}: expected one "
          f"of {_ATTENTION_IMPLEMENTATIONS}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def storage_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def visual_losses(self) -> tuple[str, ...]:
    """The enabled visual losses, in the reference's order (obj, attr, feat)."""
    enabled = (("obj", self.visual_obj_loss), ("attr", self.visual_attr_loss),
               ("feat", self.visual_feat_loss))
    return tuple(name for name, on in enabled if on)

  def replace(self, **changes: Any) -> "LxmertConfig":
    return dataclasses.replace(self, **changes)

  # --- Hugging Face config.json -------------------------------------------

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "LxmertConfig":
    """Builds a config from a Hugging Face style dict.

    Unknown keys are an error (they usually mean a different model type), except
    the bookkeeping keys that every transformers config carries.
    """
    model_type = data.get("model_type", "lxmert")
    if model_type != "lxmert":
      raise ValueError(f"{source}: model_type is {model_type!r}, expected 'lxmert'")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in data if k not in fields and k not in _HF_BOOKKEEPING_KEYS)
    if unknown:
      raise ValueError(f"{source}: unknown LXMERT config keys {unknown}")
    kwargs = {k: v for k, v in data.items() if k in fields and k not in _OWN_FIELDS}
    # transformers writes its own `dtype` (torch storage dtype, e.g. "float32");
    # it is not our compute dtype, so only our own section sets ours.
    ours = data.get("lxmert_jax", {})
    kwargs.update({k: v for k, v in ours.items() if k in _OWN_FIELDS})
    return cls(**kwargs)

  def to_dict(self) -> dict[str, Any]:
    """A Hugging Face style dict; our dtypes go under the `lxmert_jax` key."""
    data = dataclasses.asdict(self)
    ours = {name: data.pop(name) for name in _OWN_FIELDS}
    data["num_hidden_layers"] = {
        "vision": self.r_layers, "cross_encoder": self.x_layers,
        "language": self.l_layers}
    data["model_type"] = "lxmert"
    data["lxmert_jax"] = ours
    return data

  @classmethod
  def from_json_file(cls, path: str | os.PathLike) -> "LxmertConfig":
    try:
      with epath.Path(path).open("r") as f:
        data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e
    return cls.from_dict(data, source=str(path))

  def to_json_file(self, path: str | os.PathLike, **extra: Any) -> None:
    """Writes `to_dict()` (plus `extra` keys) as JSON; `path` may be a bucket URI."""
    data = self.to_dict()
    data.update(extra)
    epath.Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
