"""The demo's model learns to read the image: a regression test of grounding.

`configs/pretrain.py:demo` (its initializer_range, learning rate and corpus)
trained with the QA, object and attribute losses only, for 1,000 steps of 32,
answers the held-out minival questions better with each question's own image
than with another example's (the `eval/other_image/...` metrics behind the
summary's `image use:` line). A model that ignores the image scores exactly
the same both ways. Measured on 2 CPU cores (README, "A grounded demo"), QA
loss with another image minus QA loss with its own: +0.319, +0.264, +0.203 for seeds
9595, 1, 2; 0.000 with BERT's initializer_range 0.02, where the model
never reads the image. A change that breaks grounding (the init, the
cross-attention, the corpus's features, the image pairing of the batches)
brings the gap to zero, below the margin asserted here.

The run is the main command in a subprocess on one CPU device.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from run_env import one_device_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("compilation_cache")
STEPS = 1000
LOSS_MARGIN = 0.1  # Below the smallest measured gap (0.203); the blind init's is 0.000.


def _last_eval(workdir: pathlib.Path) -> dict[str, float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval/acc/qa" in r]
  assert evals, f"{workdir}/metrics.jsonl has no evaluation row"
  return evals[-1]


@pytest.mark.slow
def test_a_short_demo_run_answers_better_with_the_questions_own_image(tmp_path):
  workdir = tmp_path / "run"
  argv = [sys.executable, "-m", "lxmert_jax.main", "--config=configs/pretrain.py:demo",
          f"--workdir={workdir}", "--config.progress_bar=False",
          f"--config.num_train_steps={STEPS}", "--config.eval_every_steps=0",
          "--config.ckpt.every_steps=100000",
          "--config.objective.tasks.mlm=False", "--config.objective.tasks.matched=False",
          "--config.objective.tasks.feat=False"]
  proc = subprocess.run(argv, cwd=ROOT, env=one_device_env(tmp_path / "jax_cache", optimize=True),
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  last = _last_eval(workdir)
  assert last["step"] == STEPS
  own, other = last["eval/loss/qa"], last["eval/other_image/loss/qa"]
  assert other - own >= LOSS_MARGIN, (
      f"QA loss {own:.3f} with each question's own image, {other:.3f} with another "
      f"example's: the model no longer reads the image (expected the other image's "
      f"loss higher by >= {LOSS_MARGIN})")
  assert last["eval/acc/qa"] > last["eval/other_image/acc/qa"]
  # The object and attribute heads read the boxes' features from the start.
  assert last["eval/acc/obj"] > 0.8 and last["eval/acc/attr"] > 0.8
  # The summary names the comparison a user reads.
  assert "image use:   qa acc" in proc.stdout + proc.stderr
