"""Command line: score a fine-tuned model on a split and write the benchmark's submission file.

    python -m lxmert_jax.evaluate --workdir=runs/vqa --split=minival
    python -m lxmert_jax.evaluate --workdir=runs/vqa --split=test --step=latest
    python -m lxmert_jax.evaluate --config=configs/gqa.py --config.data.dir=DATA \
        --checkpoint=ckpt/gqa_converted --split=testdev --out=results/gqa

With only `--workdir`, the run's own config (`run_config.json`) says the task
and data, and its best checkpoint is scored. `--checkpoint` scores another
model directory (ours or a transformers one) with `--config`. Writes
`OUT/metrics.json` and the submission file (VQA `vqa_<split>_submission.json`,
GQA `gqa_<split>_submission.json`, NLVR2 `nlvr2_<split>_predictions.csv`) to
`--out` (default WORKDIR/eval/<split>).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.evaluation import EvaluationError
from lxmert_jax.evaluation import checkpoint_eval
from lxmert_jax.inference import saved_models
from lxmert_jax.tasks.base import DataNotFoundError
from lxmert_jax.tasks.finetuning import NonFiniteScoresError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A fine-tuning run directory (its config and checkpoints).")
flags.DEFINE_string("checkpoint", None, "A model directory to score instead of the run's "
                    "checkpoint (a run, an lxmert_jax or a transformers directory).")
flags.DEFINE_string("step", "best", "Which checkpoint of a run: best, latest or a step.")
flags.DEFINE_string("split", None, "The split to predict (default: the config's eval split).")
flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/eval/SPLIT).")
config_flags.DEFINE_config_file("config", None, "Fine-tuning config (default: the run's own).",
                                lock_config=True)

_ERRORS = (checkpoint_eval.CheckpointMismatchError, ConversionError,
           DataNotFoundError, EvaluationError, FileNotFoundError, NonFiniteScoresError,
           ValueError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    summary = _run()
  except _ERRORS as e:
    print(f"python -m lxmert_jax.evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(1)
  metrics = summary["metrics"]
  print(f"{summary['task']} {summary['split']}: {summary['num_examples']} examples, "
        f"checkpoint {summary['checkpoint']}"
        + (f" (step {summary['step']})" if summary["step"] is not None else ""))
  for key in sorted(metrics):
    print(f"  {key:28s} {metrics[key]:.4f}")
  for warning in summary["warnings"]:
    print(f"  warning: {warning}")
  print(f"  submission: {summary.get('submission')}")


def _run() -> dict:
  if FLAGS.workdir is None and FLAGS.checkpoint is None:
    raise ValueError("pass --workdir (a fine-tuning run) or --checkpoint with --config")
  config = FLAGS.config
  if config is None:
    if FLAGS.workdir is None:
      raise ValueError("--checkpoint needs --config (the task and its data)")
    config = saved_models.load_run_config(FLAGS.workdir)
  split = FLAGS.split or config.data.eval_split
  base = FLAGS.workdir or FLAGS.checkpoint
  out = FLAGS.out or os.path.join(base, "eval", split.replace("+", "_"))
  return checkpoint_eval.evaluate_checkpoint(config, FLAGS.checkpoint or FLAGS.workdir, split,
                                             out, step=FLAGS.step, workdir=base)


if __name__ == "__main__":
  app.run(main)
