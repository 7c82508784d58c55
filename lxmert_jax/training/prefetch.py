"""Reading and placing the next batches on the devices while the current step runs.

A training step is dispatched asynchronously, so the host is free while the
device computes; this iterator uses that time. A background thread takes
host batches from the data loader and starts their transfer to the devices
(`place`, e.g. `sharding.global_batch`), keeping up to `size` of them ready.
The step then finds its batch already on the devices, and the data loader's
work and the host-to-device copy overlap with compute instead of adding to it.

The loader's position must stay exact for checkpoints: grain's orbax handler
saves an iterator through `get_state()` / `set_state()`, and this one reports
the position after the last batch it handed out, not after the last one its
thread read, so a restored run neither skips nor repeats the batches that
were still in the buffer.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Optional

# Seconds between checks of the stop flag while the buffer is full.
_POLL_S = 0.05


class _End:
  """Marks the end of the source in the buffer."""


class _Failure:
  """Carries an exception from the reading thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


class DevicePrefetcher:
  """An iterator over `place(batch)` for the source's batches, `size` ahead.

  Args:
    source: an iterator of host batches with grain's `get_state()` /
      `set_state()` (e.g. a `grain.DataLoaderIterator`).
    place: puts a host batch on the devices; called on the reading thread.
    size: batches to keep ready. 0 reads and places each batch on the
      caller's thread when it is asked for (no overlap).
  """

  def __init__(self, source: Any, place: Callable[[Any], Any], size: int = 2):
    if size < 0:
      raise ValueError(f"prefetch size must be >= 0, got {size}")
    self._source = source
    self._place = place
    self._size = size
    self._state: Optional[bytes] = None
    self._thread: Optional[threading.Thread] = None
    self._stop = threading.Event()
    self._buffer: queue.Queue = queue.Queue()

  def __iter__(self) -> Iterator[Any]:
    return self

  def __next__(self) -> Any:
    if self._size == 0:
      return self._place(next(self._source))
    if self._thread is None:
      self._start()
    item = self._buffer.get()
    if isinstance(item, _End):
      self._buffer.put(item)  # Every later call ends too.
      raise StopIteration
    if isinstance(item, _Failure):
      self._buffer.put(item)
      raise item.error
    batch, self._state = item
    return batch

  def get_state(self) -> bytes:
    """The source's position after the last batch handed out."""
    if self._size == 0:
      return self._source.get_state()  # Nothing read ahead.
    if self._state is None:
      # Nothing handed out yet and the thread not started: the source is idle.
      self._state = self._source.get_state()
    return self._state

  def set_state(self, state: bytes) -> None:
    """Moves the source to `state`, dropping the batches read ahead."""
    self.close()
    self._source.set_state(state)
    self._state = state

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after a restore; the thread starts
    on the next `next`, so nothing to do here beyond the source's own."""
    start = getattr(self._source, "start_prefetch", None)
    if start is not None:
      start()

  def close(self) -> None:
    """Stops the reading thread and drops what it read ahead."""
    if self._thread is None:
      return
    self._stop.set()
    while self._thread.is_alive():
      self._drain()
      self._thread.join(timeout=_POLL_S)
    self._drain()
    self._thread = None

  def _drain(self) -> None:
    try:
      while True:
        self._buffer.get_nowait()
    except queue.Empty:
      pass

  def _start(self) -> None:
    self.get_state()  # The position before the first batch, read while idle.
    self._stop = threading.Event()
    self._buffer = queue.Queue(maxsize=self._size)
    self._thread = threading.Thread(target=self._read, args=(self._stop, self._buffer),
                                    name="lxmert_jax-prefetch", daemon=True)
    self._thread.start()

  def _read(self, stop: threading.Event, buffer: queue.Queue) -> None:
    """The thread: read, place, and queue batches until stopped or exhausted."""
    try:
      while not stop.is_set():
        host = next(self._source)
        item = (self._place(host), self._source.get_state())
        if not self._put(stop, buffer, item):
          return
    except StopIteration:
      self._put(stop, buffer, _End())
    except BaseException as e:  # pylint: disable=broad-except
      self._put(stop, buffer, _Failure(e))

  @staticmethod
  def _put(stop: threading.Event, buffer: queue.Queue, item: Any) -> bool:
    """Queues `item` unless stopped first; False if stopped."""
    while not stop.is_set():
      try:
        buffer.put(item, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False
