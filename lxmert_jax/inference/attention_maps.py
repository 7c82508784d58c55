"""Where a trained LXMERT looks: its attention for one question about one image, as figures.

An answer is easier to trust, and a wrong one easier to diagnose, when one can
see what the model read. LXMERT attends four ways, and each tells something
else: language self-attention (which words a word reads), visual
self-attention in the object-relationship layers (which boxes a box reads),
and in every cross-modality layer both directions of the one shared
cross-attention: language -> vision (which boxes a word reads; the [CLS] row
feeds the pooled output the answer head reads) and vision -> language.

`attention` runs the backbone of any task model (question answering,
pre-training, NLVR2) with `output_attentions` on one example. Build that
example with `InputEncoder.model_inputs`, so that the maps are those of the
inputs the model was trained on (tokenizer, box normalisation, feature
rounding, the run's box count). An NLVR2 model encodes each image of a pair
with the statement on its own before its classifier joins the two, so its maps
are those of the statement with one image.

Figures are `matplotlib.figure.Figure`s on the non-interactive Agg canvas,
made without pyplot: they open no window and stay out of pyplot's registry of
open figures, and a notebook still displays them.

    saved = saved_models.load_saved_model("runs/vqa")
    encoder = InputEncoder.for_saved_model(saved)
    img, _ = npz_features.read_npz("cat.npz")
    size = (img.img_h, img.img_w)
    inputs = encoder.model_inputs(["what animal is this?"], [img.features], [img.boxes],
                                  image_sizes=[size])
    maps = attention(saved.model, saved.params, inputs, tokenizer=encoder.tokenizer,
                     image_size=size)
    save_figures(attention_figures(maps, word="animal", image="cat.jpg"), "attention/")
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping, Optional, Union

import flax.linen as nn
import jax
import matplotlib.cm
import matplotlib.colors
import matplotlib.image
import matplotlib.patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from lxmert_jax.data import tokenization
from lxmert_jax.model.config import LxmertConfig
from lxmert_jax.model.encoders import LxmertModel

Head = Union[int, str]  # A head index, or "mean" for the mean over heads.
Image = Union[str, os.PathLike, np.ndarray]
CROSS_DIRECTIONS = ("language_to_vision", "vision_to_language")
KINDS = ("language", "vision") + CROSS_DIRECTIONS
# Per kind: title, what indexes its rows (queries) and columns (keys), its layers' name.
_KIND_INFO = {
    "language": ("language self-attention", "token", "token", "language layer"),
    "vision": ("visual (object-relationship) self-attention", "box", "box",
               "object-relationship layer"),
    "language_to_vision": ("cross-attention, language \u2192 vision", "token", "box",
                           "cross-modality layer"),
    "vision_to_language": ("cross-attention, vision \u2192 language", "box", "token",
                           "cross-modality layer"),
}
# The model's output field of each kind.
_OUTPUT_FIELDS = {"language": "language_attentions", "vision": "vision_attentions",
                  "language_to_vision": "cross_encoder_attentions",
                  "vision_to_language": "cross_encoder_vision_attentions"}
# The model inputs `attention` reads (other keys, labels say, are left alone).
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos",
               "visual_attention_mask")
# The files `attention_figures` names its figures for.
FIGURE_NAMES = ("language_attention", "visual_attention", "cross_language_to_vision",
                "cross_vision_to_language", "boxes")


@dataclasses.dataclass(frozen=True, eq=False)
class AttentionMaps:
  """One example's attention probabilities per layer and head, and what they range over.

  Queries and keys are the T token positions (padding included) and the O box
  slots (masked boxes included) the model was given; `matrix` keeps the real
  ones.

  Attributes:
    tokens: the T word pieces ("[CLS]", ..., "[SEP]", then "[PAD]"s).
    token_mask: bool [T], True for real tokens.
    boxes: float32 [O, 4] boxes x1, y1, x2, y2 as fractions of the image size.
    box_mask: bool [O], True for real boxes.
    language: float32 [L, N, T, T] per language layer and head (query, key).
    vision: float32 [R, N, O, O] per object-relationship layer.
    language_to_vision: float32 [X, N, T, O] per cross-modality layer.
    vision_to_language: float32 [X, N, O, T] per cross-modality layer.
    image_size: (height, width) in pixels of the image the boxes are from.
  """

  tokens: tuple[str, ...]
  token_mask: np.ndarray
  boxes: np.ndarray
  box_mask: np.ndarray
  language: np.ndarray
  vision: np.ndarray
  language_to_vision: np.ndarray
  vision_to_language: np.ndarray
  image_size: Optional[tuple[int, int]] = None

  @property
  def num_heads(self) -> int:
    return self.language_to_vision.shape[1]

  @property
  def real_tokens(self) -> list[str]:
    return [t for t, keep in zip(self.tokens, self.token_mask) if keep]

  def num_layers(self, kind: str) -> int:
    return self._maps(kind).shape[0]

  def _maps(self, kind: str) -> np.ndarray:
    if kind not in KINDS:
      raise ValueError(f"attention kind {kind!r}: expected one of {KINDS}")
    return getattr(self, kind)

  def layer_index(self, kind: str, layer: int) -> int:
    """`layer` (Python indexing, -1 the last) as an index into `kind`'s layers."""
    count, noun = self.num_layers(kind), _KIND_INFO[kind][3]
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
      raise ValueError(f"layer {layer!r}: expected an integer")
    if not count:
      raise ValueError(f"layer {layer}: the model has no {noun}s")
    if not -count <= layer < count:
      raise ValueError(f"layer {layer}: the model has {count} {noun}s; expected "
                       f"{-count} to {count - 1}")
    return int(layer) % count

  def head_index(self, head: Head) -> Optional[int]:
    """`head` as an index (None for "mean")."""
    if head == "mean":
      return None
    n = self.num_heads
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)) or not -n <= head < n:
      raise ValueError(f"head {head!r}: expected 'mean' or a head index from {-n} to {n - 1}")
    return int(head) % n

  def matrix(self, kind: str, layer: int = -1, head: Head = "mean") -> np.ndarray:
    """[queries, keys] of one layer and head (or the mean over heads), real positions only."""
    maps = self._maps(kind)[self.layer_index(kind, layer)]
    h = self.head_index(head)
    values = maps.mean(axis=0) if h is None else maps[h]
    rows, cols = (self._mask(axis) for axis in _KIND_INFO[kind][1:3])
    return values[rows][:, cols]

  def _mask(self, axis: str) -> np.ndarray:
    return self.token_mask if axis == "token" else self.box_mask

  def labels(self, axis: str) -> list[str]:
    """The tick labels of real tokens (their word pieces) or boxes (#index)."""
    if axis == "token":
      return self.real_tokens
    return [f"#{i}" for i in np.flatnonzero(self.box_mask)]


