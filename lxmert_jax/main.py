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

Multi-process runs start JAX's distributed runtime in one of two ways:

* `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on every
  process (all three or none), passed to `jax.distributed.initialize()` with
  cluster auto-detection off, so each process keeps all its local devices;
* LXMERT_JAX_DISTRIBUTED=1 on every process, which calls
  `jax.distributed.initialize()` with no arguments: coordinator, process count
  and id are auto-detected on Cloud TPU, Slurm and Open MPI (JAX reads no
  process count or id from variables of its own).

`launch/` has launchers for a GPU node, a Slurm cluster and a Cloud TPU slice.
"""

import os
import sys
import tempfile
from typing import Any, Optional

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
flags.DEFINE_string("coordinator_address", None, "Multi-process run: HOST:PORT of process 0's "
                    "coordinator service; give with --num_processes and --process_id.")
flags.DEFINE_integer("num_processes", None, "Multi-process run: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process run: this process's index, "
                     "0 to --num_processes - 1.")

DISTRIBUTED_ENV = "LXMERT_JAX_DISTRIBUTED"


def distributed_kwargs(coordinator_address: Optional[str], num_processes: Optional[int],
                       process_id: Optional[int],
                       distributed_env: Optional[str]) -> Optional[dict[str, Any]]:
  """The keyword arguments for `jax.distributed.initialize`, or None for one process.

  Args:
    coordinator_address: --coordinator_address (HOST:PORT) or None.
    num_processes: --num_processes or None.
    process_id: --process_id or None.
    distributed_env: the value of LXMERT_JAX_DISTRIBUTED, or None when unset.

  Returns:
    With all three flags, those flags and `cluster_detection_method="deactivate"`:
    JAX otherwise still auto-detects the local device ids under Slurm or Open
    MPI and gives each process one GPU, whatever the flags say. With none of
    them and LXMERT_JAX_DISTRIBUTED=1, `{}` (JAX auto-detects everything).
    Otherwise None.

  Raises:
    ValueError: some of the flags but not all, an address without a port, or
      a process id outside [0, num_processes); the message is one line.
  """
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  missing = [name for name, value in given.items() if value is None]
  if len(missing) == len(given):
    return {} if distributed_env in ("1", "true", "True") else None
  if missing:
    present = [name for name in given if name not in missing]
    raise ValueError(f"{' and '.join(present)} given without {' and '.join(missing)}: "
                     "a multi-process run needs all three flags (or none, for auto-detection)")
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator_address must be HOST:PORT (process 0's host), "
                     f"got {coordinator_address!r}")
  if num_processes < 1:
    raise ValueError(f"--num_processes must be at least 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id must be in [0, {num_processes}) for --num_processes="
                     f"{num_processes}, got {process_id}")
  return dict(coordinator_address=coordinator_address, num_processes=num_processes,
              process_id=process_id, cluster_detection_method="deactivate")


def _maybe_initialize_distributed() -> None:
  try:
    kwargs = distributed_kwargs(FLAGS.coordinator_address, FLAGS.num_processes,
                                FLAGS.process_id, os.environ.get(DISTRIBUTED_ENV))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if kwargs is not None and not jax.distributed.is_initialized():
    jax.distributed.initialize(**kwargs)


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
