"""The jitted training and evaluation steps, for any task.

The step is one `jax.jit` with explicit shardings: the state in its sharded
layout (donated, so parameters and moments are updated in place) and the
batch split over the mesh's data axes. Dropout keys are `fold_in(base, step)`
(and `fold_in(key, i)` for micro-batch i), so a resumed run is bit-identical
to an uninterrupted one.

Gradient accumulation: with k micro-batches the whole batch's loss counts
are taken first (`Task.loss_counts`, from the labels), every micro-batch's
loss divides its sums by them, and gradients and metrics are summed over a
`lax.scan`. The result is the whole batch's gradient, whatever the number of
masked words or answered questions in each micro-batch.

This module needs jax, flax and optax only (no data libraries), so that a
benchmark can time exactly this step on a bare accelerator image.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from lxmert_jax.tasks.base import Batch, Metrics, Task
from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.training import train_state as ts

Schedule = Callable[[jax.Array], jax.Array]
TrainStep = Callable[[ts.TrainState, Batch], tuple[ts.TrainState, Metrics]]


def split_microbatches(batch: Batch, num: int) -> Batch:
  """[B, ...] -> [num, B/num, ...] keeping each device's rows on that device.

  Micro-batch i takes rows i, i+num, i+2·num, ...; a contiguous split would
  move rows between devices because the batch is sharded by contiguous blocks.
  """
  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def accumulated_grads(task: Task, params: Any, batch: Batch, key: jax.Array, step: jax.Array,
                      grad_accum_steps: int) -> tuple[Any, Metrics]:
  """The whole batch's gradients and metrics, over `grad_accum_steps` micro-batches.

  Returns:
    (gradients in the parameters' dtype, metrics summed over micro-batches).
  """
  counts = task.loss_counts(batch)
  if grad_accum_steps == 1:
    return task.grads(params, batch, key, step, counts)

  micro = split_microbatches(batch, grad_accum_steps)
  first = jax.tree.map(lambda x: x[0], micro)
  grad_shapes, metric_shapes = jax.eval_shape(
      lambda: task.grads(params, first, key, step, counts))
  zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), tree)

  def body(carry, xs):
    grad_sum, metric_sum = carry
    i, b = xs
    grads, metrics = task.grads(params, b, jax.random.fold_in(key, i), step, counts)
    add = lambda total, x: total + x.astype(jnp.float32)
    return (jax.tree.map(add, grad_sum, grads), jax.tree.map(add, metric_sum, metrics)), None

  (grad_sum, metric_sum), _ = jax.lax.scan(
      body, (zeros(grad_shapes), zeros(metric_shapes)),
      (jnp.arange(grad_accum_steps), micro))
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grad_sum, params)
  return grads, metric_sum


def make_train_step(task: Task, tx: optax.GradientTransformation, schedule: Schedule,
                    state_shardings: ts.TrainState, mesh: jax.sharding.Mesh,
                    grad_accum_steps: int = 1, donate: bool = True) -> TrainStep:
  """The jitted `(state, batch) -> (state, metrics)` update.

  Args:
    task: supplies the loss and its gradients.
    tx: the optimiser (clipping included).
    schedule: its learning rate, reported as `lr`.
    state_shardings: the state's layout (`train_state.state_shardings`).
    mesh: the device mesh.
    grad_accum_steps: micro-batches per update.
    donate: reuse the old state's buffers for the new state.
  """
  def train_step(state: ts.TrainState, batch: Batch):
    batch = task.prepare_batch(batch)
    grads, metrics = accumulated_grads(task, state.params, batch, state.step_key(),
                                       state.step, grad_accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, **task.step_metrics(state.step), grad_norm=optax.tree.norm(grads),
                   lr=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.jit(train_step, donate_argnums=0 if donate else (),
                 in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)))


def make_eval_step(task: Task, state_shardings: ts.TrainState, mesh: jax.sharding.Mesh
                   ) -> Callable[[ts.TrainState, Batch], Metrics]:
  """The jitted `(state, batch) -> metrics` evaluation (no dropout)."""
  def eval_step(state: ts.TrainState, batch: Batch):
    batch = task.prepare_batch(batch)
    _, metrics = task.loss(state.params, batch, state.step_key(), state.step,
                           task.loss_counts(batch), deterministic=True)
    return dict(metrics, **task.step_metrics(state.step))

  return jax.jit(eval_step, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=sharding_lib.replicated(mesh))


def batch_shards(mesh: jax.sharding.Mesh) -> int:
  """How many blocks the batch is split into over the mesh's data axes."""
  return int(mesh.shape["data"] * mesh.shape["fsdp"])


def check_batch_layout(batch_size: int, mesh: jax.sharding.Mesh, grad_accum_steps: int,
                       process_count: int) -> None:
  """Raises ValueError when the global batch does not split as the run needs."""
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} "
                     "processes")
  shards = batch_shards(mesh)
  if batch_size % (shards * grad_accum_steps):
    raise ValueError(f"batch_size {batch_size} must be divisible by the {shards} "
                     f"data-parallel shards x grad_accum_steps {grad_accum_steps}")

