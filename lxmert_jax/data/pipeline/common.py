"""Pieces shared by the pre-training and downstream grain loaders.

* Per-host sharding defaults to `jax.process_index()/process_count()`.
* Training loaders shard with `drop_remainder` and drop the last partial
  batch; their batches carry exactly the model inputs and targets.
  Evaluation loaders instead pad the record list with masked copies up to a
  multiple of `batch_size * shard_count`, so every host runs the same number
  of full batches; a float `_mask` [B] marks the real examples and an int32
  `_index` [B] gives each one's record position (-1 for padding).
* Record randomness comes from grain's per-record generator, seeded from the
  loader seed and the record's global position, so batches do not depend on
  the number of workers and a restored iterator replays them exactly.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import grain
import numpy as np

MASK_KEY = "_mask"
INDEX_KEY = "_index"


def default_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  """`(index, count)` of this host, from JAX unless given."""
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} not in [0, shard_count={shard_count})")
  return shard_index, shard_count


class PaddedSource(grain.sources.RandomAccessDataSource):
  """A source extended to `length` with masked copies of its first record.

  Every element is a dict with `_mask` = 1.0 for real records, 0.0 for
  padding, and `_index` = the record's position in `source` (-1 for
  padding), which identifies an example's prediction on any host; a source of
  plain values is wrapped as `{"position": value}`.
  """

  def __init__(self, source: Any, length: int):
    if length < len(source):
      raise ValueError(f"padded length {length} < {len(source)} records")
    self.source = source
    self.length = length

  def __len__(self) -> int:
    return self.length

  def __repr__(self) -> str:
    return f"PaddedSource({self.source!r}, length={self.length})"

  def __getitem__(self, index: int) -> dict:
    real = index < len(self.source)
    value = self.source[index if real else 0]
    record = dict(value) if isinstance(value, dict) else {"position": value}
    record[MASK_KEY] = np.float32(1.0 if real else 0.0)
    record[INDEX_KEY] = np.int32(index if real else -1)
    return record


def make_loader(source: Any, operations: Sequence[Any], *, batch_size: int, seed: int,
                shuffle: bool, num_epochs: int | None, shard_index: int | None,
                shard_count: int | None, drop_remainder: bool, worker_count: int,
                read_threads: int | None = None, worker_buffer_size: int = 1,
                batch_fn: Any = None) -> grain.DataLoader:
  """A grain DataLoader: sample, per-record ops, batch, per-batch ops.

  Args:
    source: random-access records (dicts).
    operations: per-record transforms.
    batch_size: per-host batch size.
    seed: seeds shuffling and the per-record generators.
    shuffle: shuffle globally each epoch.
    num_epochs: None repeats forever.
    shard_index, shard_count: this host's shard (default from JAX).
    drop_remainder: training mode (see module docstring); False pads.
    worker_count: grain worker processes (0 = in this process).
    read_threads: grain read-ahead threads (default 0: none; use workers to
      scale).
    worker_buffer_size: batches buffered per worker.
    batch_fn: turns a list of examples into a batch (default: stack).

  Returns:
    The loader; `iter(loader)` supports `get_state()`/`set_state()`.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size}; expected > 0")
  shard_index, shard_count = default_shard(shard_index, shard_count)
  if not drop_remainder:
    chunk = batch_size * shard_count
    source = PaddedSource(source, -(-len(source) // chunk) * chunk)
  if len(source) < shard_count:
    raise ValueError(f"{len(source)} records cannot be split over {shard_count} shards")
  sampler = grain.samplers.IndexSampler(
      num_records=len(source),
      shard_options=grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=True),
      shuffle=shuffle, num_epochs=num_epochs, seed=seed)
  if worker_count > 0:
    # Grain's worker processes read absl flags; outside an absl app (a
    # notebook, pytest) nobody parsed them, so use their defaults.
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
  # The sources hand out positions or small records and the transforms do the
  # reading, so grain's read-ahead threads would only add bookkeeping.
  read_options = grain.ReadOptions(num_threads=read_threads or 0)
  ops = list(operations) + [
      grain.transforms.Batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=ops,
                          worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                          read_options=read_options)


def to_float32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
  """float16 -> float32 for finite values, several times faster than `astype`.

  numpy casts float16 with a scalar loop on many CPUs, which would dominate
  batch assembly at 36 x 2048 features. Instead the float16 bits are moved
  into float32 position and rescaled by 2**112 with vectorised integer and
  float ufuncs (exact for every finite float16, subnormals included); the
  sign is restored only if some value has its sign bit set, which RoI
  features (non-negative after the detector's ReLU) never do. Preparation
  refuses non-finite features, so infinities and NaNs never reach here.

  Args:
    x: float16 array.
    out: optional contiguous float32 array of the same shape.

  Returns:
    `out` (or a new array) holding `x` as float32.
  """
  bits = np.ascontiguousarray(x, dtype=np.float16).view(np.uint16)
  if out is None:
    out = np.empty(x.shape, np.float32)
  word = out.view(np.uint32)
  np.left_shift(bits, 13, out=word, dtype=np.uint32)
  np.bitwise_and(word, 0x0FFFE000, out=word)
  np.multiply(out, np.float32(2.0**112), out=out)
  if bits.size and bits.max() >= 0x8000:
    np.bitwise_or(word, np.left_shift(bits >> 15, 31, dtype=np.uint32), out=word)
  return out


class BufferPool:
  """Hands out feature batch arrays, reusing those nobody references any more.

  A fresh 36 x 2048 float32 batch array costs the kernel a page fault and a
  zero-fill per page (as much as converting the features into it). An array
  is reused only once its reference count shows that the pool alone holds it:
  a consumer that keeps a batch, a view of it, or hands it to a pending
  device transfer (which holds a reference) keeps it out of reuse.
  """

  def __init__(self, max_buffers: int = 8):
    self.max_buffers = max_buffers
    self.shared_memory = False
    self._buffers: list[np.ndarray] = []

  def enable_shared_memory_output(self) -> None:
    """In grain worker processes: allocate in shared memory instead.

    Grain then hands the batch to the main process without copying it
    through a pipe; each batch gets its own segment, so nothing is reused.
    """
    self.shared_memory = True

  def empty(self, shape: tuple[int, ...], dtype: np.dtype = np.float32) -> np.ndarray:
    if self.shared_memory:
      return grain.multiprocessing.SharedMemoryArray(shape, dtype=dtype)
    for buf in self._buffers:
      # Held only by the list (plus `buf` and getrefcount's argument): free.
      if buf.shape == shape and buf.dtype == dtype and sys.getrefcount(buf) <= 3:
        return buf
    buf = np.empty(shape, dtype)
    if len(self._buffers) >= self.max_buffers:
      self._buffers.pop(0)
    self._buffers.append(buf)
    return buf

  def __getstate__(self):
    return {"max_buffers": self.max_buffers, "shared_memory": self.shared_memory,
            "_buffers": []}


class StackWithFloat32:
  """Batches examples, writing float16 arrays straight into float32 batches.

  `float16_keys` name the per-example float16 arrays; each is converted into
  its slot of the float32 batch array without an intermediate float16 batch.
  Everything else is stacked.
  """

  def __init__(self, float16_keys: Sequence[str]):
    self.float16_keys = tuple(float16_keys)
    self.pool = BufferPool()

  def enable_shared_memory_output(self) -> None:
    """Called by grain when batches are produced in worker processes."""
    self.pool.enable_shared_memory_output()

  def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    first = examples[0]
    batch = {k: np.stack([e[k] for e in examples]) for k in first
             if k not in self.float16_keys}
    for key in self.float16_keys:
      out = self.pool.empty((len(examples),) + first[key].shape)
      for i, example in enumerate(examples):
        to_float32(example[key], out[i])
      batch[key] = out
    return batch
