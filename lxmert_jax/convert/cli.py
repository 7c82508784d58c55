"""Convert LXMERT checkpoints between transformers, the original code and ours.

    python -m lxmert_jax.convert hf-to-jax HF_DIR OUT_DIR
    python -m lxmert_jax.convert jax-to-hf CKPT_DIR OUT_DIR
    python -m lxmert_jax.convert original-to-jax Epoch20_LXRT.pth OUT_DIR
    python -m lxmert_jax.convert export RUN_DIR OUT_DIR [--step best]

`--answers FILE` (hf-to-jax, original-to-jax) stores the answer of each row of
the answer head as `answers.json` beside the parameters: a JSON list of
answers, or the original `all_ans.json` for a pre-trained model; fine-tuning
transfers the head by these strings, and prediction names its answers with
them. `export` writes a training run's best (or `--step`) checkpoint as an
lxmert_jax checkpoint directory, its answers included; `jax-to-hf` copies
`answers.json` along.

A checkpoint that cannot be read or does not fit its model is reported as one
line on stderr (exit status 1) rather than a traceback: the reader needs the
offending file and key, not our call stack. Nothing is written then.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import jax
import numpy as np

from lxmert_jax.convert import checkpoints
from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.convert.hf import from_pretrained_hf, save_pretrained_hf
from lxmert_jax.convert.original import from_original
from lxmert_jax.inference import saved_models

PROG = "python -m lxmert_jax.convert"
_COMMANDS = (
    ("hf-to-jax", "a transformers directory to an lxmert_jax checkpoint"),
    ("jax-to-hf", "an lxmert_jax checkpoint to a transformers directory"),
    ("original-to-jax", "an original .pth snapshot to an lxmert_jax checkpoint"),
    ("export", "a training run's checkpoint to an lxmert_jax checkpoint directory"),
)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for name, help_text in _COMMANDS:
    cmd = sub.add_parser(name, help=help_text)
    cmd.add_argument("source")
    cmd.add_argument("out_dir")
    if name == "original-to-jax":
      cmd.add_argument("--num-attention-heads", type=int, default=12)
    if name in ("hf-to-jax", "original-to-jax"):
      cmd.add_argument("--answers", help="the answer of each answer-head row: a JSON list "
                       "or the original all_ans.json")
    if name == "export":
      cmd.add_argument("--step", default="best", help="best, latest or a step number")
  return parser


def _convert(args: argparse.Namespace) -> str:
  """Runs one command; returns the line to print on success."""
  if args.command == "jax-to-hf":
    model, params = checkpoints.load_model(args.source)
    save_pretrained_hf(model.config, params, args.out_dir, checkpoints.architecture_name(model))
    answers = checkpoints.load_answers(args.source)
    if answers is not None:
      checkpoints.save_answers(args.out_dir, answers)
  else:
    checkpoints.check_output_directory(args.out_dir)
    answers = (checkpoints.read_answer_list(args.answers)
               if getattr(args, "answers", None) else None)
    if args.command == "hf-to-jax":
      model, params = from_pretrained_hf(args.source)
    elif args.command == "export":
      saved = saved_models.load_saved_model(args.source, args.step)
      model, params, answers = saved.model, saved.params, saved.answers
    else:
      model, params = from_original(args.source, args.num_attention_heads)
    checkpoints.save_model(args.out_dir, model, params, answers=answers)
  count = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
  return f"wrote {args.out_dir}: {type(model).__name__}, {count:,} parameters"


def main(argv: Optional[list[str]] = None) -> None:
  """The command line; exits with status 1 and a one-line error on bad input."""
  args = _parser().parse_args(argv)
  try:
    message = _convert(args)
  except (ConversionError, OSError, ValueError) as e:
    print(f"{PROG} {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(1)
  print(message)
