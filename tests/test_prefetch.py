"""The device prefetcher: same batches in order, reads ahead, exact checkpoint position."""

from __future__ import annotations

import time

import grain
import numpy as np
import pytest

from lxmert_jax.training.prefetch import DevicePrefetcher


def _loader(num_records: int = 40, batch_size: int = 4, seed: int = 3) -> grain.DataLoader:
  """A shuffled, batched grain loader over the integers 0..num_records-1."""
  sampler = grain.samplers.IndexSampler(
      num_records, shard_options=grain.sharding.NoSharding(), shuffle=True, num_epochs=1,
      seed=seed)
  return grain.DataLoader(data_source=list(range(num_records)), sampler=sampler,
                          operations=[grain.transforms.Batch(batch_size)], worker_count=0)


def _place(batch: np.ndarray) -> np.ndarray:
  return np.asarray(batch) * 10  # Stands in for the copy to the devices.


def _values(batches) -> list[list[int]]:
  return [np.asarray(b).tolist() for b in batches]


@pytest.mark.parametrize("size", [0, 1, 3])
def test_yields_the_sources_batches_in_order_then_stops(size):
  expected = _values(_place(b) for b in iter(_loader()))
  prefetcher = DevicePrefetcher(iter(_loader()), _place, size=size)
  assert _values(prefetcher) == expected and len(expected) == 10
  with pytest.raises(StopIteration):
    next(prefetcher)
  prefetcher.close()


@pytest.mark.parametrize("size", [0, 2])
def test_state_is_the_position_after_the_batches_handed_out(size):
  expected = _values(_place(b) for b in iter(_loader()))
  prefetcher = DevicePrefetcher(iter(_loader()), _place, size=size)
  first = _values(next(prefetcher) for _ in range(3))
  time.sleep(0.2)  # Let the thread read ahead, as it would during a step.
  state = prefetcher.get_state()
  prefetcher.close()
  resumed = DevicePrefetcher(iter(_loader()), _place, size=size)
  resumed.set_state(state)
  resumed.start_prefetch()
  assert first + _values(resumed) == expected


def test_set_state_drops_the_batches_read_ahead():
  expected = _values(_place(b) for b in iter(_loader()))
  prefetcher = DevicePrefetcher(iter(_loader()), _place, size=2)
  start = prefetcher.get_state()
  assert _values(next(prefetcher) for _ in range(4)) == expected[:4]
  prefetcher.set_state(start)
  assert _values(prefetcher) == expected


class _CountingSource:
  """Integers, with a count of how many were read; fails at `fail_at` if set."""

  def __init__(self, fail_at: int = -1):
    self.reads = 0
    self.fail_at = fail_at

  def __iter__(self):
    return self

  def __next__(self) -> int:
    if self.reads == self.fail_at:
      raise ValueError(f"bad record {self.reads}")
    self.reads += 1
    return self.reads - 1

  def get_state(self) -> bytes:
    return str(self.reads).encode()

  def set_state(self, state: bytes) -> None:
    self.reads = int(state)


def test_reads_ahead_while_the_consumer_holds_a_batch():
  source = _CountingSource()
  prefetcher = DevicePrefetcher(source, lambda x: x, size=2)
  assert next(prefetcher) == 0
  deadline = time.monotonic() + 10
  while source.reads < 4 and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.1)
  # Batch 0 handed out, batches 1 and 2 ready in the buffer, batch 3 read and
  # waiting for room; no further: the state still says one batch was consumed.
  assert source.reads == 4
  assert prefetcher.get_state() == b"1"
  prefetcher.close()


def test_a_source_error_reaches_the_consumer_after_the_good_batches():
  prefetcher = DevicePrefetcher(_CountingSource(fail_at=3), lambda x: x, size=2)
  assert [next(prefetcher) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(ValueError, match="bad record 3"):
    next(prefetcher)
  with pytest.raises(ValueError, match="bad record 3"):
    next(prefetcher)
  prefetcher.close()


def test_negative_size_is_refused():
  with pytest.raises(ValueError, match="prefetch size must be >= 0"):
    DevicePrefetcher(_CountingSource(), lambda x: x, size=-1)
