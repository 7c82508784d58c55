"""The training loop shared by every task: `train_and_evaluate`.

The loop reads metrics one step late (the host fetches step s-1's metrics
after dispatching step s), so the device queue never drains for logging.
Before every save the pending metrics are checked: a non-finite loss stops the
run before its state can be written, leaving the last good checkpoint.

Nothing here is specific to a task: the task (`lxmert_jax.tasks`) supplies
the model, the loss, the data and the evaluation; this module owns the
mesh, the sharded state, the step, checkpoints, preemption and logging.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lxmert_jax import paths, tasks
from lxmert_jax.convert import checkpoints
from lxmert_jax.inference import saved_models
from lxmert_jax.tasks.base import Task
from lxmert_jax.training import checkpointing, init_weights, metric_sums, optimizers, prefetch
from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.training import step as step_lib
from lxmert_jax.training import train_state as ts
from lxmert_jax.training.metrics_writer import MetricsWriter, Throughput


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or Inf; the run stopped without saving it."""


class _LoopLogger:
  """Accumulates host metrics between logs and checks each step for NaN/Inf."""

  def __init__(self, task: Task, writer: MetricsWriter, log_every: int, global_batch: int,
               total_steps: int):
    self.task, self.writer, self.log_every = task, writer, log_every
    self.global_batch, self.total_steps = global_batch, total_steps
    self.sums: dict[str, float] = {}
    self.num = 0
    self.throughput = Throughput()
    self.first: dict[str, float] = {}
    self.last: dict[str, float] = {}

  def add(self, step: int, device_metrics: Any) -> None:
    """Takes the metrics of the update that produced state `step`.

    Raises:
      NonFiniteLossError: the update's loss or gradient norm is NaN/Inf, so
        the state it produced must not be saved.
    """
    host = jax.device_get(device_metrics)
    for key in ("loss", "grad_norm"):
      value = float(host[key])
      if not np.isfinite(value):
        raise NonFiniteLossError(f"non-finite training {key} ({value}) at step {step - 1}")
    metric_sums.add_to(self.sums, host)
    self.num += 1
    if step % self.log_every == 0 or step == self.total_steps:
      self.flush(step)

  def flush(self, step: int) -> None:
    if not self.num:
      return
    summary = metric_sums.summarize(self.sums, self.num)
    rate = self.throughput.rate(self.num * self.global_batch)
    row = {f"train/{k}": v for k, v in summary.items()}
    row["train/examples_per_sec"] = rate
    self.writer.write_scalars(step, row)
    self.writer.progress(step, {"loss": summary["loss"], "ex/s": f"{rate:.0f}"})
    self.writer.log(f"step {step} train: {self.task.format_metrics(row, 'train')} | "
                    f"{rate:.0f} examples/s")
    self.first = self.first or row
    self.last = row
    self.sums, self.num = {}, 0


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`num_train_steps` when set, else `num_epochs` passes over the data."""
  return (config.num_train_steps if config.num_train_steps > 0
          else config.num_epochs * steps_per_epoch)


def eval_interval(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Steps between evaluations: `eval_every_epochs` epochs when set, else `eval_every_steps`."""
  epochs = config.get("eval_every_epochs", 0)
  return epochs * steps_per_epoch if epochs > 0 else config.eval_every_steps


def _restore_or_init(config: ml_collections.ConfigDict, ckpt: checkpointing.Checkpointer,
                     task: Task, tx: Any, abstract: ts.TrainState, shardings: ts.TrainState,
                     rules: sharding_lib.Rules, train_iter: Any
                     ) -> tuple[ts.TrainState, Optional[init_weights.InitReport]]:
  """The latest checkpoint of the work directory, else a new state per `config.init`."""
  latest = ckpt.latest_step()
  if latest is not None:
    return ckpt.restore(latest, ts.with_shardings(abstract, shardings), train_iter), None
  params, report = init_weights.initial_params(config.init, task.model, task.model_config,
                                               ts.seed_keys(config.seed)[0],
                                               answers=task.answers)
  return ts.create_train_state(task.model, tx, shardings, config.seed,
                               params, rules=rules), report


