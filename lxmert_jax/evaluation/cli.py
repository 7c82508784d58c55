"""Score a prediction file with a benchmark's official metrics.

    python -m lxmert_jax.evaluation vqa --results R.json \\
        --annotations v2_mscoco_val2014_annotations.json \\
        [--questions v2_OpenEnded_mscoco_val2014_questions.json] [--out metrics.json]
    python -m lxmert_jax.evaluation gqa --predictions P.json \\
        --questions testdev_balanced_questions.json \\
        [--choices testdev_balanced_choices.json] [--consistency] [--out metrics.json]
    python -m lxmert_jax.evaluation nlvr2 --predictions P.csv --examples dev.json \\
        [--out metrics.json]

This is how a result file is checked against the annotations of a split that
has them, with the figures the official evaluators report (see the `vqa`,
`gqa` and `nlvr2` modules): the headline numbers are printed as a short
table, and `--out` writes every figure as JSON (`{"task", "inputs",
"metrics"}`). A file that cannot be scored (a missing prediction, a malformed
entry) is reported as one line on stderr naming the file and the id or key at
fault, with exit status 1; a traceback would only show our call stack.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Callable, Optional, Sequence

from lxmert_jax.evaluation.common import EvaluationError, write_text_atomically
from lxmert_jax.evaluation.gqa import GQAScores, evaluate_gqa_files
from lxmert_jax.evaluation.nlvr2 import evaluate_nlvr2_files
from lxmert_jax.evaluation.vqa import evaluate_vqa_files

PROG = "python -m lxmert_jax.evaluation"
# The VQA answer types in the order papers list them; others follow as found.
_VQA_ANSWER_TYPES = ("yes/no", "number", "other")

Rows = list[tuple[str, str]]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n")[1])
  tasks = parser.add_subparsers(dest="task", required=True)

  vqa = tasks.add_parser("vqa", help="VQA accuracy, as vqaEval.py")
  vqa.add_argument("--results", required=True,
                   help='results file: [{"question_id": int, "answer": str}]')
  vqa.add_argument("--annotations", required=True,
                   help="official annotation file, e.g. v2_mscoco_val2014_annotations.json")
  vqa.add_argument("--questions",
                   help="official question file; every annotated question must be in it")
  vqa.add_argument("--precision", type=int, default=2,
                   help="decimal places of the percentages (default: 2, as the evaluator)")

  gqa = tasks.add_parser("gqa", help="GQA accuracy, validity, plausibility, ..., as eval.py")
  gqa.add_argument("--predictions", required=True,
                   help='predictions file: [{"questionId": str, "prediction": str}]')
  gqa.add_argument("--questions", required=True,
                   help="official questions file (or its chunk directory), e.g. "
                        "testdev_balanced_questions.json")
  gqa.add_argument("--choices",
                   help="official choices file, for validity and plausibility")
  gqa.add_argument("--consistency", action="store_true",
                   help="also score consistency over the entailed questions (an "
                        "all-questions file, with a prediction for each question)")

  nlvr2 = tasks.add_parser("nlvr2", help="NLVR2 accuracy and consistency, as metrics.py")
  nlvr2.add_argument("--predictions", required=True,
                     help="predictions CSV: identifier,True|False lines")
  nlvr2.add_argument("--examples", required=True,
                     help="labelled examples: the official JSON lines (dev.json) or "
                          "LXMERT's JSON array")

  for task in (vqa, gqa, nlvr2):
    task.add_argument("--out", help="write every figure to this JSON file")
  return parser


def _percent(value: float) -> str:
  return f"{value:.2f}"


def _vqa(args: argparse.Namespace) -> tuple[str, Rows, dict[str, Any], dict[str, Any]]:
  scores = evaluate_vqa_files(args.results, args.annotations, args.questions,
                              precision=args.precision)
  types = [t for t in _VQA_ANSWER_TYPES if t in scores.per_answer_type]
  types += [t for t in scores.per_answer_type if t not in types]
  rows = [("overall", _percent(scores.overall))]
  rows += [(t, _percent(scores.per_answer_type[t])) for t in types]
  metrics = dataclasses.asdict(scores)
  metrics["per_question"] = {str(k): v for k, v in scores.per_question.items()}
  inputs = {"results": args.results, "annotations": args.annotations,
            "questions": args.questions}
  return f"{args.results}: {scores.num_questions} questions", rows, metrics, inputs


def _breakdown(values: dict[Any, tuple[float, int]]) -> dict[str, dict[str, Any]]:
  keys = sorted(values) if all(isinstance(k, int) for k in values) else list(values)
  return {str(k): {"accuracy": values[k][0], "questions": values[k][1]} for k in keys}


def _gqa_metrics(scores: GQAScores) -> dict[str, Any]:
  metrics = dataclasses.asdict(scores)
  for name in ("per_structural_type", "per_semantic_type", "per_steps", "per_length"):
    metrics[name] = _breakdown(getattr(scores, name))
  return metrics


def _gqa(args: argparse.Namespace) -> tuple[str, Rows, dict[str, Any], dict[str, Any]]:
  scores = evaluate_gqa_files(args.predictions, args.questions, choices_path=args.choices,
                              consistency=args.consistency)
  rows = [(name, _percent(getattr(scores, name)))
          for name in ("accuracy", "binary", "open", "validity", "plausibility", "consistency")
          if getattr(scores, name) is not None]
  if scores.distribution is not None:
    rows.append(("distribution (lower is better)", f"{scores.distribution:.2f}"))
  inputs = {"predictions": args.predictions, "questions": args.questions,
            "choices": args.choices, "consistency": args.consistency}
  header = f"{args.predictions}: {scores.num_questions} balanced questions"
  return header, rows, _gqa_metrics(scores), inputs


def _nlvr2(args: argparse.Namespace) -> tuple[str, Rows, dict[str, Any], dict[str, Any]]:
  scores = evaluate_nlvr2_files(args.predictions, args.examples)
  rows = [("accuracy", f"{scores.accuracy:.4f}"), ("consistency", f"{scores.consistency:.4f}")]
  inputs = {"predictions": args.predictions, "examples": args.examples}
  header = (f"{args.predictions}: {scores.num_examples} examples, "
            f"{scores.num_sentences} sentences")
  return header, rows, dataclasses.asdict(scores), inputs


_TASKS: dict[str, Callable[[argparse.Namespace],
                           tuple[str, Rows, dict[str, Any], dict[str, Any]]]] = {
    "vqa": _vqa, "gqa": _gqa, "nlvr2": _nlvr2}


def format_table(rows: Sequence[tuple[str, str]]) -> str:
  """Names left-aligned, values right-aligned, one row a line."""
  name_width = max(len(name) for name, _ in rows)
  value_width = max(len(value) for _, value in rows)
  return "\n".join(f"  {name:<{name_width}}  {value:>{value_width}}" for name, value in rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (1, with one line on stderr, on bad input)."""
  args = _parser().parse_args(argv)
  try:
    header, rows, metrics, inputs = _TASKS[args.task](args)
    if args.out:
      report = {"task": args.task, "inputs": inputs, "metrics": metrics}
      write_text_atomically(args.out, json.dumps(report, indent=2) + "\n")
  except (EvaluationError, OSError, UnicodeDecodeError) as e:
    message = str(e)
    if isinstance(e, UnicodeDecodeError):
      message = f"an input file is not UTF-8 text: {e}"
    print(f"{PROG} {args.task}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1
  print(f"{args.task} {header}")
  print(format_table(rows))
  if args.out:
    print(f"wrote {args.out}")
  return 0
