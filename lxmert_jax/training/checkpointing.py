"""Training checkpoints: orbax CheckpointManager with the data position.

Each checkpoint step directory holds two items:
  state/      the TrainState (step, params, optimiser state, base rng), saved
              with orbax's StandardSave so every host writes its own shards
  data_iter/  the grain iterator state of each process (JSON)
and, when the save came with evaluation metrics, orbax's metrics file used to
keep the best checkpoint.

Saves are asynchronous: `save` returns once the arrays are copied off the
device, and files are written in the background. Orbax writes each step into a
temporary directory and renames it when complete, so a process killed during a
save leaves no directory that looks like a checkpoint; the next run resumes
from the last complete one.

Retention: the latest `keep` checkpoints, plus the best `keep_best` by the
configured metric among checkpoints saved with metrics.

The directory may be local or a bucket URI (gs://...): orbax reads and writes
through etils.epath and TensorStore, which both handle cloud paths. For gs://
epath needs gcsfs (or TensorFlow), and orbax needs google-cloud-storage: it
asks the bucket whether it has a hierarchical namespace when listing steps.
"""

from __future__ import annotations

import logging as std_logging
import signal
import threading
from typing import Any, Mapping, Optional

from absl import logging
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from lxmert_jax import paths

STATE = "state"
DATA_ITER = "data_iter"


class _NoMetricsWarningFilter(std_logging.Filter):
  """Drops orbax's warning for a save without metrics while tracking the best.

  Saves between evaluations have no metrics by design: the keep-latest policy
  covers them, and only evaluated saves compete for the best checkpoint.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


_NO_METRICS_FILTER = _NoMetricsWarningFilter()


class Checkpointer:
  """Saves and restores `(TrainState, data iterator)` pairs under a directory.

  Args:
    directory: where step directories live (created if missing); a local path
      (made absolute) or a URI such as gs://bucket/run/checkpoints.
    config: the `ckpt` config block: `every_steps`, `keep`, `keep_best`,
      `best_metric`, `best_mode` ('min' or 'max'), `async_save`.
  """

  def __init__(self, directory: paths.PathLike, config: ml_collections.ConfigDict):
    self.directory = paths.resolve(directory)
    if any(c in str(self.directory) for c in "[]"):
      # Orbax finds a finished save by glob-matching under this path: with
      # brackets it writes checkpoints that cannot be restored (found by test).
      raise ValueError(f"checkpoint directory {self.directory}: the path contains '[' or ']', "
                       "which orbax reads as a glob pattern; its checkpoints could not be "
                       "restored. Choose a work directory without brackets.")
    self.best_metric = config.best_metric
    policies: list[Any] = [ocp.checkpoint_managers.LatestN(config.keep)]
    if config.keep_best > 0:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=self._metric, reverse=config.best_mode == "min",
          n=config.keep_best, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(config.every_steps),
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        # `best_fn` makes the manager store the metrics passed to `save`.
        best_fn=self._metric, best_mode=config.best_mode,
        enable_async_checkpointing=config.async_save,
        cleanup_tmp_directories=True, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(STATE, DATA_ITER))
    std_logging.getLogger("absl").addFilter(_NO_METRICS_FILTER)  # Idempotent.

  def _metric(self, metrics: Mapping[str, float]) -> float:
    if self.best_metric not in metrics:
      raise KeyError(f"checkpoint metrics {sorted(metrics)} lack ckpt.best_metric "
                     f"{self.best_metric!r}")
    return float(metrics[self.best_metric])

  def latest_step(self) -> Optional[int]:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    """True at the step all processes agreed to stop on after a preemption notice.

    Needs the JAX preemption service (multi-process runs); False otherwise.
    """
    return self._manager.reached_preemption(step)

  def save(self, step: int, state: Any, data_iter: Any,
           metrics: Optional[Mapping[str, float]] = None, force: bool = False) -> bool:
    """Saves if the interval policy says so (always with `force`).

    Returns:
      Whether a save was started.
    """
    args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                 DATA_ITER: grain.checkpoint.CheckpointSave(data_iter)})
    metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    saved = self._manager.save(step, args=args, metrics=metrics, force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
    """Restores the state at `step` into the layout of `abstract_state`.

    Args:
      step: a step from `all_steps()`.
      abstract_state: ShapeDtypeStructs with shardings (the restore target).
      data_iter: the live data iterator; its position is set in place.

    Returns:
      The restored state, placed with the target's shardings.
    """
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(abstract_state),
        DATA_ITER: grain.checkpoint.CheckpointRestore(data_iter)}))
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return restored[STATE]

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class PreemptionFlag:
  """Turns SIGTERM into a flag the training loop checks at step boundaries.

  A preempted TPU VM or spot GPU instance gets SIGTERM shortly before it is
  reclaimed. Stopping mid-step would lose the step's work and could leave a
  half-written checkpoint, so the handler only records the request; the loop
  saves after the current step and returns normally.

  In multi-process runs JAX's preemption service (started by
  `jax.distributed.initialize`) catches the signal and agrees on a common
  stop step across hosts; `Checkpointer.reached_preemption` reports it, and
  no Python handler is installed so as not to replace the service's.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving at the next step boundary, then exiting",
                    signum)
    self._event.set()

  def is_set(self) -> bool:
    return self._event.is_set()

  def restore_handler(self) -> None:
    """Reinstates the SIGTERM handler that was active before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