def attention(model: nn.Module, params: Any, inputs: Mapping[str, Any], *,
              tokenizer: Optional[tokenization.Tokenizer] = None,
              image_size: Optional[tuple[int, int]] = None) -> AttentionMaps:
  """The attention maps of a model's backbone on one example.

  Args:
    model: a task model (`LxmertForQuestionAnswering`, `LxmertForPreTraining`,
      `LxmertForNLVR2`) or an `LxmertModel`.
    params: its parameters.
    inputs: one example as `InputEncoder.model_inputs` builds it: `input_ids`
      [1, T], `visual_feats` [1, O, F], `visual_pos` [1, O, 4] and optionally
      `attention_mask`, `token_type_ids` [1, T], `visual_attention_mask`
      [1, O] (for NLVR2, one image of the pair).
    tokenizer: what turns the ids back into word pieces (default BERT uncased).
    image_size: (height, width) of the image, kept for drawing its boxes.

  Raises:
    ValueError: a missing input, a batch other than one example, shapes that
      disagree, or parameters without the backbone's.
  """
  config = model.config
  if config.attention_implementation != "reference":
    # The fused kernels compute the same attention but return no probabilities.
    config = config.replace(attention_implementation="reference")
  params = nn.meta.unbox(params)
  if not isinstance(model, LxmertModel):
    if not isinstance(params, Mapping) or "lxmert" not in params:
      raise ValueError(f"params: no 'lxmert' entry; expected the parameters of the "
                       f"{type(model).__name__}, whose backbone is under 'lxmert'")
    params = params["lxmert"]
  batch = _one_example(inputs, config.visual_feat_dim)
  per_kind = jax.device_get(_forward(config)(params, batch))
  n, t, o = config.num_attention_heads, batch["input_ids"].shape[1], batch["visual_feats"].shape[1]
  shapes = {"language": (t, t), "vision": (o, o), "language_to_vision": (t, o),
            "vision_to_language": (o, t)}
  maps = {kind: (np.stack([np.asarray(layer[0], np.float32) for layer in layers])
                 if layers else np.zeros((0, n, *shapes[kind]), np.float32))
          for kind, layers in zip(KINDS, per_kind)}
  tokenizer = tokenizer or tokenization.make_tokenizer("bert")
  tokens = tuple(tokenizer.id_to_token(int(i)) for i in batch["input_ids"][0])
  size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
  return AttentionMaps(tokens=tokens, token_mask=batch["attention_mask"][0] != 0,
                       boxes=np.asarray(batch["visual_pos"][0], np.float32),
                       box_mask=batch["visual_attention_mask"][0] != 0, image_size=size, **maps)


