"""Device mesh, logical-axis rules and the shardings of parameters and batches.

The mesh has three axes: `data` (pure data parallelism), `fsdp` (data
parallelism whose replicas also split the parameters and optimiser state) and
`tensor` (model parallelism inside attention and feed-forward blocks). The
model names every parameter dimension with a logical axis (`vocab`, `embed`,
`mlp`, `heads`, ...); the config's rules map those names to mesh axes, so one
model definition runs data-parallel, FSDP or tensor-parallel by changing the
config only.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over every data-parallel axis.
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, Any], ...]


def mesh_shape(mesh_config: ml_collections.ConfigDict | Mapping[str, int],
               num_devices: int) -> tuple[int, ...]:
  """Resolves the `data`/`fsdp`/`tensor` sizes, filling in at most one -1.

  Args:
    mesh_config: sizes keyed by axis name; one of them may be -1.
    num_devices: the number of devices the mesh must cover.

  Returns:
    The sizes in `MESH_AXES` order; their product is `num_devices`.
  """
  sizes = [int(mesh_config[name]) for name in MESH_AXES]
  auto = [i for i, s in enumerate(sizes) if s == -1]
  if len(auto) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: expected positive sizes "
                     "with at most one -1 (auto-fill)")
  fixed = math.prod(s for s in sizes if s != -1)
  if auto:
    if num_devices % fixed:
      raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: {num_devices} devices "
                       f"are not divisible by the fixed sizes' product {fixed}")
    sizes[auto[0]] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))} cover {math.prod(sizes)} "
                     f"devices, but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict | Mapping[str, int],
              devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A `data` x `fsdp` x `tensor` mesh over all (or the given) devices.

  Axes are `Auto`: GSPMD propagates shardings from the annotated parameters
  and batch through the step, which is what Linen's logical rules expect.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_rules(rules: Sequence[Sequence[Any]]) -> Rules:
  """Normalises config rules (lists from the config) into Flax's tuple form."""
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"sharding rule {rule!r}: expected (logical_name, mesh_axis)")
    name, axis = rule
    if isinstance(axis, (list, tuple)):
      axis = tuple(axis)
    axes = axis if isinstance(axis, tuple) else (axis,)
    unknown = [a for a in axes if a is not None and a not in MESH_AXES]
    if unknown:
      raise ValueError(f"sharding rule {rule!r}: mesh axes {unknown} are not in {MESH_AXES}")
    out.append((name, axis))
  return tuple(out)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  """Leading (batch) dimension split over `data` and `fsdp`; the rest replicated."""
  return jax.NamedSharding(mesh, jax.P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  return jax.NamedSharding(mesh, jax.P())


def _axes(entry: Any) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (None, a name or a tuple)."""
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _path_name(path: Sequence[Any]) -> str:
  """`cls/predictions/bias` for a tree path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _resolved(abstract_boxed: Any, rules: Rules
              ) -> tuple[list[tuple[str, tuple[int, ...], tuple[Any, ...], jax.P]], Any]:
  """(name, shape, logical names, mesh spec) of each leaf, and the treedef.

  The mesh specs are Flax's own mapping (`nn.logical_to_mesh_axes`) of each
  box's logical names; leaves without a box get P() (replicated).
  """
  logical = nn.get_partition_spec(abstract_boxed)
  shapes = nn.unbox(abstract_boxed)
  flat_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  flat_logical = treedef.flatten_up_to(logical)
  out = []
  for (path, leaf), names in zip(flat_shapes, flat_logical):
    names = tuple(names) if isinstance(names, jax.P) else ()
    out.append((_path_name(path), tuple(leaf.shape), names,
                nn.logical_to_mesh_axes(names, rules)))
  return out, treedef


def _indivisible(spec: jax.P, shape: tuple[int, ...], mesh: jax.sharding.Mesh
                 ) -> list[tuple[int, tuple[str, ...]]]:
  """(dimension, mesh axes) of each dimension its mesh axes do not divide."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  return [(i, _axes(entry)) for i, (dim, entry) in enumerate(zip(shape, entries))
          if _axes(entry) and dim % math.prod(mesh.shape[a] for a in _axes(entry))]


def _fit_to_shape(spec: jax.P, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> jax.P:
  """Drops mesh axes from the dimensions they do not divide.

  A rule such as vocab -> tensor cannot split BERT's 30,522 rows four ways;
  that dimension is replicated instead of failing (`unsplit_dimensions` lists
  them).
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  for i, _ in _indivisible(spec, shape, mesh):
    entries[i] = None
  return jax.P(*entries)


def _unsplit_line(name: str, dim: int, names: tuple[Any, ...], shape: tuple[int, ...],
                  axes: tuple[str, ...], mesh: jax.sharding.Mesh) -> str:
  logical = names[dim] if dim < len(names) else None
  split = " x ".join(f"{a}={mesh.shape[a]}" for a in axes)
  return (f"{name} dim {dim} ({logical}, {shape[dim]}) not divisible by {split}: "
          "replicated")


def logical_to_shardings(abstract_boxed: Any, mesh: jax.sharding.Mesh,
                         rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned`.

  Args:
    abstract_boxed: e.g. `jax.eval_shape(model.init, ...)["params"]`, boxes kept.
    mesh: the device mesh.
    rules: logical-name -> mesh-axis rules.

  Returns:
    A tree of `NamedSharding` with the structure of `nn.unbox(abstract_boxed)`:
    Flax's mapping of each leaf's logical names, except that a dimension its
    mesh axes do not divide is replicated (and logged); leaves without logical
    names are replicated.
  """
  leaves, treedef = _resolved(abstract_boxed, rules)
  out = []
  for name, shape, names, spec in leaves:
    for dim, axes in _indivisible(spec, shape, mesh):
      logging.info("sharding: %s", _unsplit_line(name, dim, names, shape, axes, mesh))
    out.append(jax.NamedSharding(mesh, _fit_to_shape(spec, shape, mesh)))
  return jax.tree_util.tree_unflatten(treedef, out)


def unsplit_dimensions(abstract_boxed: Any, mesh: jax.sharding.Mesh,
                       rules: Rules) -> list[str]:
  """The dimensions the rules would split but the mesh cannot, one line each.

  E.g. `cls/predictions/bias dim 0 (vocab, 30522) not divisible by tensor=8:
  replicated`. `logical_to_shardings` replicates these dimensions and only
  logs them; this list is for a run's start-up summary, where a layout that
  lost a split must be visible. Empty when every rule applies as written.

  Args:
    abstract_boxed: as for `logical_to_shardings`.
    mesh: the device mesh.
    rules: logical-name -> mesh-axis rules.
  """
  lines = []
  for name, shape, names, spec in _resolved(abstract_boxed, rules)[0]:
    lines.extend(_unsplit_line(name, dim, names, shape, axes, mesh)
                 for dim, axes in _indivisible(spec, shape, mesh))
  return lines


def global_batch(host_batch: Mapping[str, np.ndarray],
                 sharding: jax.NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global arrays.

  Every process passes its own rows (`per_host_batch = global / process_count`);
  the result is one array per key whose leading dimension is the global batch,
  split over the mesh's data axes.
  """
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in host_batch.items()}


def describe(mesh: jax.sharding.Mesh) -> str:
  """A one-line summary of the mesh for logs."""
  sizes = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
  return f"mesh({sizes}) over {mesh.devices.size} {mesh.devices.flat[0].platform} devices"
