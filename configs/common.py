"""Shared config pieces: the `file.py:arg` parser, model variants, mesh rules.

`configs/pretrain.py:demo` passes "demo" to `get_config`; arguments may also
carry settings, e.g. `configs/pretrain.py:variant=tiny,runlocal`, which
`parse_arg` turns into typed fields (big_vision's convention).
"""

from __future__ import annotations

from typing import Any

import ml_collections

# Architecture variants; dataset-dependent sizes (vocabulary, label counts,
# feature size) come from the prepared data. Fields are `LxmertConfig` names.
MODEL_VARIANTS: dict[str, dict[str, Any]] = {
    # The paper's model: 9 language, 5 relationship, 5 cross layers; BERT-base
    # width.
    "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                 l_layers=9, x_layers=5, r_layers=5),
    # A few million parameters, most of them the 30,522-word embedding table.
    "small": dict(hidden_size=128, num_attention_heads=4, intermediate_size=256,
                  l_layers=2, x_layers=2, r_layers=1),
    # Trains in minutes on a laptop CPU on the built-in corpus.
    "mini": dict(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                 l_layers=2, x_layers=2, r_layers=1),
    # Seconds; for tests.
    "tiny": dict(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                 l_layers=1, x_layers=1, r_layers=1),
}

# Logical parameter axes -> mesh axes (Flax's semantics: rules in order, a
# rule takes its dimension when that mesh axis is still free in the array;
# names without a rule are replicated). With fsdp=1 and tensor=1 (the default
# mesh) every parameter is replicated and the run is pure data parallel.
SHARDING_RULES = (
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    # The output side of the square pooler and head-transform kernels: their
    # `embed` input side takes fsdp, so only their biases split over it.
    ("embed_out", "fsdp"),
    ("classes", None),
    ("vis_feat", None),
    ("box", None),
    ("pos", None),
    ("type", None),
)


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `"a,b=1,c=x"` into a ConfigDict, typed by `defaults`.

  A bare word is the first default's value if that default is a string (the
  variant name), else a boolean flag set to True.

  Args:
    arg: the text after ':' in `--config=file.py:arg`, or None.
    **defaults: every accepted key and its default (which fixes its type).

  Raises:
    ValueError: an unknown key, or a value that does not fit the default's type.
  """
  out = ml_collections.ConfigDict(defaults)
  positional = next(iter(defaults), None)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      if positional is not None and isinstance(defaults[positional], str):
        key, value = positional, item
        positional = None
      else:
        value = "True"
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is not one of {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if value not in ("True", "False", "true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r}: expected a boolean")
      out[key] = value in ("True", "true", "1")
    else:
      try:
        out[key] = kind(value)
      except ValueError as e:
        raise ValueError(f"config argument {key}={value!r}: expected {kind.__name__}") from e
  return out


def model_variant(name: str, **overrides: Any) -> ml_collections.ConfigDict:
  """The `model` config block of a variant (LxmertConfig field overrides)."""
  if name not in MODEL_VARIANTS:
    raise ValueError(f"model variant {name!r} is not one of {sorted(MODEL_VARIANTS)}")
  fields = dict(MODEL_VARIANTS[name])
  # initializer_range: the std of the N(0, std) weight init (0.02 is sized for
  # width 768; narrower models train better with a wider init, see README).
  fields.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                initializer_range=0.02, dtype="float32", param_dtype="float32")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)