@functools.lru_cache(maxsize=8)
def _forward(config: LxmertConfig) -> Callable[..., tuple[tuple[jax.Array, ...], ...]]:
  """The backbone's attention probabilities of each kind, jitted once per architecture."""
  backbone = LxmertModel(config)

  def run(params: Any, batch: dict[str, np.ndarray]) -> tuple[tuple[jax.Array, ...], ...]:
    out = backbone.apply({"params": params}, **batch, deterministic=True,
                         output_attentions=True)
    return tuple(getattr(out, _OUTPUT_FIELDS[kind]) for kind in KINDS)

  return jax.jit(run)


def _one_example(inputs: Mapping[str, Any], feat_dim: int) -> dict[str, np.ndarray]:
  """The inputs as arrays of one example, the optional ones filled in, shapes checked."""
  for key in ("input_ids", "visual_feats", "visual_pos"):
    if key not in inputs:
      raise ValueError(f"inputs: no {key!r}; expected the keys InputEncoder.model_inputs "
                       "returns")
  batch = {k: np.asarray(inputs[k]) for k in _INPUT_KEYS if k in inputs}
  ids, feats = batch["input_ids"], batch["visual_feats"]
  if ids.ndim != 2 or ids.shape[0] != 1:
    raise ValueError(f"inputs['input_ids']: shape {list(ids.shape)}; expected [1, T] (one "
                     "example)")
  if feats.ndim != 3 or feats.shape[0] != 1 or feats.shape[2] != feat_dim:
    raise ValueError(f"inputs['visual_feats']: shape {list(feats.shape)}; expected [1, O, "
                     f"{feat_dim}] (one image; an NLVR2 pair's images one at a time)")
  t, o = ids.shape[1], feats.shape[1]
  batch.setdefault("attention_mask", np.ones((1, t), np.int32))
  batch.setdefault("token_type_ids", np.zeros((1, t), np.int32))
  batch.setdefault("visual_attention_mask", np.ones((1, o), np.int32))
  for key, shape in (("visual_pos", (1, o, 4)), ("attention_mask", (1, t)),
                     ("token_type_ids", (1, t)), ("visual_attention_mask", (1, o))):
    if batch[key].shape != shape:
      raise ValueError(f"inputs[{key!r}]: shape {list(batch[key].shape)}; expected "
                       f"{list(shape)} to match input_ids and visual_feats")
  for key, mask in (("attention_mask", batch["attention_mask"]),
                    ("visual_attention_mask", batch["visual_attention_mask"])):
    if not mask.any():
      raise ValueError(f"inputs[{key!r}]: all zero; expected at least one real position")
  return batch


def _describe(maps: AttentionMaps, kind: str, layer: int, head: Head) -> str:
  """"<noun> l/L, <head>" with 1-based numbers, as the title's second line."""
  index, h = maps.layer_index(kind, layer), maps.head_index(head)
  heads = f"mean of {maps.num_heads} heads" if h is None else f"head {h + 1}/{maps.num_heads}"
  return f"{_KIND_INFO[kind][3]} {index + 1}/{maps.num_layers(kind)}, {heads}"


