"""The benchmark runs end to end on CPU (`--tiny`), and its FLOP count and search hold.

Timings are never asserted: only that every side produced positive
throughputs and that the built-in correctness checks passed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import workload  # pylint: disable=wrong-import-position
from lxmert_jax.objectives import masked_decoding  # pylint: disable=wrong-import-position
from lxmert_jax.model.config import LxmertConfig  # pylint: disable=wrong-import-position
from lxmert_jax.model.task_models import LxmertForPreTraining  # pylint: disable=wrong-import-position
from lxmert_jax.model.encoders import dummy_inputs  # pylint: disable=wrong-import-position


@pytest.mark.slow
def test_tiny_run_produces_results_and_passes_checks(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  out = tmp_path / "results.json"
  # One CPU device (not the suite's eight) and cheap compiles: speed is not under test.
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_step", "--tiny", "--sides", "ours,torch-eager",
       "--out", str(out)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert "#### Train step" in proc.stdout and "#### Checks" in proc.stdout
  report = json.loads(out.read_text())
  assert report["not_measured"] == []
  runs = {r["side"]: r for r in report["runs"]}
  assert set(runs) == {"ours", "torch-eager"}
  for run in runs.values():
    for part in ("train", "infer"):
      assert run[part]["examples_per_s"] > 0, (run["side"], part)
      assert run[part]["median_ms"] > 0
  for rows in ("mlm_positions", "feat_boxes"):
    assert runs["ours"]["train"][rows] < runs["torch-eager"]["train"][rows]
  assert not runs["ours"]["train"]["decode_fallback"]
  check = report["check"]
  assert check["fp32"]["passed"], check["fp32"]
  assert max(check["fp32"]["max_rel_error"].values()) <= 1e-4
  for key in ("mlm", "feat"):
    assert f"loss/{key} (decoder on gathered rows)" in check["fp32"]["max_rel_error"]
  assert check["bf16"]["passed"], check["bf16"]
  assert report["environment"]["versions"]["jax"] == jax.__version__


def _positions(path: tuple[str, ...], t: int, o: int) -> int:
  """How many rows (per example) the Dense layer at `path` is applied to."""
  name = "/".join(path)
  if "pooler" in name or "seq_relationship" in name or "answer_head" in name:
    return 1
  if "visual_attention" in name:
    return t + o  # shared weights: both directions
  if any(k in name for k in ("r_layers", "visn_", "obj_predict_head", "visn_fc")):
    return o
  return t


def test_flop_formula_counts_every_dense_layer_of_the_base_model():
  config = LxmertConfig()
  t, o = 20, 36
  model = LxmertForPreTraining(config)
  params = nn.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), **dummy_inputs(config, 1, 4, 2)))["params"])
  dense = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tuple(k.key for k in path)
    if keys[-1] == "kernel":
      dense += 2 * leaf.shape[0] * leaf.shape[1] * _positions(keys, t, o)
  d = config.hidden_size
  decoder = 2 * t * d * config.vocab_size  # tied to the word embeddings: no kernel
  products = 4 * d * (config.l_layers * t * t + config.r_layers * o * o
                      + config.x_layers * (2 * t * o + t * t + o * o))
  forward = sum(workload.forward_flops(config, t, o).values())
  assert forward == dense + decoder + products
  assert workload.train_flops_per_example(config, t, o) == 3 * forward == 35_501_294_592


@pytest.mark.parametrize("start", [256, 4096])
def test_max_batch_search_finds_the_limit(start):
  per_example, fixed, limit = 5e7, 4e9, 78e9  # fits up to batch 1480

  def probe(b):
    need = fixed + per_example * b
    return workload.Probe(b, need <= limit, need)

  best, probes = workload.search_max_batch(probe, start, 64, limit, max_probes=10)
  assert best == 1472
  assert any(p.batch == 1536 and not p.fits for p in probes)
  assert len(probes) <= 5


def test_max_batch_search_without_memory_estimates_doubles_then_bisects():
  best, probes = workload.search_max_batch(lambda b: workload.Probe(b, b <= 700), 64, 64,
                                           None, max_probes=20)
  assert best == 640
  assert [p.batch for p in probes][:5] == [64, 128, 256, 512, 1024]


def test_default_decode_slots_hold_the_masked_rows():
  mlm_slots = masked_decoding.capacity(0.25, 256 * 20)
  feat_slots = masked_decoding.capacity(0.25, 256 * 36)
  assert (mlm_slots, feat_slots) == (1280, 2304)
  assert masked_decoding.capacity(0.0, 256 * 20) is None
  batch = workload.synthetic_batch(LxmertConfig(), 256, 20, 36, seed=3)
  assert (batch["masked_lm_labels"] >= 0).sum() <= mlm_slots
  assert (batch["feat_mask"] > 0).sum() <= feat_slots
