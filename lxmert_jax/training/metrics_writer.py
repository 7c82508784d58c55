"""Training observability: TensorBoard, a JSONL file, a progress bar, a plot.

Only process 0 writes; other processes get a writer whose methods do nothing,
so the training loop never branches on the process index.

Files under the work directory:
  tensorboard/   event files (tensorboardX; no TensorFlow needed)
  metrics.jsonl  one JSON object per logged step: {"step": s, "train/loss": ...}
  loss_curves.png  train and eval loss curves, written by `close()`

The work directory may be local or a bucket URI (gs://...); files go through
etils.epath. Objects in a bucket cannot be appended to (gcsfs opens objects
only for a whole read or a whole write, and bytes written to an open object
appear only when it is closed), so for a non-local directory:
  - metrics.jsonl is held in memory (earlier runs' rows read once at start)
    and the whole object is rewritten at most every `sync_secs`, and on
    `flush()` and `close()`;
  - TensorBoard events are written to a local temporary directory and copied
    into WORKDIR/tensorboard through epath on the same schedule, so they use
    the same backend and credentials as every other file of the run
    (tensorboardX's own gs:// writer opens a google-cloud-storage client).
A crash therefore loses at most `sync_secs` of rows there. A local directory
keeps the simpler behaviour: rows are appended and flushed one at a time and
tensorboardX writes its event files in place.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import jax
import numpy as np

from lxmert_jax import paths

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
PLOT_FILE = "loss_curves.png"


class MetricsWriter:
  """Writes scalars to TensorBoard and JSONL and drives the progress bar.

  Args:
    workdir: the run's directory, local or a URI such as gs://bucket/run.
    total_steps: the last step of the run (for the bar and ETA).
    initial_step: the step the run (re)starts from.
    enabled: write files and show the bar; defaults to "this is process 0".
    progress_bar: show a tqdm bar (turned off for non-interactive logs).
    sync_secs: how often `write_scalars` calls `flush()`: at most once per
      `sync_secs`. For a non-local `workdir` that is when metrics.jsonl and the
      event files are uploaded (see the module docstring).
  """

  def __init__(self, workdir: paths.PathLike, total_steps: int, initial_step: int = 0, *,
               enabled: Optional[bool] = None, progress_bar: bool = True,
               sync_secs: float = 30.0):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = paths.resolve(workdir)
    self._tb = self._jsonl = self._events = self._bar = None
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    local = paths.is_local(self.workdir)
    self._jsonl = (_AppendedJsonl if local else _RewrittenJsonl)(self.workdir / METRICS_FILE)
    if local:
      tb_dir = os.fspath(self.workdir / TENSORBOARD_DIR)
    else:
      self._events = _UploadedDir(self.workdir / TENSORBOARD_DIR)
      tb_dir = self._events.local_dir
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(tb_dir)
    self._sync_secs = sync_secs
    self._last_sync = time.monotonic()
    if progress_bar:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                       dynamic_ncols=True, mininterval=1.0)
    self._last_step = initial_step

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Records one row of scalars (already on the host) for `step`."""
    if not self.enabled:
      return
    row = {k: float(v) for k, v in scalars.items()}
    for key, value in row.items():
      self._tb.add_scalar(key, value, step)
    self._jsonl.add(json.dumps({"step": step, **row}, sort_keys=True) + "\n")
    if time.monotonic() - self._last_sync >= self._sync_secs:
      self.flush()

  def flush(self) -> None:
    """Makes everything written so far visible in the work directory."""
    if not self.enabled:
      return
    self._jsonl.sync()
    self._tb.flush()
    if self._events is not None:
      self._events.sync()
    self._last_sync = time.monotonic()

  def progress(self, step: int, postfix: Mapping[str, Any]) -> None:
    """Advances the bar to `step` and shows `postfix` (loss, examples/s)."""
    if self._bar is None:
      return
    self._bar.update(step - self._last_step)
    self._last_step = step
    self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)

  def log(self, message: str) -> None:
    """A line for the console (kept clear of the progress bar) and the log."""
    if not self.enabled:
      return
    logging.info("%s", message)
    if self._bar is not None:
      self._bar.write(message, file=sys.stderr)
    else:
      print(message, file=sys.stderr, flush=True)

  def close(self) -> Optional[epath.Path]:
    """Flushes files, draws the loss curves; returns the plot's path if any."""
    if not self.enabled:
      return None
    if self._bar is not None:
      self._bar.close()
    self._tb.close()
    self._jsonl.close()
    if self._events is not None:
      self._events.close()
    return plot_loss_curves(self.workdir / METRICS_FILE, self.workdir / PLOT_FILE)


