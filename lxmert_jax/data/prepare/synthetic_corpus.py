"""A small synthetic corpus in the reference formats, for demos and tests.

Scenes hold a few objects, each with a class, a colour, a size and a material
and a box. The "detector" output per image is `num_boxes` boxes (the objects,
then jittered duplicates of them) whose features are fixed random prototypes
of the class and of each attribute, plus a projection of the box geometry and
Gaussian noise, passed through a softplus (real RoI features are
non-negative), so class and attributes are recoverable from the features.
Captions ("a small red metal cube left of a blue sphere .") and questions
("what color is the cube ?" -> "red", "how many spheres are there ?" -> "2")
use real English words of the BERT vocabulary and are true of their scene, so
a small model can beat chance on every pre-training task: masked colour words
are visible in the image, a mismatched caption names objects the image does
not have, and answers follow from the objects.

The corpus is written exactly as the reference's downloads are laid out
(`layout` lists the files): obj36-style TSVs with base64 arrays, pre-training
JSONs with `sentf`/`labelf` per source (captions under `mscoco`/`vg`,
questions under `vqa`/`gqa`), `all_ans.json`, and VQA/GQA/NLVR2 JSONs, so the
real `prepare` path runs on it end to end.

    python -m lxmert_jax.data.prepare.synthetic_corpus --out /tmp/corpus --num-images 200
    python -m lxmert_jax.data.prepare.synthetic_corpus --demo-data /tmp/lxmert_data
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import sys
from typing import Sequence

import numpy as np

from lxmert_jax.data import layout
from lxmert_jax.data.prepare import tsv_features
from lxmert_jax.data.prepare.synthetic_scenes import (
    ATTRIBUTES, CAPTION_STYLES, COLOURS, NUMBER_WORDS, OBJECT_CLASSES, CorpusConfig, Scene, World,
    captions, plural, questions, raw_variant, vqa_label)


def _write_json(path: str, data) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f)
  os.replace(tmp, path)


def build_synthetic_corpus(out_dir: str, num_images: int = 200, seed: int = 0,
                           feature_dim: int = 256, num_boxes: int = 36,
                           max_objects: int = 5, noise: float = 0.3,
                           caption_style: str = "relations") -> str:
  """Writes the corpus under `out_dir` in the reference layout.

  Args:
    out_dir: the reference data root to create.
    num_images: COCO-like + VG-like images (GQA testdev and NLVR2 add about
      60% more on top).
    seed: the corpus is a deterministic function of its arguments.
    feature_dim: F.
    num_boxes: boxes per image.
    max_objects: most objects per scene.
    noise: feature noise standard deviation.
    caption_style: see `CorpusConfig`.

  Returns:
    `out_dir`.
  """
  if num_images < 8:
    raise ValueError(f"num_images={num_images}; expected at least 8 (every split needs images)")
  cfg = CorpusConfig(num_images=num_images, feature_dim=feature_dim, num_boxes=num_boxes,
                     max_objects=max_objects, noise=noise, caption_style=caption_style,
                     seed=seed)
  world = World(cfg)
  rng = np.random.default_rng([seed, 2])
  n_train, n_val = num_images // 2, num_images // 4
  n_vg = num_images - n_train - n_val
  n_minival = max(1, n_val * 2 // 5)

  def make(prefix_fmt: str, count: int, start: int = 0) -> list[Scene]:
    return [world.scene(rng, prefix_fmt.format(start + i)) for i in range(count)]

  coco_train = make("COCO_train2014_{:012d}", n_train, 9)
  coco_val = make("COCO_val2014_{:012d}", n_val, 42)
  vg = make("{}", n_vg, 2_300_000)
  testdev = make("n{:06d}", max(4, num_images // 10), 100)

  def write_features(rel: str, scenes: list[Scene]) -> None:
    path = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tsv_features.write_tsv(path, (world.detections(rng, s) for s in scenes))

  write_features(layout.FEATURE_FILES["train2014"], coco_train)
  write_features(layout.FEATURE_FILES["val2014"], coco_val)
  write_features(layout.FEATURE_FILES["vg_gqa"], vg)
  write_features(layout.FEATURE_FILES["gqa_testdev"], testdev)

  # Text per image, shared by pre-training and the downstream tasks.
  qid = iter(range(10_000_000, 100_000_000))
  vqa_q, gqa_q = {}, {}
  entries = {}
  for scene in coco_train + coco_val + vg:
    is_coco = scene.img_id.startswith("COCO")
    sentf, labelf = {}, {}
    if is_coco:
      sentf["mscoco"] = captions(rng, scene, 5, style=caption_style)
      vqa_q[scene.img_id] = [(next(qid), q, vqa_label(rng, a))
                             for q, a in questions(rng, scene, 4)]
      sentf["vqa"] = [q for _, q, _ in vqa_q[scene.img_id]]
      labelf["vqa"] = [lab for _, _, lab in vqa_q[scene.img_id]]
    if not is_coco or rng.random() < 0.5:
      sentf["vg"] = captions(rng, scene, int(rng.integers(3, 6)), short=True,
                               style=caption_style)
      gqa_q[scene.img_id] = [(next(qid), q, a) for q, a in questions(rng, scene, 3)]
      sentf["gqa"] = [q for _, q, _ in gqa_q[scene.img_id]]
      labelf["gqa"] = [{raw_variant(rng, a): 1.0} for _, _, a in gqa_q[scene.img_id]]
    entries[scene.img_id] = {"img_id": scene.img_id, "sentf": sentf, "labelf": labelf}

  lx = os.path.join(out_dir, layout.ANNOTATION_DIRS["pretrain"])
  split_scenes = {"mscoco_train": coco_train, "mscoco_minival": coco_val[:n_minival],
                  "mscoco_nominival": coco_val[n_minival:], "vgnococo": vg}
  for split, scenes in split_scenes.items():
    _write_json(os.path.join(lx, f"{split}.json"), [entries[s.img_id] for s in scenes])
  counts = collections.Counter()
  dsets = collections.defaultdict(set)
  for qs, name in ((vqa_q, "vqa"), (gqa_q, "gqa")):
    for per_image in qs.values():
      for _, _, label in per_image:
        answers = label if isinstance(label, dict) else {label: 1.0}
        for ans in answers:
          counts[ans] += 1
          dsets[ans].add(name)
  _write_json(os.path.join(lx, "all_ans.json"),
              [{"ans": a, "dsets": sorted(dsets[a])}
               for a in sorted(counts, key=lambda a: (-counts[a], a))])

  _write_vqa(out_dir, vqa_q, coco_train, coco_val, n_minival)
  _write_gqa(out_dir, rng, gqa_q, vg, testdev)
  _write_nlvr2(out_dir, rng, world, cfg)
  with open(os.path.join(out_dir, "objects_vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(OBJECT_CLASSES) + "\n")
  with open(os.path.join(out_dir, "attributes_vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(ATTRIBUTES) + "\n")
  _write_json(os.path.join(out_dir, "corpus_config.json"), dataclasses.asdict(cfg))
  return out_dir


def _question_types(sent: str) -> tuple[str, str]:
  qtype = " ".join(sent.split()[:3])
  if sent.startswith(("is ", "are ")):
    return "yes/no", qtype
  if sent.startswith("how many"):
    return "number", qtype
  return "other", qtype


def _write_vqa(out_dir: str, vqa_q: dict, coco_train: list[Scene], coco_val: list[Scene],
               n_minival: int) -> None:
  root = os.path.join(out_dir, layout.ANNOTATION_DIRS["vqa"])

  def records(scenes):
    out = []
    for scene in scenes:
      for qid, sent, label in vqa_q[scene.img_id]:
        atype, qtype = _question_types(sent)
        out.append({"question_id": qid, "img_id": scene.img_id, "sent": sent, "label": label,
                    "answer_type": atype, "question_type": qtype})
    return out

  splits = {"train": records(coco_train), "minival": records(coco_val[:n_minival]),
            "nominival": records(coco_val[n_minival:])}
  for split, recs in splits.items():
    _write_json(os.path.join(root, f"{split}.json"), recs)
  _write_json(os.path.join(root, VQA_VAL_ANNOTATIONS),
              {"annotations": [_official_annotation(r) for split in ("minival", "nominival")
                               for r in splits[split]]})
  counts = collections.Counter(a for recs in splits.values() for r in recs for a in r["label"])
  label2ans = sorted(counts, key=lambda a: (-counts[a], a))
  _write_json(os.path.join(root, "trainval_label2ans.json"), label2ans)
  _write_json(os.path.join(root, "trainval_ans2label.json"),
              {a: i for i, a in enumerate(label2ans)})


# The official VQA evaluation's annotation file of the corpus's val2014 images
# (minival + nominival), in the format of v2_mscoco_val2014_annotations.json.
VQA_VAL_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"


def _official_annotation(record: dict) -> dict:
  """Ten annotators' answers whose LXMERT soft scores are the record's label.

  The label's main answer (score 1) gets 9 annotators and a minority answer
  (score 0.3, one annotator in LXMERT's scoring) the tenth.
  """
  label = record["label"]
  main = max(label, key=label.get)
  answers = [main] * (10 - (len(label) - 1)) + [a for a in label if a != main]
  return {"question_id": record["question_id"], "image_id": record["img_id"],
          "question_type": record["question_type"], "answer_type": record["answer_type"],
          "multiple_choice_answer": main,
          "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                      for i, a in enumerate(answers)]}


def _write_gqa(out_dir: str, rng: np.random.Generator, gqa_q: dict, vg: list[Scene],
               testdev: list[Scene]) -> None:
  # GQA ships no vocabulary here, so `prepare` builds it from train + valid.
  root = os.path.join(out_dir, layout.ANNOTATION_DIRS["gqa"])
  n_valid = max(1, len(vg) * 3 // 20)

  def records(pairs):
    return [{"question_id": str(qid), "img_id": img_id, "sent": sent, "label": {ans: 1.0}}
            for img_id, per_image in pairs for qid, sent, ans in per_image]

  vg_ids = {s.img_id for s in vg}
  train_pairs = [(i, q) for i, q in gqa_q.items() if i in vg_ids][n_valid:]
  valid_pairs = [(i, q) for i, q in gqa_q.items() if i in vg_ids][:n_valid]
  test_pairs = [(s.img_id, [(f"t{k}{s.img_id}", q, a) for k, (q, a) in
                            enumerate(questions(rng, s, 3))]) for s in testdev]
  for split, pairs in (("train", train_pairs), ("valid", valid_pairs), ("testdev", test_pairs)):
    _write_json(os.path.join(root, f"{split}.json"), records(pairs))


def _nlvr2_statement(rng: np.random.Generator, left: Scene, right: Scene,
                     truthful: bool) -> str:
  """A statement about an image pair, true of it when `truthful`."""
  o = left.objects[int(rng.integers(len(left.objects)))]
  kind = int(rng.integers(3))
  if kind == 0:
    colour = o.colour if truthful else next(c for c in rng.permutation(COLOURS)
                                             if not left.has(o.cls, c))
    return f"the left image contains a {colour} {o.cls} ."
  if kind == 1:
    n = right.count(o.cls)
    return (f"the right image contains {NUMBER_WORDS[min(n if truthful else n + 1, 6)]} "
            f"{plural(o.cls)} .")
  cls = o.cls if truthful else next(c for c in rng.permutation(OBJECT_CLASSES)
                                     if not left.has(c) and not right.has(c))
  return f"one of the images contains a {cls} ."


def _nlvr2_truth(sent: str, left: Scene, right: Scene) -> bool:
  words = sent.split()
  if sent.startswith("the left image contains a "):
    return left.has(words[-2], words[-3])
  if sent.startswith("the right image contains "):
    noun = words[-2]
    cls = next(c for c in OBJECT_CLASSES if plural(c) == noun)
    return NUMBER_WORDS[min(right.count(cls), 6)] == words[4]
  return left.has(words[-2]) or right.has(words[-2])


def _write_nlvr2(out_dir: str, rng: np.random.Generator, world: World, cfg: CorpusConfig) -> None:
  root = os.path.join(out_dir, layout.ANNOTATION_DIRS["nlvr2"])
  sizes = {"train": max(4, cfg.num_images // 8), "valid": max(2, cfg.num_images // 32),
           "test": max(2, cfg.num_images // 32)}
  for split, num_sets in sizes.items():
    records, scenes = [], []
    for set_id in range(num_sets):
      pairs = int(rng.integers(2, 4))
      sent = None
      for pair in range(pairs):
        stem = f"{split}-{set_id}-{pair}"
        left = world.scene(rng, f"{stem}-img0")
        right = world.scene(rng, f"{stem}-img1")
        scenes += [left, right]
        if sent is None:
          sent = _nlvr2_statement(rng, left, right, truthful=bool(rng.random() < 0.5))
        label = int(_nlvr2_truth(sent, left, right))
        records.append({"identifier": f"{stem}-0", "img0": left.img_id, "img1": right.img_id,
                        "sent": sent, "label": label,
                        "uid": f"nlvr2_{split}_{len(records)}"})
    _write_json(os.path.join(root, f"{split}.json"), records)
    path = os.path.join(out_dir, layout.FEATURE_FILES[f"nlvr2_{split}"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tsv_features.write_tsv(path, (world.detections(rng, s) for s in scenes))


DEMO_MARKER = "demo_data.json"


def build_demo_data(data_dir: str, num_images: int = 200, seed: int = 0, feature_dim: int = 256,
                    num_boxes: int = 36, max_objects: int = CorpusConfig.max_objects,
                    caption_style: str = CorpusConfig.caption_style,
                    tasks: Sequence[str] = ("pretrain", "vqa", "gqa", "nlvr2"),
                    progress: bool = False) -> str:
  """Synthetic corpus -> prepared datasets in one call; skips if already done.

  The corpus goes to `<data_dir>/corpus` and the prepared datasets to
  `data_dir` (the layout `make_pretrain_loader` reads). A marker file written
  last records the parameters, so a second call with the same parameters
  returns at once, and an interrupted call is completed by the next one.

  Args:
    data_dir: where to build.
    num_images: see `build_synthetic_corpus`.
    seed: corpus seed.
    feature_dim: F.
    num_boxes: boxes per image.
    max_objects: most objects per scene.
    caption_style: see `CorpusConfig`.
    tasks: datasets to prepare.
    progress: show progress bars.

  Returns:
    `data_dir`.

  Raises:
    ValueError: `data_dir` holds demo data built with other parameters.
  """
  from lxmert_jax.data import prepare  # pylint: disable=g-import-not-at-top
  params = {"num_images": num_images, "seed": seed, "feature_dim": feature_dim,
            "num_boxes": num_boxes, "max_objects": max_objects, "caption_style": caption_style}
  marker = os.path.join(data_dir, DEMO_MARKER)
  done: list[str] = []
  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as f:
      built = json.load(f)
    done = list(built.pop("tasks", []))
    if built != params:
      raise ValueError(f"{data_dir} holds demo data built with {built}, not {params}; "
                       "use another directory or delete this one")
    if set(tasks) <= set(done):
      return data_dir
  corpus = os.path.join(data_dir, "corpus")
  config_path = os.path.join(corpus, "corpus_config.json")
  wanted = dataclasses.asdict(CorpusConfig(num_images=num_images, feature_dim=feature_dim,
                                           num_boxes=num_boxes, max_objects=max_objects,
                                           caption_style=caption_style, seed=seed))
  complete = False
  if os.path.exists(config_path):
    with open(config_path, encoding="utf-8") as f:
      complete = json.load(f) == wanted
  if not complete:
    # The config file is written last, so a partial corpus is rebuilt.
    shutil.rmtree(corpus, ignore_errors=True)
    build_synthetic_corpus(corpus, num_images=num_images, seed=seed, feature_dim=feature_dim,
                           num_boxes=num_boxes, max_objects=max_objects,
                           caption_style=caption_style)
  missing = [t for t in tasks if t not in done]
  prepare.prepare_all(data_dir, prepare.Inputs(root=corpus), prepare.Options(progress=progress),
                      tasks=missing)
  # Tasks prepared later (e.g. fine-tuning after pre-training) join the same
  # corpus, so a pre-trained demo model fine-tunes on the same world.
  _write_json(marker, {**params, "tasks": done + missing})
  return data_dir


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lxmert_jax.data.prepare.synthetic_corpus",
                                   description=__doc__.split("\n")[0])
  target = parser.add_mutually_exclusive_group(required=True)
  target.add_argument("--out", help="write the corpus (reference layout) here")
  target.add_argument("--demo-data", metavar="DATA_DIR",
                      help="build the corpus and prepare it into DATA_DIR (idempotent)")
  parser.add_argument("--num-images", type=int, default=CorpusConfig.num_images)
  parser.add_argument("--seed", type=int, default=CorpusConfig.seed)
  parser.add_argument("--feature-dim", type=int, default=CorpusConfig.feature_dim)
  parser.add_argument("--num-boxes", type=int, default=CorpusConfig.num_boxes)
  parser.add_argument("--max-objects", type=int, default=CorpusConfig.max_objects)
  parser.add_argument("--noise", type=float, default=CorpusConfig.noise)
  parser.add_argument("--caption-style", choices=CAPTION_STYLES,
                      default=CorpusConfig.caption_style)
  args = parser.parse_args(argv)
  if args.demo_data:
    build_demo_data(args.demo_data, num_images=args.num_images, seed=args.seed,
                    feature_dim=args.feature_dim, num_boxes=args.num_boxes,
                    max_objects=args.max_objects, caption_style=args.caption_style,
                    progress=True)
    print(f"prepared demo data in {args.demo_data}")
    return 0
  build_synthetic_corpus(args.out, num_images=args.num_images, seed=args.seed,
                         feature_dim=args.feature_dim, num_boxes=args.num_boxes,
                         max_objects=args.max_objects, noise=args.noise,
                         caption_style=args.caption_style)
  print(f"wrote the corpus to {args.out}; prepare it with\n"
        f"  python -m lxmert_jax.data.prepare all --root {args.out} --out DATA_DIR")
  return 0


if __name__ == "__main__":
  sys.exit(main())
