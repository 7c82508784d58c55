"""The data shards a process reads: its own, or, in one process, those of N.

A run on N processes splits every split's records into N shards (grain's
`ShardOptions(i, N)`), and process i reads shard i in batches of
`batch_size / N`. `sharding.global_batch` puts each process's rows where its
devices sit on the batch axes; the mesh of `sharding.make_mesh` has process
0's devices first, then process 1's, ... (so on CPU hosts, checked by
tests/test_multihost.py), so the global batch of a step is the N shards'
batches of that step, concatenated in process order.

One process can read exactly those batches: with LXMERT_JAX_READ_AS_PROCESSES=N
in a one-process run, the loaders read all N shards and concatenate their
batches in that order. The run then trains on the global batches an
N-process run of the same config would (given as many devices in all), so
a multi-process run can be checked against one process
(tests/test_multihost.py), and a multi-host run's data order reproduced on
one machine. Checkpoints keep the N shards' positions, so such a run resumes
exactly, with the same variable set.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from lxmert_jax.tasks.demo_corpus import say

READ_AS_PROCESSES_ENV = "LXMERT_JAX_READ_AS_PROCESSES"


def shard_count() -> int:
  """Shards every split is cut into: the process count, or LXMERT_JAX_READ_AS_PROCESSES.

  Raises:
    ValueError: the variable is not a positive integer, or is set in a
      multi-process run (where each process reads its own shard).
  """
  value = os.environ.get(READ_AS_PROCESSES_ENV, "")
  if not value:
    return jax.process_count()
  if not value.isdigit() or int(value) < 1:
    raise ValueError(f"{READ_AS_PROCESSES_ENV}={value!r}: expected a positive integer")
  if jax.process_count() > 1:
    raise ValueError(f"{READ_AS_PROCESSES_ENV}={value} is for one-process runs; this run has "
                     f"{jax.process_count()} processes, each reading its own shard")
  return int(value)


def own_shards(count: int) -> list[int]:
  """The shards this process reads out of `count` (all of them when emulating)."""
  if count == jax.process_count():
    return [jax.process_index()]
  return list(range(count))


def announce(count: int) -> None:
  """Says, on process 0's console, that one process reads the data of `count`."""
  if count != jax.process_count():
    say(f"reading the data of {count} processes, their batches concatenated "
        f"({READ_AS_PROCESSES_ENV}={count})")


def checked_shard_count(batch_size: int) -> int:
  """`shard_count()` for a run of global `batch_size`, announced (`announce`).

  Raises:
    ValueError: as `shard_count`, or `batch_size` does not split into the shards.
  """
  count = shard_count()
  announce(count)
  if batch_size % count:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {count} processes")
  return count


def iterate(make_loader: Callable[[int, int], Iterable[Mapping[str, np.ndarray]]],
            count: int) -> Iterator[Mapping[str, np.ndarray]]:
  """This process's batches: `iter(make_loader(index, count))` of each shard it reads.

  Args:
    make_loader: `(shard_index, shard_count) -> loader` of `batch_size / count` rows.
    count: from `shard_count()`.

  Returns:
    The shard's iterator, or, reading several, a `ConcatenatedShards` of them.
  """
  shards = own_shards(count)
  if len(shards) == 1:
    return iter(make_loader(shards[0], count))
  return ConcatenatedShards([iter(make_loader(i, count)) for i in shards])


class ConcatenatedShards:
  """Each step's batches of several shard iterators, concatenated row-wise in order.

  Checkpointable like the grain iterators it wraps (`get_state`/`set_state`):
  the state is every shard's state.
  """

  def __init__(self, iterators: Sequence[Any]):
    self._iterators = list(iterators)

  def __iter__(self) -> ConcatenatedShards:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(it) for it in self._iterators]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def get_state(self) -> bytes:
    return json.dumps([it.get_state().decode() for it in self._iterators]).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state)
    if not isinstance(states, list) or len(states) != len(self._iterators):
      raise ValueError(f"the saved data position is not that of {len(self._iterators)} shards "
                       f"({READ_AS_PROCESSES_ENV} must be what it was when it was saved)")
    for it, shard_state in zip(self._iterators, states):
      it.set_state(shard_state.encode())