class _AppendedJsonl:
  """A local metrics.jsonl: each row is appended and flushed as it comes."""

  def __init__(self, path: epath.Path):
    self._file = path.open("a", encoding="utf-8")

  def add(self, line: str) -> None:
    self._file.write(line)
    self._file.flush()

  def sync(self) -> None:
    """Nothing to do: `add` has already flushed."""

  def close(self) -> None:
    self._file.close()


class _RewrittenJsonl:
  """A metrics.jsonl in a bucket: kept in memory, the whole object rewritten on `sync`."""

  def __init__(self, path: epath.Path):
    self._path = path
    self._text = io.StringIO()
    if path.exists():
      self._text.write(path.read_text(encoding="utf-8"))
    self._dirty = False

  def add(self, line: str) -> None:
    self._text.write(line)
    self._dirty = True

  def sync(self) -> None:
    if self._dirty:
      paths.write_bytes(self._path, self._text.getvalue().encode("utf-8"))
      self._dirty = False

  def close(self) -> None:
    self.sync()


class _UploadedDir:
  """A local temporary directory whose files are copied to `target` on `sync`.

  Only files whose size changed since the last copy are uploaded again; event
  files only grow, so an unchanged size means unchanged content.
  """

  def __init__(self, target: epath.Path):
    self.target = target
    self.local_dir = tempfile.mkdtemp(prefix="lxmert_jax_tensorboard_")
    self._sizes: dict[str, int] = {}

  def sync(self) -> None:
    for root, _, files in os.walk(self.local_dir):
      for name in files:
        source = os.path.join(root, name)
        relative = os.path.relpath(source, self.local_dir)
        size = os.path.getsize(source)
        if self._sizes.get(relative) == size:
          continue
        destination = self.target / relative
        if relative not in self._sizes:
          destination.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as f:
          paths.write_bytes(destination, f.read())
        self._sizes[relative] = size

  def close(self) -> None:
    self.sync()
    shutil.rmtree(self.local_dir, ignore_errors=True)


def _short(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def read_jsonl(path: paths.PathLike) -> list[dict[str, float]]:
  """The rows of a metrics.jsonl file (all runs appended to it, in order)."""
  with epath.Path(path).open("r", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_loss_curves(jsonl_path: paths.PathLike,
                     png_path: paths.PathLike) -> Optional[epath.Path]:
  """Draws the `train/...` and `eval/...` loss series of a metrics file.

  Total losses go in the left panel, per-task losses in the right one (log
  scale, since their magnitudes differ by orders). Each task has one colour;
  training is a solid line, evaluation dashed with markers. A resumed run's
  rows replace the earlier ones at the same steps. Either path may be local or
  a URI; the PNG is rendered in memory and written in one piece.
  """
  jsonl_path, png_path = epath.Path(jsonl_path), epath.Path(png_path)
  if not jsonl_path.exists():
    return None
  series: dict[str, dict[int, float]] = {}
  for row in read_jsonl(jsonl_path):
    for key, value in row.items():
      if "/loss" in key and math.isfinite(value):
        series.setdefault(key, {})[int(row["step"])] = value
  if not series:
    return None
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (total_ax, task_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
  tasks = sorted({key.split("/", 2)[2] if key.count("/") == 2 else "total" for key in series})
  colours = {task: plt.get_cmap("tab10")(i % 10) for i, task in enumerate(tasks)}
  for key in sorted(series):
    split, _, task = key.partition("/loss")
    task = task.lstrip("/") or "total"
    steps = np.array(sorted(series[key]))
    values = np.array([series[key][s] for s in steps])
    ax = total_ax if task == "total" else task_ax
    evaluation = split == "eval"
    ax.plot(steps, values, label=f"{split} {task}", color=colours[task],
            linestyle="--" if evaluation else "-", marker="o" if evaluation else None,
            markersize=3)
  total_ax.set_title("total loss")
  task_ax.set_title("per-task losses")
  task_ax.set_yscale("log")
  for ax in (total_ax, task_ax):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7, ncol=2 if ax is task_ax else 1)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  paths.write_bytes(png_path, png.getvalue())
  return png_path


class Throughput:
  """Examples per second between two calls, measured on the host."""

  def __init__(self):
    self._time = time.perf_counter()

  def rate(self, examples: int) -> float:
    now = time.perf_counter()
    rate = examples / max(now - self._time, 1e-9)
    self._time = now
    return rate
