"""Output containers; field names are those of transformers' LXMERT outputs."""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax

Array = jax.Array
Arrays = Optional[tuple[Array, ...]]


@flax.struct.dataclass
class LxmertModelOutput:
  """Encoder outputs.

  Attributes:
    language_output: [B, T, D] last cross-modality layer, language stream.
    vision_output: [B, O, D] last cross-modality layer, vision stream.
    pooled_output: [B, D] tanh(Dense(language_output[:, 0])).
    language_hidden_states: on request, the 9 language-layer outputs then the
      5 cross-layer outputs (no embedding output, as in transformers).
    vision_hidden_states: on request, the R-layer then X-layer outputs.
    language_attentions: on request, [B, N, T, T] per language layer.
    vision_attentions: on request, [B, N, O, O] per R-layer.
    cross_encoder_attentions: on request, [B, N, T, O] text-to-vision
      probabilities per X-layer.
    cross_encoder_vision_attentions: on request, [B, N, O, T] vision-to-text
      probabilities per X-layer (same weights as the other direction, which
      is the only one transformers returns).
  """

  language_output: Array
  vision_output: Array
  pooled_output: Array
  language_hidden_states: Arrays = None
  vision_hidden_states: Arrays = None
  language_attentions: Arrays = None
  vision_attentions: Arrays = None
  cross_encoder_attentions: Arrays = None
  cross_encoder_vision_attentions: Arrays = None


@flax.struct.dataclass
class LxmertForPreTrainingOutput(LxmertModelOutput):
  """Pre-training outputs (all heads).

  Attributes:
    prediction_logits: [B, T, V] masked-LM logits (float32).
    cross_relationship_score: [B, 2] image-sentence matching logits.
    question_answering_score: [B, A] answer logits, None without `task_qa`.
    visual_prediction: dict of `obj` [B, O, 1600], `attr` [B, O, 400],
      `feat` [B, O, F] for the enabled visual losses (None without
      `task_obj_predict`).
    loss: the summed pre-training loss when labels were given.
    loss_terms: the per-task losses that make up `loss`.
  """

  prediction_logits: Optional[Array] = None
  cross_relationship_score: Optional[Array] = None
  question_answering_score: Optional[Array] = None
  visual_prediction: Optional[dict[str, Array]] = None
  loss: Optional[Array] = None
  loss_terms: Optional[dict[str, Any]] = None


@flax.struct.dataclass
class LxmertForQuestionAnsweringOutput(LxmertModelOutput):
  """Question-answering outputs: `question_answering_score` [B, A], `loss`."""

  question_answering_score: Optional[Array] = None
  loss: Optional[Array] = None


@flax.struct.dataclass
class LxmertForNLVR2Output:
  """NLVR2 outputs: `logits` [B, 2] (1 = the statement is true) and `loss`."""

  logits: Array
  pooled_output: Array
  loss: Optional[Array] = None
