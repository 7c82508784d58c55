"""The command line: a whole tiny run, SIGTERM and resume, and its errors.

Each test runs `python -m lxmert_jax.main` in a subprocess on 2 CPU devices.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """2 CPU devices, unoptimised compiles, a compilation cache shared by the runs."""
  out = dict(os.environ)
  out.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_DISABLE_MOST_OPTIMIZATIONS="true",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return out


def _command(workdir, *overrides, config="configs/pretrain.py:tiny"):
  return [sys.executable, "-m", "lxmert_jax.main", f"--config={config}",
          f"--workdir={workdir}", *overrides]


def _run(env, workdir, *overrides, config="configs/pretrain.py:tiny", timeout=300):
  return subprocess.run(_command(workdir, *overrides, config=config), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.mark.slow
def test_tiny_run_writes_checkpoints_events_metrics_and_plot(env, demo_data, tmp_path):
  workdir = str(tmp_path / "run")
  result = _run(env, workdir, f"--config.data.dir={demo_data}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert _steps(workdir) == [3, 6]
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert any(name.startswith("events.out.tfevents") for name in events)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  train_rows = [r for r in rows if "train/loss" in r]
  eval_rows = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
  assert [r["step"] for r in eval_rows] == [3, 6]
  for key in ("train/loss/mlm", "train/loss/matched", "train/loss/obj", "train/loss/attr",
              "train/loss/feat", "train/loss/qa", "train/acc/mlm", "train/acc/matched",
              "train/acc/qa", "train/acc/obj", "train/acc/attr", "train/lr",
              "train/grad_norm", "train/examples_per_sec"):
    assert key in train_rows[-1], key
  assert train_rows[0]["train/lr"] == 0.0  # BertAdam's first update has lr 0.
  for key in ("eval/acc/mlm", "eval/other_image/acc/mlm", "eval/other_image/acc/qa",
              "eval/other_image/loss/qa"):
    assert key in eval_rows[-1], key
  assert "image use:   mlm acc" in result.stderr
  with open(os.path.join(workdir, "loss_curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "done: step 6/6" in result.stderr
  # Rerunning a finished run resumes at its end and does nothing more.
  again = _run(env, workdir, f"--config.data.dir={demo_data}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "starting at step 6" in again.stderr


@pytest.mark.slow
def test_sigterm_saves_exits_cleanly_and_resumes(env, demo_data, tmp_path):
  workdir = str(tmp_path / "preempted")
  overrides = [f"--config.data.dir={demo_data}", "--config.num_train_steps=100000",
               "--config.eval_every_steps=0", "--config.ckpt.every_steps=100000"]
  proc = subprocess.Popen(_command(workdir, *overrides), cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  saved = _steps(workdir)
  assert len(saved) == 1 and 1 <= saved[0] < 100000
  assert f"stopping at step {saved[0]} of 100000" in stderr

  resumed = _run(env, workdir, *overrides, "--config.steps_per_run=2")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"starting at step {saved[0]}" in resumed.stderr
  assert _steps(workdir)[-1] == saved[0] + 2


def test_missing_data_dir_says_how_to_prepare_data(env, tmp_path):
  result = _run(env, str(tmp_path / "run"), f"--config.data.dir={tmp_path / 'nowhere'}",
                config="configs/pretrain.py")
  assert result.returncode == 1
  assert "is not a prepared LXMERT pre-training dataset" in result.stderr
  assert "python -m lxmert_jax.data.prepare pretrain" in result.stderr
  assert "configs/pretrain.py:demo" in result.stderr


@pytest.mark.parametrize("override,expected", [
    ("--config.optimizr.lr=1", 'Did you mean "optimizer"'),
    ("--config.optimizer.lrr=1", 'Did you mean "lr"'),
    ("--config.optimizer.lr=fast", "could not convert string to float"),
])
def test_bad_overrides_are_clear_errors(env, tmp_path, override, expected):
  result = _run(env, str(tmp_path / "run"), override)
  assert result.returncode == 2
  assert expected in result.stderr
  assert "Traceback" not in result.stderr
