"""Command line: answer questions about images with a trained LXMERT.

    python -m lxmert_jax.predict --model runs/vqa --features cat.npz \\
        --question "what animal is this?" --question "what color is it?"
    python -m lxmert_jax.predict --model ckpt/vqa --step latest \\
        --features a.npz --question "how many dogs?" \\
        --features b.npz --question "is it raining?" --top_k 3 --json

`--model` is a run directory (its best checkpoint unless `--step`), an
lxmert_jax checkpoint or a transformers directory; it needs an answer head and
its `answers.json` (or `--answers`). Each `--features` is the per-image `.npz`
that bottom-up-attention.pytorch's `extract_features.py` writes (`x`, `bbox`
in pixels, `num_bbox`, `image_h`, `image_w`); the i-th `--question` is asked
about the i-th `--features`, or every question about a single one. Prints each
question's top answers with their probabilities (sigmoid of the answer's
score: they do not sum to 1), or JSON with `--json`. Bad input is one line on
stderr naming the file or argument at fault, with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

from lxmert_jax.data.prepare import npz_features
from lxmert_jax.inference import command_line
from lxmert_jax.inference.command_line import UsageError
from lxmert_jax.inference.predictor import Predictor

PROG = "python -m lxmert_jax.predict"


def _parser() -> argparse.ArgumentParser:
  parser = command_line.parser_from_docstring(PROG, __doc__)
  parser.add_argument("--features", action="append", required=True, metavar="IMAGE.npz",
                      help="an image's features as extract_features.py writes them; "
                           "repeat for one per question")
  parser.add_argument("--question", action="append", required=True,
                      help="a question about the --features at the same position (or the "
                           "only one); repeat for more")
  parser.add_argument("--top_k", "--top-k", type=int, default=5,
                      help="answers per question (default 5)")
  parser.add_argument("--answers", metavar="FILE",
                      help="the answer vocabulary, when the model directory has no "
                           "answers.json: a JSON list or the original all_ans.json")
  parser.add_argument("--batch_size", "--batch-size", type=int, default=64,
                      help="questions per forward pass (default 64)")
  parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
  return parser


def read_image(path: str) -> dict[str, Any]:
  """One extractor `.npz`: features [n, F], pixel boxes [n, 4], (height, width).

  Raises:
    DataError: naming the file and key (see `npz_features.read_npz`).
  """
  img, _ = npz_features.read_npz(path)
  return {"features": img.features, "boxes": img.boxes, "size": (img.img_h, img.img_w)}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """Each question with its image, then rank, answer and probability lines."""
  lines = []
  for n, row in enumerate(rows):
    if n:
      lines.append("")
    lines.append(f"{row['question']}  ({row['features']})")
    width = max([len("answer")] + [len(a["answer"]) for a in row["answers"]])
    lines.append(f"  {'rank':>4}  {'answer':<{width}}  probability")
    for a in row["answers"]:
      lines.append(f"  {a['rank']:>4}  {a['answer']:<{width}}  {a['probability']:.4f}")
  return "\n".join(lines)


def _predict(args: argparse.Namespace) -> dict[str, Any]:
  questions, files = list(args.question), list(args.features)
  if len(files) not in (1, len(questions)):
    raise UsageError(f"{len(questions)} --question but {len(files)} --features; expected one "
                      "--features per --question, or a single one for all")
  if args.top_k < 1:
    raise UsageError(f"--top_k {args.top_k}: expected a positive number")
  if args.batch_size < 1:
    raise UsageError(f"--batch_size {args.batch_size}: expected a positive number")
  images = {path: read_image(path) for path in dict.fromkeys(files)}
  predictor = Predictor.load(args.model, step=args.step, answers=args.answers,
                             batch_size=args.batch_size)
  for path, image in images.items():
    width = image["features"].shape[1]
    if width != predictor.visual_feat_dim:
      raise UsageError(f"{path} [x]: features are {width} wide; the model {args.model} "
                        f"expects visual_feat_dim={predictor.visual_feat_dim}")
  if args.top_k > len(predictor.answers):
    raise UsageError(f"--top_k {args.top_k}: the model has only {len(predictor.answers)} "
                      "answers")
  per_question = files if len(files) == len(questions) else files * len(questions)
  answers = predictor.predict(
      questions, [images[p]["features"] for p in per_question],
      [images[p]["boxes"] for p in per_question],
      image_sizes=[images[p]["size"] for p in per_question], top_k=args.top_k)
  rows = [{"question": q, "features": p,
           "answers": [{"rank": r + 1, "answer": a, "probability": prob}
                       for r, (a, prob) in enumerate(ranked)]}
          for q, p, ranked in zip(questions, per_question, answers)]
  return {"model": os.fspath(args.model), "step": predictor.step, "predictions": rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (1, with one line on stderr, on bad input)."""
  outcome = command_line.run(PROG, _parser(), argv, _predict)
  if outcome is None:
    return 1
  args, result = outcome
  if args.json:
    print(json.dumps(result, indent=2, ensure_ascii=False))
  else:
    print(format_table(result["predictions"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
