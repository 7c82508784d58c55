"""Command line entry point for training: pre-training and fine-tuning (VQA, GQA, NLVR2).

    python -m lxmert_jax.main --config=configs/pretrain.py:demo --workdir=runs/demo
    python -m lxmert_jax.main --config=configs/pretrain.py --workdir=runs/base \
        --config.data.dir=/data/lxmert --config.optimizer.lr=5e-5
    python -m lxmert_jax.main --config=configs/vqa.py --workdir=runs/vqa \
        --config.data.dir=/data/lxmert --config.init.path=runs/base

The logic lives in `lxmert_jax.training.trainer` (the loop) and
`lxmert_jax.tasks` (what `config.task` trains), so it can be imported and
tested; this
file only parses flags, starts multi-process JAX when asked to, and reports
the process/device layout.

Multi-host runs set LXMERT_JAX_DISTRIBUTED=1 on every process, which calls
`jax.distributed.initialize()` (coordinator, process count and id are
auto-detected on Cloud TPU, Slurm and Open MPI; elsewhere set JAX's
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`).
"""

import os
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lxmert_jax import paths
from lxmert_jax.convert.errors import ConversionError
from lxmert_jax.evaluation import EvaluationError
from lxmert_jax.tasks.base import DataNotFoundError
from lxmert_jax.tasks.finetuning import NonFiniteScoresError
from lxmert_jax.training import trainer

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots; "
                    "rerunning with the same directory resumes.")
config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/pretrain.py:demo.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

DISTRIBUTED_ENV = "LXMERT_JAX_DISTRIBUTED"


def _maybe_initialize_distributed() -> None:
  if os.environ.get(DISTRIBUTED_ENV, "0") not in ("1", "true", "True"):
    return
  if not jax.distributed.is_initialized():
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _maybe_initialize_distributed()
  if not FLAGS.logtostderr:
    # The console shows the progress bar and metrics; the full log (including
    # the libraries' INFO lines) goes to a file in the work directory, or, for
    # a bucket work directory, in a local temporary one (absl writes locally).
    workdir = paths.resolve(FLAGS.workdir)
    if paths.is_local(workdir):
      workdir.mkdir(parents=True, exist_ok=True)
      log_dir = os.fspath(workdir)
    else:
      log_dir = tempfile.mkdtemp(prefix="lxmert_jax_logs_")
      print(f"log file in {log_dir} (the work directory is not local)", file=sys.stderr)
    logging.get_absl_handler().use_absl_log_file("lxmert_jax", log_dir)
    if not FLAGS["stderrthreshold"].present:
      FLAGS.stderrthreshold = "warning"
  logging.info("JAX process %d of %d; %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (trainer.NonFiniteLossError, DataNotFoundError, ConversionError, EvaluationError,
          NonFiniteScoresError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a plain message for an unknown config field.

  The config is locked, so `--config.optimizr.lr=1` fails; ml_collections
  reports it as a KeyError (with a did-you-mean hint) from inside the parser.
  """
  overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
  try:
    return FLAGS(argv)
  except (KeyError, AttributeError) as e:
    detail = str(e).replace("\\n", " ").replace("\\'", "").strip("\"'")
    print(f"error: a --config override names a field the config does not have: {detail} "
          f"(overrides given: {overrides})", file=sys.stderr)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
