"""Answering questions about images with a trained LXMERT: top-k answers with probabilities.

A user has a checkpoint directory and, for each image, the Faster R-CNN
features and pixel boxes the bottom-up-attention extractor wrote. The answers
are only right if the model sees its inputs exactly as fine-tuning fed them,
so `InputEncoder` (which `Predictor` builds on) repeats the data pipeline's
steps:

* the question is framed as `[CLS] pieces[:T-2] [SEP]` + padding with the
  tokenizer the training data was tokenised with (BERT uncased unless a run
  directory's data says otherwise), token types all 0;
* boxes are divided by the image's width (x1, x2) and height (y1, y2) in
  float32, as the feature store keeps them, and must then lie in [0, 1]
  (± the reference's 1e-5);
* features are rounded through float16, the precision the feature store
  keeps them in;
* images with fewer boxes are padded with zero boxes masked out by
  `visual_attention_mask`; a run directory's `data.num_objects` keeps the
  first boxes of each image, as the feature store does.

The VQA/GQA answer heads are trained with a sigmoid binary cross-entropy on
soft answer scores (the original's loss), so each answer's probability is
`sigmoid(logit)` on its own: the probabilities of one question do not sum to 1.

Questions are answered in batches of `batch_size` by one jitted program (the
forward pass and `jax.lax.top_k`) on one device; the last batch is padded to
the same shape (fewer questions than `batch_size` to the next power of two),
so the program compiles once per (batch shape, largest box count, top_k).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lxmert_jax import paths
from lxmert_jax.convert import checkpoints
from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.data import store
from lxmert_jax.data import tokenization
from lxmert_jax.data.prepare.tsv_features import BOX_TOLERANCE
from lxmert_jax.inference import saved_models
from lxmert_jax.model.config import LxmertConfig

DEFAULT_MAX_SEQ_LENGTH = 20
DEFAULT_BATCH_SIZE = 64
# The task names of run configs whose prepared dataset has another name.
_DATA_TASKS = {"pretraining": "pretrain"}
_FP16_MAX = float(np.finfo(np.float16).max)

ArrayLike = Any
Answers = list[list[tuple[str, float]]]
AnswerSource = Union[Sequence[str], str, os.PathLike]


class PredictionError(ValueError):
  """Inputs that cannot be answered: wrong shapes or counts, non-finite values."""


def _batch_rows(n: int, batch_size: int) -> int:
  """Rows of each batch: `batch_size`, or the next power of two for fewer questions."""
  return min(batch_size, 1 << max(n - 1, 0).bit_length())


class InputEncoder:
  """A model's inputs from questions and images' features and boxes, as fine-tuning built them.

  The steps are those of the module docstring; `Predictor` answers with them,
  and anything else that runs a trained model on new questions and images
  (attention maps) builds its inputs with them too.
  """

  def __init__(self, config: LxmertConfig, *,
               tokenizer: Optional[tokenization.Tokenizer] = None,
               max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, max_boxes: Optional[int] = None,
               source: str = "the model"):
    """Frames inputs for a model of architecture `config`.

    Args:
      config: the model's config (vocabulary, positions, feature width).
      tokenizer: the questions' tokenizer (default BERT uncased).
      max_seq_length: T, tokens per question with [CLS] and [SEP].
      max_boxes: keep at most this many boxes of each image (the first ones),
        as the feature store's `num_objects`; None keeps all.
      source: where the model came from, for messages.

    Raises:
      ValueError: a non-positive size, or more tokens than position embeddings.
    """
    for name, value, least in (("max_seq_length", max_seq_length, 3),
                               ("max_boxes", max_boxes, 1)):
      if name == "max_boxes" and value is None:
        continue
      if not isinstance(value, int) or value < least:
        raise ValueError(f"{name}={value!r}: expected an integer of at least {least}")
    if max_seq_length > config.max_position_embeddings:
      raise ValueError(f"max_seq_length={max_seq_length}: the model has only "
                       f"{config.max_position_embeddings} position embeddings")
    self.config = config
    self.tokenizer = tokenizer or tokenization.make_tokenizer("bert")
    self.max_seq_length = max_seq_length
    self.max_boxes = max_boxes
    self.source = source

  @classmethod
  def for_saved_model(cls, saved: saved_models.SavedModel,
                      max_seq_length: Optional[int] = None,
                      tokenizer: Optional[tokenization.Tokenizer] = None,
                      max_boxes: Optional[int] = None) -> "InputEncoder":
    """The inputs of a loaded model, by default framed as its run's data was.

    Arguments left None take the run directory's `data.max_seq_length`,
    `data.num_objects` and data tokenizer, as `Predictor.load` does.
    """
    max_seq_length, max_boxes, tokenizer = _input_settings(saved, max_seq_length, max_boxes,
                                                           tokenizer)
    return cls(saved.model.config, tokenizer=tokenizer, max_seq_length=max_seq_length,
               max_boxes=max_boxes, source=saved.source)

  @property
  def visual_feat_dim(self) -> int:
    return self.config.visual_feat_dim

  def encode_questions(self, questions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """int32 [N, T] token ids and attention mask, framed as the data pipeline frames them."""
    if isinstance(questions, str) or not all(isinstance(q, str) for q in questions):
      raise PredictionError("questions: expected a list of strings")
    ids, mask = self.tokenizer.encode_batch(list(questions), self.max_seq_length)
    vocab = self.config.vocab_size
    if ids.size and ids.max() >= vocab:
      row = int(np.argwhere(ids >= vocab)[0][0])
      raise PredictionError(
          f"question {row} ({questions[row]!r}): token id {int(ids[row].max())} is beyond the "
          f"model's vocab_size={vocab}; the tokenizer ({self.tokenizer.path}) is not the one "
          "the model was trained with")
    return ids, mask

  def visual_inputs(self, features: Union[ArrayLike, Sequence[ArrayLike]],
                    boxes: Union[ArrayLike, Sequence[ArrayLike]], *,
                    image_sizes: Optional[Sequence[tuple[int, int]]] = None,
                    boxes_normalized: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features float32 [N, O, F], normalised boxes float32 [N, O, 4], mask int32 [N, O].

    Args and errors as in `predict`; O is the largest box count (after
    `max_boxes`).
    """
    feats = _per_image(features, "features")
    pos = _per_image(boxes, "boxes")
    if len(feats) != len(pos):
      raise PredictionError(f"{len(feats)} images of features but {len(pos)} of boxes; "
                            "expected one boxes array per features array")
    if not boxes_normalized:
      if image_sizes is None:
        raise PredictionError("image_sizes: required for pixel boxes (one (height, width) per "
                              "image); pass boxes_normalized=True for boxes already divided "
                              "by the image size")
      if len(image_sizes) != len(feats):
        raise PredictionError(f"image_sizes: {len(image_sizes)} sizes for {len(feats)} images; "
                              "expected one (height, width) per image")
    images = []
    for i, (f, b) in enumerate(zip(feats, pos)):
      size = None if boxes_normalized else image_sizes[i]
      images.append(self._image(i, f, b, size))
    count = max(f.shape[0] for f, _ in images) if images else 1
    n, dim = len(images), self.visual_feat_dim
    out_feats = np.zeros((n, count, dim), np.float32)
    out_pos = np.zeros((n, count, 4), np.float32)
    out_mask = np.zeros((n, count), np.int32)
    for i, (f, b) in enumerate(images):
      out_feats[i, :f.shape[0]] = f
      out_pos[i, :b.shape[0]] = b
      out_mask[i, :f.shape[0]] = 1
    return out_feats, out_pos, out_mask

  def _image(self, i: int, feats: np.ndarray, boxes: np.ndarray,
             size: Optional[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """One image's rounded features and normalised boxes, checked."""
    dim = self.visual_feat_dim
    if feats.ndim != 2 or feats.shape[1] != dim:
      raise PredictionError(f"image {i}: features have shape {list(feats.shape)}; expected "
                            f"[num_boxes, {dim}] (the model's visual_feat_dim)")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
      raise PredictionError(f"image {i}: boxes have shape {list(boxes.shape)}; expected "
                            "[num_boxes, 4] (x1, y1, x2, y2)")
    if boxes.shape[0] != feats.shape[0]:
      raise PredictionError(f"image {i}: {feats.shape[0]} feature rows but {boxes.shape[0]} "
                            "boxes; expected one feature row per box")
    if feats.shape[0] == 0:
      raise PredictionError(f"image {i}: no boxes; expected at least one")
    if self.max_boxes is not None:
      feats, boxes = feats[:self.max_boxes], boxes[:self.max_boxes]
    if feats.dtype.kind not in "fiu" or boxes.dtype.kind not in "fiu":
      raise PredictionError(f"image {i}: features are {feats.dtype} and boxes {boxes.dtype}; "
                            "expected numbers")
    if not np.isfinite(feats).all() or np.abs(feats).max() > _FP16_MAX:
      box = int(np.argwhere(~np.isfinite(feats) | (np.abs(feats) > _FP16_MAX))[0][0])
      raise PredictionError(f"image {i}: the features of box {box} are NaN, infinite or beyond "
                            f"float16's range ({_FP16_MAX:g}); expected finite features")
    feats = feats.astype(np.float16).astype(np.float32)
    # The feature store's normalisation, operation for operation.
    pos = boxes.astype(np.float32, copy=True)
    what = "normalised box"
    if size is not None:
      try:
        h, w = (int(v) for v in size)
      except (TypeError, ValueError):
        raise PredictionError(f"image_sizes[{i}] = {size!r}; expected (height, width)") from None
      if h <= 0 or w <= 0:
        raise PredictionError(f"image_sizes[{i}] = {size!r}; expected a positive (height, width)")
      pos[:, (0, 2)] /= w
      pos[:, (1, 3)] /= h
      what = f"box (pixels, in the {w}x{h} image)"
    bad = ~np.isfinite(pos) | (pos < -BOX_TOLERANCE) | (pos > 1 + BOX_TOLERANCE)
    if bad.any():
      box = int(np.argwhere(bad)[0][0])
      hint = ("; expected pixel boxes inside the image (is image_sizes (height, width)?)"
              if size is not None else "; expected coordinates within [0, 1] (pass "
              "image_sizes for pixel boxes)")
      raise PredictionError(f"image {i}: {what} {box} = {boxes[box].tolist()} lies outside the "
                            f"image{hint}")
    return feats, pos

  def model_inputs(self, questions: Sequence[str],
                   features: Union[ArrayLike, Sequence[ArrayLike]],
                   boxes: Union[ArrayLike, Sequence[ArrayLike]], *,
                   image_sizes: Optional[Sequence[tuple[int, int]]] = None,
                   boxes_normalized: bool = False) -> dict[str, np.ndarray]:
    """The model's keyword inputs for N questions about their N images.

    Args and errors as in `Predictor.predict`: `input_ids`, `attention_mask`,
    `token_type_ids` [N, T] and `visual_feats` [N, O, F], `visual_pos`
    [N, O, 4], `visual_attention_mask` [N, O].
    """
    ids, text_mask = self.encode_questions(questions)
    feats, pos, vis_mask = self.visual_inputs(features, boxes, image_sizes=image_sizes,
                                              boxes_normalized=boxes_normalized)
    if feats.shape[0] != len(questions):
      raise PredictionError(f"{len(questions)} questions but {feats.shape[0]} images; expected "
                            "one image per question")
    return dict(input_ids=ids, attention_mask=text_mask, token_type_ids=np.zeros_like(ids),
                visual_feats=feats, visual_pos=pos, visual_attention_mask=vis_mask)


class Predictor(InputEncoder):
  """Top-k answers of a question-answering LXMERT (or a pre-training one's QA head)."""

  def __init__(self, model: nn.Module, params: Any, answers: Sequence[str], *,
               tokenizer: Optional[tokenization.Tokenizer] = None,
               max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
               batch_size: int = DEFAULT_BATCH_SIZE, max_boxes: Optional[int] = None,
               source: str = "the model"):
    """Wraps a loaded model.

    Args:
      model: `LxmertForQuestionAnswering`, or `LxmertForPreTraining` with its
        QA head (`task_qa`).
      params: its parameters.
      answers: the answer of each answer-head row.
      tokenizer: the questions' tokenizer (default BERT uncased).
      max_seq_length: T, tokens per question with [CLS] and [SEP].
      batch_size: questions per forward pass.
      max_boxes: keep at most this many boxes of each image (the first ones),
        as the feature store's `num_objects`; None keeps all.
      source: where the model came from, for messages.

    Raises:
      ConversionError: the model has no answer head, or `answers` does not
        have one string per row.
      ValueError: a non-positive size.
    """
    if checkpoints.answer_head_size(model) is None:
      raise ConversionError(f"{source}: {type(model).__name__} has no answer head (expected "
                            "LxmertForQuestionAnswering, or LxmertForPreTraining with "
                            "task_qa)")
    if answers is None:
      raise ConversionError(f"{source}: no answer vocabulary; expected the answer of each of "
                            f"the {checkpoints.answer_head_size(model)} answer-head rows")
    checkpoints.check_answers(model, answers, f"{source}: answer vocabulary")
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r}: expected an integer of at least 1")
    super().__init__(model.config, tokenizer=tokenizer, max_seq_length=max_seq_length,
                     max_boxes=max_boxes, source=source)
    self.model = model
    self.params = jax.device_put(nn.meta.unbox(params))
    self.answers = list(answers)
    self.batch_size = batch_size
    self.step: Optional[int] = None  # The run directory's checkpoint step, when loaded from one.
    self._top_k = jax.jit(self._scores, static_argnums=2)

  @classmethod
  def load(cls, path: paths.PathLike, step: saved_models.Step = "best",
           max_seq_length: Optional[int] = None,
           tokenizer: Optional[tokenization.Tokenizer] = None, *,
           answers: Optional[AnswerSource] = None, batch_size: int = DEFAULT_BATCH_SIZE,
           max_boxes: Optional[int] = None) -> "Predictor":
    """A predictor for a run directory, an lxmert_jax checkpoint or a transformers directory.

    Args:
      path: the directory (see `saved_models.load_saved_model`).
      step: for a run directory, which checkpoint ("best", "latest" or a step).
      max_seq_length: T; default the run's `data.max_seq_length`, else 20.
      tokenizer: default the one the run's data was tokenised with (when the
        run's data directory is still there), else BERT uncased.
      answers: the answer vocabulary, when the directory has no
        `answers.json` or to replace it: a list of strings, or the path of a
        JSON list of strings or of the original `all_ans.json`.
      batch_size: questions per forward pass.
      max_boxes: boxes kept per image; default the run's `data.num_objects`,
        else all.

    Raises:
      FileNotFoundError: `path` is not a model directory.
      ConversionError: the model has no answer head, no answer vocabulary, or
        one whose length differs from the head's rows (naming the directory).
    """
    source = os.fspath(path)
    saved = saved_models.load_saved_model(path, step)
    if checkpoints.answer_head_size(saved.model) is None:
      raise ConversionError(f"{source}: holds an {type(saved.model).__name__}, which has no "
                            "answer head to predict answers with (expected "
                            "LxmertForQuestionAnswering, or LxmertForPreTraining with "
                            "task_qa)")
    where = f"{source}/{checkpoints.ANSWERS_FILE}"
    vocabulary = saved.answers
    if answers is not None:
      if isinstance(answers, (str, os.PathLike)):
        where = os.fspath(answers)
        vocabulary = checkpoints.read_answer_list(where)
      else:
        where, vocabulary = "answers", list(answers)
    if vocabulary is None:
      raise ConversionError(
          f"{source}: no {checkpoints.ANSWERS_FILE}, so the answer head's "
          f"{checkpoints.answer_head_size(saved.model)} rows have no names; pass answers= (a "
          "list, a JSON list file or the original all_ans.json)")
    checkpoints.check_answers(saved.model, vocabulary, where)
    max_seq_length, max_boxes, tokenizer = _input_settings(saved, max_seq_length, max_boxes,
                                                           tokenizer)
    predictor = cls(saved.model, saved.params, vocabulary, tokenizer=tokenizer,
                    max_seq_length=max_seq_length, batch_size=batch_size, max_boxes=max_boxes,
                    source=source)
    predictor.step = saved.step
    return predictor

  def _scores(self, params: Any, batch: dict[str, jax.Array], top_k: int
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    out = self.model.apply({"params": params}, **batch, deterministic=True)
    logits = out.question_answering_score.astype(jnp.float32)
    values, indices = jax.lax.top_k(logits, top_k)
    return jax.nn.sigmoid(values), indices, jnp.isfinite(logits).all(axis=-1)

  def predict(self, questions: Sequence[str],
              features: Union[ArrayLike, Sequence[ArrayLike]],
              boxes: Union[ArrayLike, Sequence[ArrayLike]], *,
              image_sizes: Optional[Sequence[tuple[int, int]]] = None,
              boxes_normalized: bool = False, top_k: int = 5) -> Answers:
    """The `top_k` answers of each question about its image, best first.

    Args:
      questions: N question strings.
      features: [N, O, F] RoI features, or N arrays [O_i, F] with different box
        counts (padded to the largest, the padding masked out).
      boxes: [N, O, 4] (or N arrays [O_i, 4]) x1, y1, x2, y2, in pixels of the
        original image unless `boxes_normalized`.
      image_sizes: N (height, width) of the original images, for pixel boxes.
      boxes_normalized: boxes are already divided by the image width/height.
      top_k: answers per question.

    Returns:
      For each question, `top_k` (answer, probability) pairs, best first. The
      probability is `sigmoid(logit)`: the heads are trained with a binary
      cross-entropy per answer, so the probabilities of a question do not sum
      to 1.

    Raises:
      PredictionError: question and image counts differ, shapes are wrong
        (feature width other than the model's `visual_feat_dim`, boxes not
        [..., 4]), features or boxes are not finite, boxes lie outside the
        image, or the model's scores for a question are NaN or infinite.
    """
    inputs = self.model_inputs(questions, features, boxes, image_sizes=image_sizes,
                               boxes_normalized=boxes_normalized)
    n = len(questions)
    if not isinstance(top_k, int) or not 1 <= top_k <= len(self.answers):
      raise PredictionError(f"top_k={top_k!r}: expected 1 to {len(self.answers)} (the "
                            "number of answers)")
    rows = _batch_rows(n, self.batch_size)
    results: Answers = []
    for start in range(0, n, rows):
      real = min(rows, n - start)
      batch = {k: _pad_rows(v[start:start + real], rows) for k, v in inputs.items()}
      probs, indices, finite = jax.device_get(self._top_k(self.params, batch, top_k))
      for r in range(real):
        if not finite[r]:
          i = start + r
          raise PredictionError(f"question {i} ({questions[i]!r}): the model's answer scores "
                                f"are NaN or infinite; {self.source} cannot answer it (are "
                                "its parameters finite?)")
        results.append([(self.answers[int(k)], float(p))
                        for k, p in zip(indices[r], probs[r])])
    return results


def _per_image(value: Any, name: str) -> list[np.ndarray]:
  """N per-image arrays from an [N, O, D] array or a sequence of [O_i, D] arrays."""
  if isinstance(value, (list, tuple)):
    return [np.asarray(v) for v in value]
  arr = np.asarray(value)
  if arr.ndim != 3:
    raise PredictionError(f"{name}: shape {list(arr.shape)}; expected [N, O, "
                          f"{'4' if name == 'boxes' else 'F'}] or a list of per-image arrays")
  return list(arr)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """`x` with its last row repeated up to `rows` rows (the padding is never read)."""
  if x.shape[0] == rows:
    return x
  return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)])


