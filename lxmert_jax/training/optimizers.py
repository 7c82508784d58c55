"""Optimisers: the reference's BertAdam, and AdamW as an alternative.

BertAdam (spec §9.1) differs from `optax.adamw` in three ways that change the
training trajectory, so it is written out here rather than approximated:

* no bias correction of the moment estimates;
* `eps` is added to `sqrt(v)` (outside the square root) and is 1e-6;
* weight decay 0.01 is applied to every parameter (biases, LayerNorm and
  embeddings included), decoupled from the adaptive update.

The learning rate follows the reference's `warmup_linear` schedule, evaluated
with an update counter that starts at 0 (so the very first update has lr 0),
and gradients are clipped by global norm with PyTorch's `clip_grad_norm_`
formula before the update.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jax.Array], jax.Array]

# PyTorch's `clip_grad_norm_` adds this to the norm before dividing.
TORCH_CLIP_EPS = 1e-6


def warmup_linear(x: jax.Array, warmup: float) -> jax.Array:
  """The reference's `warmup_linear(x, warmup)` multiplier.

  Args:
    x: training progress, `step / t_total`.
    warmup: the warm-up fraction w (0.05 for pre-training).

  Returns:
    `x / w` while `x < w`, then `max((x - 1) / (w - 1), 0)`: a linear ramp to 1
    followed by a linear decay that reaches 0 at the last step.
  """
  x = jnp.asarray(x, jnp.float32)
  return jnp.where(x < warmup, x / warmup, jnp.maximum((x - 1.0) / (warmup - 1.0), 0.0))


def learning_rate_schedule(peak_lr: float, total_steps: int, warmup: float) -> Schedule:
  """`lr(step) = peak_lr * warmup_linear(step / total_steps, warmup)`."""
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  if not 0.0 < warmup < 1.0:
    raise ValueError(f"optimizer.warmup must be in (0, 1), got {warmup}")

  def schedule(step: jax.Array) -> jax.Array:
    return peak_lr * warmup_linear(jnp.asarray(step, jnp.float32) / total_steps, warmup)

  return schedule


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping with PyTorch's `clip_grad_norm_` arithmetic.

  Gradients are multiplied by `min(1, max_norm / (norm + 1e-6))`. This differs
  from `optax.clip_by_global_norm` (which divides by `norm` exactly) in the
  1e-6, which is what the reference's scripts ran.
  """

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(jax.tree.map(lambda g: g.astype(jnp.float32), updates))
    coef = jnp.minimum(1.0, max_norm / (norm + TORCH_CLIP_EPS))
    return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class ScaleByBertAdamState(NamedTuple):
  """First and second moment estimates (no step count: no bias correction)."""

  mu: Any
  nu: Any


def scale_by_bert_adam(b1: float = 0.9, b2: float = 0.999,
                       eps: float = 1e-6) -> optax.GradientTransformation:
  """`m / (sqrt(v) + eps)` with un-corrected moments, as BertAdam computes it.

  Moments are kept in float32 whatever the parameter dtype.
  """

  def init_fn(params):
    zeros = lambda p: jnp.zeros(p.shape, jnp.float32)
    return ScaleByBertAdamState(mu=jax.tree.map(zeros, params),
                                nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g.astype(jnp.float32),
                      state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g.astype(jnp.float32)),
                      state.nu, updates)
    out = jax.tree.map(lambda m, v, g: (m / (jnp.sqrt(v) + eps)).astype(g.dtype),
                       mu, nu, updates)
    return out, ScaleByBertAdamState(mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def bert_adam(schedule: Schedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
              weight_decay: float = 0.01) -> optax.GradientTransformation:
  """BertAdam: un-corrected Adam, decay on every parameter, scheduled lr.

  Per parameter: `θ ← θ - lr_t * (m / (sqrt(v) + eps) + weight_decay * θ)`.
  """
  return optax.chain(
      scale_by_bert_adam(b1, b2, eps),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(schedule),
  )


def decay_mask(params: Any) -> Any:
  """True for the parameters AdamW decays: all but biases and LayerNorm scales.

  Dense kernels and embedding tables are decayed; `bias` leaves and LayerNorm
  `scale` leaves are not (the usual BERT fine-tuning convention).
  """
  def decays(path, _):
    return getattr(path[-1], "key", None) not in ("bias", "scale")

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, Schedule]:
  """The optimiser described by `config.optimizer`, and its lr schedule.

  Args:
    config: an `optimizer` config block with `name` ('bert_adam' or 'adamw'),
      `lr`, `warmup`, `b1`, `b2`, `eps`, `weight_decay`, `clip_norm` (<= 0
      disables clipping).
    total_steps: the number of optimiser updates of the run (`t_total`).

  Returns:
    (gradient transformation including clipping, learning-rate schedule).
  """
  schedule = learning_rate_schedule(config.lr, total_steps, config.warmup)
  if config.name == "bert_adam":
    core = bert_adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                     weight_decay=config.weight_decay)
  elif config.name == "adamw":
    core = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                       weight_decay=config.weight_decay, mask=decay_mask)
  else:
    raise ValueError(f"optimizer.name {config.name!r}: expected 'bert_adam' or 'adamw'")
  if config.clip_norm > 0:
    core = optax.chain(clip_by_global_norm_torch(config.clip_norm), core)
  return core, schedule
