"""Two CPU processes under jax.distributed train exactly like one process.

The real command line (`python -m lxmert_jax.main`) runs twice on two local
processes of 2 CPU devices each, the mesh (data=2, fsdp=2) spanning both:
2 steps and a checkpoint, then a second launch that resumes for 2 more. A
one-process run on 4 devices reads the same global batches
(LXMERT_JAX_READ_AS_PROCESSES=2, `lxmert_jax.tasks.data_shards`) for 4 steps;
its final state must equal the two-process run's. Both processes build the
demo corpus into the shared work directory at once (`tasks.demo_corpus`).

Run as a script, this file is one process of such a run: it records every
file the process opens for writing under the work directory (an audit hook)
and runs `lxmert_jax.main` with the remaining arguments, so the tests can
check that only process 0 writes the run's metrics, plots and config files.

Compile time dominates: XLA optimisations and XLA:CPU's fusion emitters are
off, a persistent compilation cache serves process 0's second launch (JAX
writes it from process 0 only, and process 1 finds none of its own programs
there, so it compiles again), and the one-process reference runs alongside at a
lower priority, on the CPU time the launches leave.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import socket
import subprocess
import sys
from typing import Any, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lxmert_jax.tasks import data_shards
from lxmert_jax.training import metrics_writer

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where a worker writes the paths it opened for writing (set by the tests).
_WRITES_ENV = "LXMERT_JAX_TEST_WRITES_FILE"


def _record_writes(workdir: str, out: str) -> set[str]:
  """Starts recording the files under `workdir` this process writes; returns the live set."""
  prefix = os.path.abspath(workdir) + os.sep
  written: set[str] = set()
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

  def hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "open":
      path, mode, flags = args
      if not (mode and any(c in mode for c in "wax+")) and not (
          mode is None and flags & write_flags):
        return
    elif event in ("os.rename", "os.symlink"):
      path = args[1]
    else:
      return
    if isinstance(path, (str, bytes, os.PathLike)):
      path = os.path.abspath(os.fsdecode(path))
      if path.startswith(prefix) and path != out:
        written.add(path[len(prefix):])

  sys.addaudithook(hook)
  return written


def _worker(argv: list[str]) -> None:
  """One process of a test run: `lxmert_jax.main argv`, recording its writes."""
  # Before any other use of JAX: cross-process collectives on CPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
  out = os.environ[_WRITES_ENV]
  written = _record_writes(workdir, out)
  sys.argv = ["lxmert_jax.main", *argv]
  try:
    runpy.run_module("lxmert_jax.main", run_name="__main__", alter_sys=True)
  finally:
    with open(out, "w", encoding="utf-8") as f:
      json.dump(sorted(written), f)


pytestmark = pytest.mark.slow

PROCESSES = 2
STEPS, FIRST_LAUNCH_STEPS = 4, 2
_CONFIG_ARGS = [
    "--config=configs/pretrain.py:tiny",
    "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=1",
    f"--config.num_train_steps={STEPS}", f"--config.ckpt.every_steps={FIRST_LAUNCH_STEPS}",
    "--config.eval_every_steps=0",  # Evaluated at the last step only.
]
_TIMEOUT_S = 300
# XLA:CPU's fusion emitters take about half of the step's compile time.
_FAST_COMPILE_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
# The run files only process 0 may write; the other processes write only their
# absl log, their data position and array shards in the checkpoints, and their
# own build of the demo corpus.
_PROCESS_0_FILES = ("metrics.jsonl", "loss_curves.png", "run_config.json",
                    "model_config.json", "answers.json")
_SHARED_PREFIXES = ("lxmert_jax.", "checkpoints/", "demo_data/")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, cache_dir: str, writes_file: str, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=_ROOT,
             XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices} "
             f"{_FAST_COMPILE_XLA_FLAGS}".strip(),
             JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", **{_WRITES_ENV: writes_file})
  env.pop(data_shards.READ_AS_PROCESSES_ENV, None)
  env.update(extra)
  return env


class _Process:
  """A worker subprocess whose output goes to files next to its writes record."""

  def __init__(self, name: str, logs: str, args: list[str], env: dict[str, str],
               niceness: int = 0):
    self.name = name
    self.stdout, self.stderr = (os.path.join(logs, f"{name}.{s}") for s in ("out", "err"))
    self.writes_file = env[_WRITES_ENV]
    with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
      self.popen = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args],
                                    cwd=_ROOT, env=env, stdout=out, stderr=err,
                                    preexec_fn=(lambda: os.nice(niceness)) if niceness else None)

  def read(self, which: str) -> str:
    with open(self.stdout if which == "out" else self.stderr, errors="replace") as f:
      return f.read()

  def writes(self) -> list[str]:
    with open(self.writes_file, encoding="utf-8") as f:
      return json.load(f)


def _wait_all(processes: list[_Process], also_kill: Sequence[_Process] = ()) -> None:
  """Waits for `processes`; on a failure or timeout kills them and `also_kill`, shows stderr."""
  failed: Optional[str] = None
  for p in processes:
    try:
      code = p.popen.wait(timeout=_TIMEOUT_S)
      if code != 0 and failed is None:
        failed = f"{p.name} exited with {code}"
    except subprocess.TimeoutExpired:
      failed = failed or f"{p.name} ran over {_TIMEOUT_S}s"
      break
  if failed is None:
    return
  for p in [*processes, *also_kill]:
    if p.popen.poll() is None:
      p.popen.kill()
      p.popen.wait()
  tails = "\n".join(f"--- {p.name} stderr (last 6000 characters) ---\n{p.read('err')[-6000:]}"
                    for p in processes)
  pytest.fail(f"{failed}\n{tails}", pytrace=False)


def _launch(tag: str, workdir: str, logs: str, cache_dir: str, extra: list[str]
            ) -> list[_Process]:
  port = _free_port()
  return [_Process(f"{tag}.process{k}", logs,
                   [*_CONFIG_ARGS, f"--workdir={workdir}", *extra,
                    f"--coordinator_address=localhost:{port}", f"--num_processes={PROCESSES}",
                    f"--process_id={k}"],
                   _env(2, cache_dir, os.path.join(logs, f"{tag}.process{k}.writes.json")))
          for k in range(PROCESSES)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The two-process run (two launches) and the one-process reference, finished."""
  base = tmp_path_factory.mktemp("multihost")
  logs, cache_dir = str(base / "logs"), str(base / "jax_cache")
  os.makedirs(logs)
  multi, reference = str(base / "multi"), str(base / "reference")
  # The reference takes the CPU time the two-process launches leave (their
  # start-up and exit, process 0 waiting for process 1's compile).
  ref = _Process("reference", logs, [*_CONFIG_ARGS, f"--workdir={reference}"],
                 _env(4, cache_dir, os.path.join(logs, "reference.writes.json"),
                      **{data_shards.READ_AS_PROCESSES_ENV: str(PROCESSES)}), niceness=10)
  first = _launch("first", multi, logs, cache_dir,
                  [f"--config.steps_per_run={FIRST_LAUNCH_STEPS}"])
  _wait_all(first, also_kill=[ref])
  second = _launch("second", multi, logs, cache_dir, [])
  _wait_all(second + [ref])
  return dict(multi=multi, reference=reference, first=first, second=second, ref=ref)


