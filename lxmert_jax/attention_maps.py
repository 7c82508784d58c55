"""Command line: draw where a trained LXMERT looks when it reads a question about an image.

    python -m lxmert_jax.attention_maps --model runs/vqa --features cat.npz \\
        --question "what animal is this?" --out attention/
    python -m lxmert_jax.attention_maps --model ckpt/vqa --features cat.npz \\
        --question "what animal is this?" --image cat.jpg --word animal \\
        --layer 0 --head 3 --out attention/

Writes one PNG per figure into --out and prints their paths:
language_attention.png (language self-attention), visual_attention.png
(object-relationship self-attention), cross_language_to_vision.png and
cross_vision_to_language.png (both directions of the cross-attention) and
boxes.png (the image's boxes coloured by how much --word attends to each,
labelled by rank, over --image or a blank canvas of the image's size).

`--model` is a run directory (its best checkpoint unless `--step`), an
lxmert_jax checkpoint or a transformers directory, of any task: question
answering, pre-training or NLVR2 (the statement with one image of its pair).
`--features` is the per-image `.npz` bottom-up-attention.pytorch's
`extract_features.py` writes; the question and boxes are framed as the run's
data was. `--layer` indexes each kind's layers (-1, the last, by default);
`--head` is a head index or `mean` (the default). Bad input is one line on
stderr naming the file or argument at fault, with exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence, Union

from lxmert_jax.data.prepare import npz_features
from lxmert_jax.inference import command_line
from lxmert_jax.inference.command_line import UsageError
from lxmert_jax.inference import attention_maps
from lxmert_jax.inference import saved_models
from lxmert_jax.inference.predictor import InputEncoder

PROG = "python -m lxmert_jax.attention_maps"


def _parser() -> argparse.ArgumentParser:
  parser = command_line.parser_from_docstring(PROG, __doc__)
  parser.add_argument("--features", required=True, metavar="IMAGE.npz",
                      help="the image's features as extract_features.py writes them")
  parser.add_argument("--question", required=True, help="the question (or NLVR2 statement)")
  parser.add_argument("--image", metavar="IMAGE.jpg",
                      help="the picture (JPEG or PNG) to draw the boxes on; default a blank "
                           "canvas of the image's size")
  parser.add_argument("--layer", type=int, default=-1,
                      help="which layer of each kind (Python indexing; default -1, the last)")
  parser.add_argument("--head", default="mean",
                      help="a head index, or mean (default) for the mean over heads")
  parser.add_argument("--word", default="0",
                      help="the token whose attention colours the boxes: its position "
                           "(default 0, [CLS]) or a word piece")
  parser.add_argument("--dpi", type=int, default=100, help="PNG resolution (default 100)")
  parser.add_argument("--out", required=True, metavar="DIR",
                      help="where to write the PNG files (created if needed)")
  return parser


def _head(value: str) -> attention_maps.Head:
  if value == "mean":
    return value
  try:
    return int(value)
  except ValueError:
    raise UsageError(f"--head {value!r}: expected a head index or 'mean'") from None


def _word(value: str) -> Union[int, str]:
  return int(value) if value.lstrip("-").isdigit() else value


def write_attention_maps(args: argparse.Namespace) -> list[str]:
  """Loads the model and the image, draws every figure, writes them; their paths."""
  head = _head(args.head)
  if args.dpi < 10:
    raise UsageError(f"--dpi {args.dpi}: expected at least 10")
  img, _ = npz_features.read_npz(args.features)
  saved = saved_models.load_saved_model(args.model, args.step)
  dim = saved.model.config.visual_feat_dim
  if img.features.shape[1] != dim:
    raise UsageError(f"{args.features} [x]: features are {img.features.shape[1]} wide; the "
                      f"model {args.model} expects visual_feat_dim={dim}")
  encoder = InputEncoder.for_saved_model(saved)
  size = (img.img_h, img.img_w)
  inputs = encoder.model_inputs([args.question], [img.features], [img.boxes],
                                image_sizes=[size])
  maps = attention_maps.attention(saved.model, saved.params, inputs,
                                  tokenizer=encoder.tokenizer, image_size=size)
  figures = attention_maps.attention_figures(maps, layer=args.layer, head=head,
                                             word=_word(args.word), image=args.image)
  return attention_maps.save_figures(figures, args.out, dpi=args.dpi)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (1, with one line on stderr, on bad input)."""
  outcome = command_line.run(PROG, _parser(), argv, write_attention_maps)
  if outcome is None:
    return 1
  for path in outcome[1]:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