def _figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _heatmap(maps: AttentionMaps, kind: str, layer: int, head: Head) -> Figure:
  values = maps.matrix(kind, layer, head)
  title, row_axis, col_axis, _ = _KIND_INFO[kind]
  rows, cols = values.shape
  fig = _figure(max(4.5, 2.2 + 0.24 * cols), max(3.5, 1.6 + 0.24 * rows))
  ax = fig.add_subplot()
  shown = ax.imshow(values, cmap="viridis", vmin=0.0, aspect="auto", interpolation="nearest")
  ax.set_xticks(range(cols), maps.labels(col_axis), rotation=90, fontsize=8)
  ax.set_yticks(range(rows), maps.labels(row_axis), fontsize=8)
  ax.set_xlabel(f"key {col_axis}")
  ax.set_ylabel(f"query {row_axis}")
  ax.set_title(f"{title}\n{_describe(maps, kind, layer, head)}", fontsize=10)
  fig.colorbar(shown, ax=ax, label="attention weight", shrink=0.9)
  return fig


def plot_language_attention(maps: AttentionMaps, layer: int = -1,
                            head: Head = "mean") -> Figure:
  """Tokens by tokens: how much each word piece attends to each, in one language layer."""
  return _heatmap(maps, "language", layer, head)


def plot_visual_attention(maps: AttentionMaps, layer: int = -1, head: Head = "mean") -> Figure:
  """Boxes by boxes, in one object-relationship layer."""
  return _heatmap(maps, "vision", layer, head)


def plot_cross_attention(maps: AttentionMaps, direction: str = "language_to_vision",
                         layer: int = -1, head: Head = "mean") -> Figure:
  """Tokens by boxes ("language_to_vision") or boxes by tokens ("vision_to_language")."""
  if direction not in CROSS_DIRECTIONS:
    raise ValueError(f"direction {direction!r}: expected one of {CROSS_DIRECTIONS}")
  return _heatmap(maps, direction, layer, head)


def token_index(maps: AttentionMaps, word: Union[int, str]) -> int:
  """The position of `word`: a position among the real tokens, or a word piece (first one)."""
  tokens = maps.real_tokens
  if isinstance(word, (int, np.integer)) and not isinstance(word, bool):
    if not -len(tokens) <= word < len(tokens):
      raise ValueError(f"word {word}: the question has {len(tokens)} tokens; expected a "
                       f"position from 0 to {len(tokens) - 1}")
    return int(word) % len(tokens)
  if isinstance(word, str):
    for i, token in enumerate(tokens):
      if token.lower() == word.lower():
        return i
  raise ValueError(f"word {word!r}: not one of the question's word pieces {tokens}; expected "
                   "one of them or a position")


def _canvas(maps: AttentionMaps, image: Optional[Image]) -> tuple[Optional[np.ndarray], int, int]:
  """The picture to draw on (None for a blank one) and its height and width."""
  if image is None:
    height, width = maps.image_size or (1, 1)
    return None, height, width
  where = "image"
  if isinstance(image, (str, os.PathLike)):
    where = os.fspath(image)
    image = matplotlib.image.imread(where)
  image = np.asarray(image)
  if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
    raise ValueError(f"{where}: shape {list(image.shape)}; expected a [height, width(, "
                     "channels)] picture")
  height, width = image.shape[:2]
  if maps.image_size is not None:
    h, w = maps.image_size
    if abs(width / height - w / h) > 0.02 * (w / h):
      raise ValueError(f"{where}: the picture is {width}x{height} pixels but the boxes are of "
                       f"a {w}x{h} image; expected the image the features were extracted from "
                       "(or a copy scaled to the same proportions)")
  return image, height, width