def _write_run_files(config: ml_collections.ConfigDict, workdir: Any, task: Task) -> None:
  """What the run directory needs to be loaded later without the command line.

  `model_config.json` (the model), `run_config.json` (the run's config: its
  data, and the metric that picks the best checkpoint) and, for a model with
  an answer head, `answers.json` (the answer of each row).
  """
  task.model_config.to_json_file(workdir / saved_models.MODEL_CONFIG_FILE,
                                 architectures=[type(task.model).__name__])
  paths.write_bytes(workdir / saved_models.RUN_CONFIG_FILE,
                    config.to_json_best_effort(indent=2, sort_keys=True).encode())
  if task.answers is not None:
    paths.write_bytes(workdir / checkpoints.ANSWERS_FILE,
                      json.dumps(list(task.answers), ensure_ascii=False).encode())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       task: Optional[Task] = None) -> dict[str, float]:
  """Trains `config.task` as `config` says, checkpointing under `workdir`.

  Restarting with the same `workdir` resumes from the latest complete
  checkpoint (state, rng and data position). SIGTERM, or reaching
  `config.steps_per_run` updates in this invocation, saves at the next step
  boundary and returns normally.

  Args:
    config: the run config (see `configs/`).
    workdir: checkpoints, metrics and plots go here: a local directory or a
      bucket URI such as gs://bucket/run (`lxmert_jax.paths`).
    task: the task to train; by default built from `config.task`.

  Returns:
    The last logged training metrics and the last evaluation metrics.

  Raises:
    NonFiniteLossError: the loss became NaN/Inf (nothing is saved after it).
    tasks.base.DataNotFoundError: the task's data is missing or unprepared.
  """
  workdir = paths.resolve(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.logical_rules(config.sharding_rules)
  task = task or tasks.build(config, os.fspath(workdir), mesh)
  step_lib.check_batch_layout(config.batch_size, mesh, config.grad_accum_steps,
                              jax.process_count())

  steps_per_epoch = task.steps_per_epoch
  num_steps = total_steps(config, steps_per_epoch)
  tx, schedule = optimizers.make_optimizer(config.optimizer, num_steps)
  abstract, shardings = ts.state_shardings(task.model, tx, mesh, rules)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", config.ckpt)
  batch_sh = sharding_lib.batch_sharding(mesh)
  place = lambda b: sharding_lib.global_batch(b, batch_sh)
  # Checkpoints save this iterator's position: the batches handed to the loop.
  train_iter = prefetch.DevicePrefetcher(task.train_iterator(), place,
                                         size=config.data.device_prefetch)
  state, init_report = _restore_or_init(config, ckpt, task, tx, abstract, shardings, rules,
                                        train_iter)
  start = int(jax.device_get(state.step))
  if jax.process_index() == 0:
    _write_run_files(config, workdir, task)

  train_step = step_lib.make_train_step(task, tx, schedule, shardings, mesh,
                                        config.grad_accum_steps)
  eval_step = step_lib.make_eval_step(task, shardings, mesh)
  writer = MetricsWriter(workdir, num_steps, start, progress_bar=config.progress_bar)
  writer.log(f"{task.name}: {sharding_lib.describe(mesh)}; global batch {config.batch_size}; "
             f"model {ts.count_params(state.params):,} parameters; {num_steps} steps "
             f"({steps_per_epoch} per epoch), starting at step {start}")
  if task.describe():
    writer.log(task.describe())
  if init_report is not None:
    writer.log(init_report.summary())
  every_eval = eval_interval(config, steps_per_epoch)
  unsplit = sharding_lib.unsplit_dimensions(
      ts.boxed_param_shapes(task.model), mesh, rules)
  if unsplit:
    writer.log(f"sharding: {len(unsplit)} parameter dimension(s) the mesh cannot split are "
               "replicated:\n" + "\n".join(f"  {line}" for line in unsplit))
  logger = _LoopLogger(task, writer, config.log_every_steps, config.batch_size, num_steps)
  preempt = checkpointing.PreemptionFlag()
  eval_metrics: dict[str, float] = {}
  t0 = time.time()
  step = start
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      pending = None
      while step < num_steps:
        state, metrics = train_step(state, next(train_iter))
        step += 1
        # Read the previous step's metrics while this one runs.
        if pending is not None:
          logger.add(*pending)
        pending = (step, metrics)
        stop = (preempt.is_set() or ckpt.reached_preemption(step)
                or 0 < config.steps_per_run <= step - start)
        last = step == num_steps
        do_eval = last or (every_eval > 0 and step % every_eval == 0)
        if stop or do_eval or ckpt.should_save(step):
          logger.add(*pending)  # Never save a state that has not been checked.
          pending = None
          if do_eval:
            eval_metrics = task.evaluate(eval_step, state, place)
            writer.write_scalars(step, eval_metrics)
            writer.log(f"step {step} eval:  {task.format_metrics(eval_metrics, 'eval')}")
            writer.flush()
          # Evaluated states are saved too, as candidates for the best checkpoint.
          ckpt.save(step, state, train_iter, metrics=(eval_metrics or None) if do_eval else None,
                    force=stop or do_eval)
        if stop:
          logger.flush(step)
          writer.log(f"stopping at step {step} of {num_steps}; checkpoint saved, rerun "
                     "with the same workdir to resume")
          break
    summary = task.final_summary(logger.first, logger.last, eval_metrics)
    ckpt.wait_until_finished()
    best = ckpt.best_step()
    if best is not None and config.ckpt.keep_best > 0:
      summary.append(f"best checkpoint: step {best} by {config.ckpt.best_metric} "
                     f"({config.ckpt.best_mode})")
    writer.log(f"done: step {step}/{num_steps} in {time.time() - t0:.1f}s\n"
               + "".join(f"  {line}\n" for line in summary)
               + f"  files: {workdir}/metrics.jsonl, {workdir}/tensorboard, "
               f"{workdir}/loss_curves.png, {workdir}/checkpoints")
  except NonFiniteLossError as e:
    ckpt.wait_until_finished()
    last_good = ckpt.latest_step()
    raise NonFiniteLossError(
        f"{e}; stopping. Last good checkpoint: "
        f"{'none' if last_good is None else f'step {last_good}'} in {ckpt.directory}") from e
  finally:
    train_iter.close()
    ckpt.close()
    preempt.restore_handler()
    writer.close()
  return {**logger.last, **eval_metrics}
