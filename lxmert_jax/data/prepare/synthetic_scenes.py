"""The synthetic corpus's world: scenes of objects, their captions, questions and answers.

Each object has a class, a colour, a size, a material and a box; captions
and questions are true of their scene, written with real English words of
the BERT vocabulary. `synthetic_corpus` writes them, with detector-like
features, in the reference's file formats.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lxmert_jax.data.prepare import tsv_features

OBJECT_CLASSES = ("cube", "sphere", "cylinder", "cone", "ball", "box", "cup", "bowl",
                  "bottle", "chair", "table", "lamp", "book", "vase", "plate", "hat")
COLOURS = ("red", "blue", "green", "yellow", "purple", "brown", "gray", "black", "white",
           "orange", "pink")
SIZES = ("small", "large")
MATERIALS = ("metal", "rubber", "wooden", "plastic", "glass")
ATTRIBUTES = COLOURS + SIZES + MATERIALS
CAPTION_STYLES = ("relations", "inventory")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


def plural(word: str) -> str:
  return word + "es" if word.endswith(("x", "s")) else word + "s"


@dataclasses.dataclass
class SceneObject:
  cls: str
  colour: str
  size: str
  material: str
  box: np.ndarray  # float32 [4] pixel x1, y1, x2, y2

  def phrase(self, with_size: bool = False, with_material: bool = False) -> str:
    words = ([self.size] if with_size else []) + [self.colour] + (
        [self.material] if with_material else []) + [self.cls]
    return " ".join(words)


@dataclasses.dataclass
class Scene:
  img_id: str
  width: int
  height: int
  objects: list[SceneObject]

  def count(self, cls: str) -> int:
    return sum(o.cls == cls for o in self.objects)

  def has(self, cls: str, colour: str | None = None) -> bool:
    return any(o.cls == cls and (colour is None or o.colour == colour) for o in self.objects)


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """Sizes of the synthetic corpus.

  Attributes:
    num_images: COCO-like plus VG-like images (half COCO train, a quarter
      COCO val, a quarter VG); GQA testdev and NLVR2 images come on top.
    feature_dim: F of the RoI features.
    num_boxes: boxes per image (the reference has 36).
    max_objects: most objects in a scene (at least 2).
    noise: standard deviation of the feature noise.
    caption_style: "relations" (two objects each: a relation, a count, a
      material) or "inventory" (every object of the scene by colour and
      class, in a random order: "there is a red cube , a blue cup and a
      green hat ."). Inventory captions give image-sentence matching a
      check for every object, so it leaves chance sooner (README, *A
      grounded demo*); with `max_seq_length` 20 they fit scenes of at most
      3 objects whole.
    seed: everything is a function of it.
  """

  num_images: int = 200
  feature_dim: int = 256
  num_boxes: int = 36
  max_objects: int = 5
  noise: float = 0.3
  caption_style: str = "relations"
  seed: int = 0

  def __post_init__(self):
    if self.caption_style not in CAPTION_STYLES:
      raise ValueError(f"caption_style={self.caption_style!r}; expected one of {CAPTION_STYLES}")


class World:
  """Fixed prototypes that make features informative about the scene."""

  def __init__(self, cfg: CorpusConfig):
    rng = np.random.default_rng([cfg.seed, 1])
    f = cfg.feature_dim
    self.cfg = cfg
    self.class_protos = rng.normal(0.0, 1.0, (len(OBJECT_CLASSES), f)).astype(np.float32)
    self.attr_protos = rng.normal(0.0, 0.7, (len(ATTRIBUTES), f)).astype(np.float32)
    self.box_proj = rng.normal(0.0, 0.5, (5, f)).astype(np.float32)

  def scene(self, rng: np.random.Generator, img_id: str) -> Scene:
    width, height = int(rng.integers(400, 641)), int(rng.integers(300, 481))
    n = int(rng.integers(2, max(2, min(self.cfg.max_objects, self.cfg.num_boxes)) + 1))
    objects = []
    for _ in range(n):
      size = SIZES[int(rng.integers(len(SIZES)))]
      frac = rng.uniform(0.1, 0.2) if size == "small" else rng.uniform(0.25, 0.4)
      w, h = frac * width, frac * height * rng.uniform(0.8, 1.2)
      x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
      objects.append(SceneObject(
          cls=OBJECT_CLASSES[int(rng.integers(len(OBJECT_CLASSES)))],
          colour=COLOURS[int(rng.integers(len(COLOURS)))], size=size,
          material=MATERIALS[int(rng.integers(len(MATERIALS)))],
          box=np.array([x1, y1, x1 + w, min(y1 + h, height)], np.float32)))
    return Scene(img_id=img_id, width=width, height=height, objects=objects)

  def detections(self, rng: np.random.Generator, scene: Scene) -> tsv_features.ImageFeatures:
    """The scene as a detector row: objects first, then jittered duplicates."""
    nb = self.cfg.num_boxes
    owners = list(range(len(scene.objects)))[:nb]
    owners += rng.integers(len(scene.objects), size=nb - len(owners)).tolist()
    boxes = np.stack([scene.objects[o].box for o in owners]).astype(np.float32)
    jitter = rng.normal(0.0, 0.08, boxes.shape) * np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    jitter[:len(scene.objects)] = 0.0
    boxes = boxes + jitter.astype(np.float32)
    boxes[:, (0, 2)] = np.clip(boxes[:, (0, 2)], 0, scene.width)
    boxes[:, (1, 3)] = np.clip(boxes[:, (1, 3)], 0, scene.height)
    objs = [scene.objects[o] for o in owners]
    cls_ids = np.array([OBJECT_CLASSES.index(o.cls) for o in objs], np.int64)
    colour_ids = np.array([ATTRIBUTES.index(o.colour) for o in objs], np.int64)
    size_ids = np.array([ATTRIBUTES.index(o.size) for o in objs], np.int64)
    material_ids = np.array([ATTRIBUTES.index(o.material) for o in objs], np.int64)
    norm = boxes / np.array([scene.width, scene.height] * 2, np.float32)
    geometry = np.concatenate(
        [norm, ((norm[:, 2] - norm[:, 0]) * (norm[:, 3] - norm[:, 1]))[:, None]], axis=1)
    raw = (self.class_protos[cls_ids] + self.attr_protos[colour_ids]
           + self.attr_protos[size_ids] + self.attr_protos[material_ids]
           + geometry @ self.box_proj
           + rng.normal(0.0, self.cfg.noise, (nb, self.cfg.feature_dim)))
    # Non-negative like real RoI features (pooled after a ReLU); softplus is
    # invertible, so nothing recoverable is lost.
    feats = np.logaddexp(0.0, raw)
    return tsv_features.ImageFeatures(
        img_id=scene.img_id, img_h=scene.height, img_w=scene.width, objects_id=cls_ids,
        objects_conf=rng.uniform(0.5, 1.0, nb).astype(np.float32), attrs_id=colour_ids,
        attrs_conf=rng.uniform(0.4, 0.9, nb).astype(np.float32), boxes=boxes,
        features=feats.astype(np.float32))


def _relation(a: SceneObject, b: SceneObject) -> str:
  (ax, ay), (bx, by) = (a.box[:2] + a.box[2:]) / 2, (b.box[:2] + b.box[2:]) / 2
  if abs(ax - bx) >= abs(ay - by):
    return "left of" if ax < bx else "right of"
  return "above" if ay < by else "below"


def captions(rng: np.random.Generator, scene: Scene, n: int, short: bool = False,
             style: str = "relations") -> list[str]:
  """True sentences about the scene (`short`: VG-style region phrases).

  `style` is `CorpusConfig.caption_style`.
  """
  if style == "inventory":
    return [_inventory(rng, scene, short) for _ in range(n)]
  out = []
  objs = scene.objects
  for _ in range(n):
    i, j = rng.choice(len(objs), size=2, replace=False)
    a, b = objs[i], objs[j]
    kind = int(rng.integers(4))
    if short:
      out.append(f"{a.phrase(with_size=kind % 2 == 0, with_material=kind >= 2)} "
                 f"{_relation(a, b)} {b.phrase()}")
    elif kind == 0:
      out.append(f"a {a.phrase(with_size=True, with_material=True)} {_relation(a, b)} "
                 f"a {b.phrase()} .")
    elif kind == 1:
      out.append(f"there is a {a.phrase()} and a {b.phrase(with_size=True)} .")
    elif kind == 2:
      count = scene.count(a.cls)
      noun = a.cls if count == 1 else plural(a.cls)
      out.append(f"{NUMBER_WORDS[min(count, 6)]} {noun} and a {b.phrase()} .")
    else:
      out.append(f"the {a.material} {a.cls} is {a.colour} .")
  return out


def _inventory(rng: np.random.Generator, scene: Scene, short: bool) -> str:
  """Every object of the scene by colour and class, in a random order."""
  phrases = [scene.objects[i].phrase() for i in rng.permutation(len(scene.objects))]
  if short:
    return " , ".join(phrases)
  return f"there is a {' , a '.join(phrases[:-1])} and a {phrases[-1]} ."


def questions(rng: np.random.Generator, scene: Scene, n: int) -> list[tuple[str, str]]:
  """Questions with their (normalised) answer."""
  out = []
  objs = scene.objects
  for _ in range(n):
    o = objs[int(rng.integers(len(objs)))]
    unique = scene.count(o.cls) == 1
    kind = int(rng.integers(6))
    if kind == 0 and unique:
      out.append((f"what color is the {o.cls} ?", o.colour))
    elif kind == 1:
      out.append((f"how many {plural(o.cls)} are there ?", str(scene.count(o.cls))))
    elif kind == 2:
      colour = COLOURS[int(rng.integers(len(COLOURS)))] if rng.random() < 0.5 else o.colour
      out.append((f"is there a {colour} {o.cls} ?", "yes" if scene.has(o.cls, colour) else "no"))
    elif kind == 3:
      out.append((f"what material is the {o.phrase()} ?", o.material))
    elif kind == 4:
      out.append((f"what size is the {o.phrase()} ?", o.size))
    else:
      out.append((f"what shape is the {o.colour} {o.material} object ?", o.cls))
  return out


def vqa_label(rng: np.random.Generator, answer: str) -> dict[str, float]:
  """VQA-style soft scores: the answer, sometimes with a minority answer."""
  label = {answer: 1.0}
  if rng.random() < 0.3:
    other = COLOURS[int(rng.integers(len(COLOURS)))] if answer in COLOURS else "yes"
    if other != answer:
      label[other] = 0.3
  return label


def raw_variant(rng: np.random.Generator, answer: str) -> str:
  """Spellings `convert_ans` normalises ("two", "grey", "the cube.")."""
  if answer.isdigit() and int(answer) <= 6 and rng.random() < 0.5:
    return NUMBER_WORDS[int(answer)]
  if answer == "gray" and rng.random() < 0.5:
    return "grey"
  if answer in OBJECT_CLASSES and rng.random() < 0.3:
    return f"the {answer}."
  return answer
