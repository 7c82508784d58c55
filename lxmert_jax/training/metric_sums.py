"""Adding up step metrics on the host and turning the sums into a summary.

Steps report metrics that add up: losses (a step's mean) and, for each
accuracy, a `<name>_correct` / `<name>_count` pair of sums. Adding the pairs
over steps (and hosts) before dividing gives the accuracy over all examples,
not a mean of per-step ratios.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

CORRECT, COUNT = "_correct", "_count"


def add_to(sums: dict[str, float], metrics: Mapping[str, Any]) -> None:
  """Accumulates one step's host metrics into `sums` (in float64)."""
  for key, value in metrics.items():
    sums[key] = sums.get(key, 0.0) + float(np.asarray(value, np.float64))


def summarize(sums: Mapping[str, float], num_steps: int) -> dict[str, float]:
  """Metrics summed over `num_steps` steps -> means and accuracies.

  Every `<name>_correct` with a `<name>_count` above zero becomes
  `acc/<name>`; the other metrics are averaged over the steps.
  """
  out = {}
  for key, value in sums.items():
    if key.endswith((CORRECT, COUNT)):
      continue
    out[key] = float(value) / max(num_steps, 1)
  for key, correct in sums.items():
    if not key.endswith(CORRECT):
      continue
    name = key[:-len(CORRECT)]
    count = float(sums.get(name + COUNT, 0.0))
    if count > 0:
      out[f"acc/{name}"] = float(correct) / count
  return out