def _state(workdir: str, step: int) -> Any:
  """A saved TrainState as host arrays, whatever devices saved it."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  return checkpointer.restore(path, restore_args=jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))


def _flat(tree: Any) -> list[tuple[str, np.ndarray]]:
  return [(jax.tree_util.keystr(path), np.asarray(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_two_processes_end_where_one_process_on_the_same_batches_does(runs):
  multi, ref = _state(runs["multi"], STEPS), _state(runs["reference"], STEPS)
  flat_multi, flat_ref = _flat(multi), _flat(ref)
  assert [k for k, _ in flat_multi] == [k for k, _ in flat_ref]
  # Not bit for bit: gloo adds the devices' gradients across the processes in
  # another order than the one-process all-reduce, which moves some values
  # by a float32 rounding (about 6e-8 in the parameters after 4 steps).
  for (key, x), (_, y) in zip(flat_multi, flat_ref):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=key)
  assert int(multi["step"]) == STEPS
  # The parameters moved after the resume, so the equality is not vacuous.
  resumed_from = _state(runs["multi"], FIRST_LAUNCH_STEPS)
  assert not np.array_equal(resumed_from["params"]["cls"]["predictions"]["bias"],
                            multi["params"]["cls"]["predictions"]["bias"])
  # Step by step too: the same training and evaluation metrics.
  multi_rows, ref_rows = (_logged(runs[name]) for name in ("multi", "reference"))
  assert sorted(multi_rows) == sorted(ref_rows) == list(range(1, STEPS + 1))
  assert "eval/loss" in multi_rows[STEPS]
  for step, row in multi_rows.items():
    assert row == pytest.approx(ref_rows[step], rel=1e-6, abs=1e-7), step


def _logged(workdir: str) -> dict[int, dict[str, float]]:
  """The metrics of each logged step (train and eval rows merged), rates left out."""
  rows: dict[int, dict[str, float]] = {}
  for row in metrics_writer.read_jsonl(os.path.join(workdir, metrics_writer.METRICS_FILE)):
    rows.setdefault(row.pop("step"), {}).update(
        (k, v) for k, v in row.items() if not k.endswith("examples_per_sec"))
  return rows


def test_only_process_0_writes_the_run_files_and_the_console(runs):
  for launch in (runs["first"], runs["second"]):
    zero, others = launch[0], launch[1:]
    assert set(_PROCESS_0_FILES) <= set(zero.writes()), zero.writes()
    assert any(w.startswith(metrics_writer.TENSORBOARD_DIR + "/") for w in zero.writes())
    assert "done: step" in zero.read("err")
    for p in others:
      stray = [w for w in p.writes() if not w.startswith(_SHARED_PREFIXES)]
      assert not stray, f"{p.name} wrote {stray}"
      console = p.read("err") + p.read("out")
      assert not re.search(r"step \d+ train|done: step|building the demo|Downloading", console), (
          console[-3000:])
  # One writer: every step logged once, across both launches.
  rows = metrics_writer.read_jsonl(os.path.join(runs["multi"], metrics_writer.METRICS_FILE))
  assert sorted(r["step"] for r in rows if "train/loss" in r) == list(range(1, STEPS + 1))
  events = os.listdir(os.path.join(runs["multi"], metrics_writer.TENSORBOARD_DIR))
  assert len(events) == 2, events  # One event file per launch.


def test_every_process_builds_the_demo_corpus_into_the_shared_directory(runs):
  for p in runs["first"]:
    # Each built the corpus in its own private directory (the first to finish
    # published it; the other kept what it found).
    assert any(w.startswith("demo_data/.building-") for w in p.writes()), p.name
  data_dir = os.path.join(runs["multi"], "demo_data")
  assert not [n for n in os.listdir(data_dir) if n.startswith(".")], os.listdir(data_dir)
  with open(os.path.join(data_dir, "demo_data.json"), encoding="utf-8") as f:
    assert json.load(f)["tasks"] == ["pretrain"]


def test_every_process_saves_its_part_of_each_checkpoint(runs):
  for step in (FIRST_LAUNCH_STEPS, STEPS):
    ckpt = os.path.join(runs["multi"], "checkpoints", str(step))
    positions = sorted(os.listdir(os.path.join(ckpt, "data_iter")))
    assert [p for p in positions if p.endswith(".json")] == [
        f"process_{k}-of-{PROCESSES}.json" for k in range(PROCESSES)]
    for k in range(PROCESSES):
      shards = os.path.join(ckpt, "state", f"ocdbt.process_{k}", "d")
      assert os.listdir(shards), f"process {k} wrote no array data at step {step}"


if __name__ == "__main__":
  _worker(sys.argv[1:])
