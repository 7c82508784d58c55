"""What the model command lines (`predict`, `attention_maps`) share: one-line errors, `--model`.

Both take a saved model the same way and report every bad input, argparse's
complaints included, as one line on stderr with exit status 1, so the
argument parser raises instead of printing usage and exiting with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence


class UsageError(Exception):
  """A command line argparse refuses; reported as one line like any bad input."""


class OneLineParser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are `UsageError`s."""

  def error(self, message: str):  # pylint: disable=useless-return
    raise UsageError(message)


def parser_from_docstring(prog: str, doc: str) -> argparse.ArgumentParser:
  """A parser described by a module docstring, with the model arguments added.

  The docstring's first paragraph is the description and the rest the epilog.
  """
  parts = doc.split("\n\n")
  parser = OneLineParser(prog=prog, description=parts[0], epilog="\n\n".join(parts[1:]),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True,
                      help="a run directory, an lxmert_jax checkpoint or a transformers "
                           "directory")
  parser.add_argument("--step", default="best",
                      help="a run directory's checkpoint: best (default), latest or a step")
  return parser


def run(prog: str, parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
        action: Callable[[argparse.Namespace], Any]) -> Optional[tuple[argparse.Namespace, Any]]:
  """Parses `argv` and runs `action(args)`; returns `(args, result)`.

  On bad input (a usage error, `ValueError` or `OSError`) prints one line
  `PROG: error: ...` on stderr and returns None.
  """
  try:
    args = parser.parse_args(argv)
    return args, action(args)
  except (UsageError, ValueError, OSError) as e:
    print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return None