def _input_settings(saved: saved_models.SavedModel, max_seq_length: Optional[int],
                    max_boxes: Optional[int], tokenizer: Optional[tokenization.Tokenizer]
                    ) -> tuple[int, Optional[int], tokenization.Tokenizer]:
  """T, the boxes kept and the tokenizer: those given, else the run's data settings."""
  run_config = None
  if saved.step is not None and (paths.resolve(saved.source)
                                 / saved_models.RUN_CONFIG_FILE).exists():
    run_config = saved_models.load_run_config(saved.source)
  data = (run_config.get("data") if run_config is not None else None) or {}
  if max_seq_length is None:
    max_seq_length = int(data.get("max_seq_length") or DEFAULT_MAX_SEQ_LENGTH)
  if max_boxes is None and data.get("num_objects"):
    max_boxes = int(data["num_objects"])
  if tokenizer is None:
    tokenizer = _run_tokenizer(saved.source, run_config)
  return max_seq_length, max_boxes, tokenizer


def _run_tokenizer(source: str, run_config: Any) -> tokenization.Tokenizer:
  """The tokenizer a run's data was tokenised with; BERT uncased when unknown."""
  default = tokenization.make_tokenizer("bert")
  data = (run_config.get("data") if run_config is not None else None) or {}
  data_dir = data.get("dir") or ""
  if not data_dir and data.get("build_demo"):
    # The trainer's modules are only needed for a run on the built-in corpus.
    from lxmert_jax.tasks import demo_corpus  # pylint: disable=import-outside-toplevel
    data_dir = demo_corpus.demo_data_dir(source)
  if not data_dir:
    return default
  task = run_config.get("task")
  try:
    spec = store.task_metadata(data_dir, _DATA_TASKS.get(task, task)).get("tokenizer")
  except (FileNotFoundError, KeyError, OSError, ValueError) as e:
    warnings.warn(f"{source}: cannot read the tokenizer of its data {data_dir} ({e}); "
                  "tokenising questions with BERT uncased", stacklevel=4)
    return default
  if not spec or spec.get("fingerprint") == default.fingerprint:
    return default
  try:
    return tokenization.tokenizer_from_spec(spec)
  except (FileNotFoundError, KeyError, ValueError) as e:
    raise ConversionError(f"{source}: its data {data_dir} was tokenised with {spec.get('kind')} "
                          f"{spec.get('path')}, which cannot be loaded ({e}); pass tokenizer=")
