"""The training state and its creation directly in its sharded layout.

Parameters and optimiser moments are never materialised on one device: the
initialiser runs under `jax.jit` with the state's shardings as
`out_shardings`, inside the mesh and the logical-axis rules (when there are
any), so each device computes only its own shards. That is what makes models larger than one
device's memory start at all.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lxmert_jax.training import sharding as sharding_lib
from lxmert_jax.model.task_models import init_inputs


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data position.

  Attributes:
    step: int32 scalar, the number of optimiser updates done so far.
    params: the model parameters (plain arrays, no partitioning boxes).
    opt_state: the optimiser state.
    rng: uint32 key data of the run's base key; step s uses
      `fold_in(base, s)`, so a resumed run draws the same dropout masks.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array

  def step_key(self) -> jax.Array:
    """The dropout key of the current step."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def boxed_param_shapes(model: nn.Module) -> Any:
  """Abstract parameters with their logical-partitioning boxes."""
  inputs = init_inputs(model)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))["params"]


def state_shardings(model: nn.Module, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, rules: sharding_lib.Rules
                    ) -> tuple[TrainState, TrainState]:
  """The abstract state and the NamedSharding of each of its leaves.

  Optimiser moments are sharded like the parameters they track (found with
  `optax.tree_map_params`); counters and the rng are replicated.

  Returns:
    (abstract TrainState of ShapeDtypeStructs, TrainState of NamedShardings).
  """
  boxed = boxed_param_shapes(model)
  param_sh = sharding_lib.logical_to_shardings(boxed, mesh, rules)
  params = nn.unbox(boxed)
  opt_state = jax.eval_shape(tx.init, params)
  replicated = sharding_lib.replicated(mesh)

  def param_like(leaf, sh):
    return leaf if isinstance(leaf, optax.MaskedNode) else sh

  opt_sh = optax.tree_map_params(
      tx, param_like, opt_state, param_sh, transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  key_shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=opt_state, rng=key_shape)
  shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)
  return abstract, shardings


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the restore target for orbax."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(parameter-init key, the run's base dropout key) derived from the seed."""
  init_key, run_key = jax.random.split(jax.random.key(seed))
  return init_key, run_key


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       shardings: TrainState, seed: int, params: Optional[Any] = None, *,
                       rules: Optional[sharding_lib.Rules] = None) -> TrainState:
  """Initialises the state directly in its sharded layout.

  Args:
    model: the task model.
    tx: the optimiser.
    shardings: from `state_shardings`.
    seed: seeds both the parameter init and the run's base rng.
    params: parameters to start from instead of the model's own init (e.g.
      from `init_weights`); placed with the parameter shardings.
    rules: the logical-axis rules; by default those in effect
      (`nn.logical_axis_rules`), if any.

  Returns:
    A `TrainState` at step 0.

  The model initialises under the shardings' mesh and the rules, so Flax
  constrains each parameter to its rules' layout as it is created; the
  `out_shardings` then place every leaf as `shardings` says (which replicates
  the dimensions the mesh cannot split). It may be called inside or outside
  `jax.set_mesh`.
  """
  init_key, run_key = seed_keys(seed)
  run_rng = jax.random.key_data(run_key)
  if rules is None:
    rules = nn.get_logical_axis_rules()

  def new_state(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                      rng=run_rng)

  with jax.set_mesh(shardings.step.mesh), nn.logical_axis_rules(rules):
    if params is None:
      inputs = init_inputs(model)

      def init() -> TrainState:
        boxed = model.init(init_key, **inputs)["params"]
        return new_state(nn.unbox(boxed))

      return jax.jit(init, out_shardings=shardings)()
    params = jax.device_put(params, shardings.params)
    return jax.jit(new_state, out_shardings=shardings)(params)


def count_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
