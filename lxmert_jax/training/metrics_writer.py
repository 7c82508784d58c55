"""Training observability: TensorBoard, a JSONL file, a progress bar, a plot.

Only process 0 writes; other processes get a writer whose methods do nothing,
so the training loop never branches on the process index.

Files under the work directory:
  tensorboard/   event files (tensorboardX; no TensorFlow needed)
  metrics.jsonl  one JSON object per logged step: {"step": s, "train/loss": ...}
  loss_curves.png  train and eval loss curves, written by `close()`
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, Optional

from absl import logging
import jax
import numpy as np


class MetricsWriter:
  """Writes scalars to TensorBoard and JSONL and drives the progress bar.

  Args:
    workdir: the run's directory.
    total_steps: the last step of the run (for the bar and ETA).
    initial_step: the step the run (re)starts from.
    enabled: write files and show the bar; defaults to "this is process 0".
    progress_bar: show a tqdm bar (turned off for non-interactive logs).
  """

  def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, *,
               enabled: Optional[bool] = None, progress_bar: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = workdir
    self._history: dict[str, list[tuple[int, float]]] = {}
    self._tb = self._jsonl = self._bar = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
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
      self._history.setdefault(key, []).append((step, value))
    self._jsonl.write(json.dumps({"step": step, **row}, sort_keys=True) + "\n")
    self._jsonl.flush()

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

  def close(self) -> Optional[str]:
    """Flushes files, draws the loss curves; returns the plot's path if any."""
    if not self.enabled:
      return None
    if self._bar is not None:
      self._bar.close()
    self._tb.close()
    self._jsonl.close()
    return plot_loss_curves(os.path.join(self.workdir, "metrics.jsonl"),
                            os.path.join(self.workdir, "loss_curves.png"))


def _short(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def read_jsonl(path: str) -> list[dict[str, float]]:
  """The rows of a metrics.jsonl file (all runs appended to it, in order)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_loss_curves(jsonl_path: str, png_path: str) -> Optional[str]:
  """Draws the `train/...` and `eval/...` loss series of a metrics file.

  Total losses go in the left panel, per-task losses in the right one (log
  scale, since their magnitudes differ by orders). Each task has one colour;
  training is a solid line, evaluation dashed with markers. A resumed run's
  rows replace the earlier ones at the same steps.
  """
  if not os.path.exists(jsonl_path):
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
  fig.savefig(png_path, dpi=110)
  plt.close(fig)
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