def plot_boxes_attention(maps: AttentionMaps, word: Union[int, str] = 0, layer: int = -1,
                         head: Head = "mean", image: Optional[Image] = None) -> Figure:
  """The image's boxes coloured by how much `word` attends to each, labelled by rank.

  The colour scale runs from the least to the most attended box (from 0 when
  all are attended alike); rank 1 is the most attended.

  Args:
    maps: the example's attention.
    word: the token whose language -> vision row is drawn: its position
      among the real tokens (default 0, [CLS], whose final state the answer
      head reads) or a word piece.
    layer: the cross-modality layer (-1 the last).
    head: a head index, or "mean" over heads.
    image: the picture (a JPEG/PNG path, or an array) to draw the boxes on;
      without one, a blank canvas of the image's size.

  Raises:
    ValueError: an unknown word, layer or head, an unreadable picture, or one
      whose proportions are not those of the boxes' image.
    OSError: the picture cannot be read.
  """
  kind = "language_to_vision"
  position = token_index(maps, word)
  weights = maps.matrix(kind, layer, head)[position]
  picture, height, width = _canvas(maps, image)
  boxes = maps.boxes[maps.box_mask] * np.array([width, height, width, height], np.float32)
  fig = _figure(7.5, min(max(6.2 * height / width, 3.0), 9.0) + 1.0)
  ax = fig.add_subplot()
  if picture is not None:
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
  else:
    ax.set_facecolor("0.93")
  ax.set_xlim(0, width)
  ax.set_ylim(height, 0)
  ax.set_aspect("equal")
  unit = "pixels" if picture is not None or maps.image_size else "fraction of the image"
  ax.set_xlabel(f"x ({unit})")
  ax.set_ylabel(f"y ({unit})")
  # The colours span the weights' own range: across the boxes of one word they
  # differ by far less than their scale (uniform attention is 1 / boxes).
  low, high = float(weights.min()), float(weights.max())
  norm = matplotlib.colors.Normalize(low if high - low > 1e-6 else 0.0, max(high, 1e-12))
  cmap = matplotlib.colormaps["plasma"]
  ranks = np.empty(len(weights), np.int64)
  ranks[np.argsort(-weights, kind="stable")] = np.arange(1, len(weights) + 1)
  # The most attended boxes are drawn last, on top.
  for i in np.argsort(weights, kind="stable"):
    (x1, y1, x2, y2), share = boxes[i], float(norm(weights[i]))
    colour = cmap(share)
    ax.add_patch(matplotlib.patches.Rectangle(
        (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.0 + 3.0 * share,
        alpha=0.45 + 0.55 * share, gid=f"box{i}"))
    ax.text(x1, y1, str(ranks[i]), fontsize=7, color="black" if share > 0.7 else "white",
            ha="left", va="top",
            bbox=dict(facecolor=colour, edgecolor="none", pad=1.0, alpha=0.45 + 0.55 * share))
  token = maps.real_tokens[position]
  ax.set_title(f"boxes by the attention of \"{token}\" (token {position}), labelled by rank\n"
               f"{_KIND_INFO[kind][0]}, {_describe(maps, kind, layer, head)}", fontsize=10)
  fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
               label="attention weight", shrink=0.8)
  return fig


def attention_figures(maps: AttentionMaps, layer: int = -1, head: Head = "mean",
                      word: Union[int, str] = 0,
                      image: Optional[Image] = None) -> dict[str, Figure]:
  """Every figure of one example, by the names of `FIGURE_NAMES`.

  `layer` indexes each kind's own layers (-1, the default, is the last of
  each); a kind the model has no layers of is left out. Arguments as in
  `plot_boxes_attention`.
  """
  figures = {}
  for name, kind in zip(FIGURE_NAMES, KINDS):
    if maps.num_layers(kind):
      figures[name] = _heatmap(maps, kind, layer, head)
  figures["boxes"] = plot_boxes_attention(maps, word, layer, head, image)
  return figures


def save_figures(figures: Mapping[str, Figure], directory: Union[str, os.PathLike],
                 dpi: int = 100) -> list[str]:
  """Writes each figure as `<directory>/<name>.png` (the directory made if needed); the paths."""
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  written = []
  for name, fig in figures.items():
    path = os.path.join(directory, f"{name}.png")
    fig.savefig(path, dpi=dpi)
    written.append(path)
  return written
