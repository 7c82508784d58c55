"""benchmarks/pretraining_ablation.py: its conditions, and a whole tiny ablation.

The whole run (2 conditions x 2 seeds on the tiny configs) is the command
line in a process of its own, on one CPU device; the reruns call `main` in
the test's process. It fine-tunes with learning rate 0, so a fine-tuned
checkpoint holds exactly the parameters the run started from: that is how
the test sees which runs started from their pre-trained model.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import pretraining_ablation as ablation  # pylint: disable=wrong-import-position
from lxmert_jax.inference import saved_models  # pylint: disable=wrong-import-position
from run_env import one_device_env  # pylint: disable=wrong-import-position

pytestmark = pytest.mark.usefixtures("compilation_cache")
VISION = ("obj", "attr", "feat")


def test_conditions_are_the_papers_task_sets():
  on = {c: None if t is None else {k for k, v in t.items() if v}
        for c, t in ablation.CONDITIONS.items()}
  language = {"mlm", "matched"}
  assert list(on) == ["none", "no_vision", "feat", "label", "all", "no_qa"]
  assert on["none"] is None
  assert on["no_vision"] == language | {"qa"}
  assert on["feat"] == language | {"feat", "qa"}
  assert on["label"] == language | {"obj", "attr", "qa"}
  assert on["all"] == language | set(VISION) | {"qa"}
  assert on["no_qa"] == language | set(VISION)
  # Every condition sets every switch, so none inherits one from the config.
  for tasks in ablation.CONDITIONS.values():
    assert tasks is None or set(tasks) == {"mlm", "matched", "qa", *VISION}
  assert ablation.pretrains("none") == "nothing"
  assert ablation.pretrains("label") == "mlm, matched, obj, attr, qa"


def test_the_pretraining_config_gets_the_conditions_switches(tmp_path):
  args = ablation.parse_args(["--out", str(tmp_path), "--seeds", "3",
                              "--pretrain_config", f"{ROOT}/configs/pretrain.py:tiny",
                              "--pretrain_set", "objective.tasks.feat=False",
                              "--pretrain_set", "optimizer.lr=5e-4"])
  # The condition's switches win over an override; `none` trains nothing and
  # keeps the config's (its config only names the corpus).
  overridden = dict(mlm=True, matched=True, obj=True, attr=True, feat=False, qa=True)
  for condition, tasks in ablation.CONDITIONS.items():
    config = ablation.pretrain_config(args, condition, seed=3)
    assert config.objective.tasks.to_dict() == (tasks or overridden), condition
    assert (config.seed, config.optimizer.lr) == (3, 5e-4)
    assert config.data.dir == str(tmp_path / "data")
  with pytest.raises(KeyError):
    ablation.apply_overrides(config, ["optimizr.lr=1.0"])


def _encoder(workdir):
  """The `lxmert/...` parameters of a run's last checkpoint, flat."""
  params = saved_models.load_saved_model(str(workdir), "latest").params["lxmert"]
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def _table_rows(path):
  """condition -> (mean, std or None) of the soft-score column of ablation.md."""
  rows = {}
  for line in path.read_text().splitlines()[2:]:
    cells = [c.strip() for c in line.strip("|").split("|")]
    mean, std = cells[3].split(" ± ")
    rows[cells[0]] = (float(mean), None if std == "–" else float(std))
  return rows


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compile")
def test_a_tiny_ablation_runs_resumes_and_tabulates(tmp_path, capsys, monkeypatch):
  out = tmp_path / "ablation"
  argv = ["--out", str(out), "--conditions", "none,all", "--seeds", "0,1",
          "--pretrain_config", "configs/pretrain.py:tiny",
          "--finetune_config", "configs/vqa.py:tiny",
          "--pretrain_steps", "2", "--finetune_steps", "2",
          "--pretrain_set", "eval_every_steps=0", "--finetune_set", "optimizer.lr=0.0"]
  # The command line, in a process of its own (one device); the reruns below call main here.
  proc = subprocess.run([sys.executable, "-m", "benchmarks.pretraining_ablation", *argv],
                        cwd=ROOT, env=one_device_env(tmp_path / "jax_cache"),
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  printed = proc.stdout
  assert f"jax {jax.__version__}, flax " in printed and "devices: [CpuDevice(id=0)]" in printed
  assert "command: python -m benchmarks.pretraining_ablation --out" in printed
  assert "[0/4 done] starting none seed 0" in printed and "[4/4 done]" in printed
  assert "done: step 2/2" in proc.stderr  # The trainer's own lines.
  rows = ablation.read_results(str(out))
  assert sorted((r["condition"], r["seed"]) for r in rows) == [
      ("all", 0), ("all", 1), ("none", 0), ("none", 1)]
  for r in rows:
    assert r["finetune_steps"] == 2
    assert r["pretrain_steps"] == (2 if r["condition"] == "all" else 0)
    assert r["finetune_set"] == ["optimizer.lr=0.0"]
    assert 0.0 <= r["metrics"][ablation.SCORE] <= 1.0
    assert 0.0 <= r["metrics"][ablation.ACCURACY] <= 100.0

  runs = out / "runs"
  assert not (runs / "none-seed0" / "pretrain").exists()
  for seed in (0, 1):
    pre = _encoder(runs / f"all-seed{seed}" / "pretrain")
    after = _encoder(runs / f"all-seed{seed}" / "finetune")
    assert after.keys() == pre.keys()
    for key, value in pre.items():
      np.testing.assert_array_equal(after[key], value, err_msg=key)
    scratch = _encoder(runs / f"none-seed{seed}" / "finetune")
    assert not any(np.array_equal(scratch[k], v) for k, v in pre.items() if v.ndim == 2)
  # The seed reaches both stages: the two seeds pre-train different models.
  seed0, seed1 = (_encoder(runs / f"all-seed{s}" / "pretrain") for s in (0, 1))
  assert not all(np.array_equal(seed0[k], seed1[k]) for k in seed0)

  # A rerun trains nothing; one whose row is lost reads its finished runs again.
  finished = (out / ablation.RESULTS).read_text()
  (out / ablation.RESULTS).write_text("".join(finished.splitlines(keepends=True)[:-1]))
  monkeypatch.chdir(ROOT)  # The configs' paths are relative, as on the command line.
  assert ablation.main(argv) == 0
  printed = capsys.readouterr().out
  assert printed.count("starting") == 1 and "[3/4 done] starting" in printed
  again = ablation.read_results(str(out))
  assert len(again) == 4 and again[-1]["metrics"] == rows[-1]["metrics"]
  assert ablation.main(argv) == 0
  assert "starting" not in capsys.readouterr().out
  assert len(ablation.read_results(str(out))) == 4

  (out / ablation.TABLE).unlink()
  (out / ablation.PLOT).unlink()
  assert ablation.main(["--out", str(out), "--plot_only"]) == 0
  table = _table_rows(out / ablation.TABLE)
  assert list(table) == ["none", "all"]
  for condition, (mean, std) in table.items():
    scores = [r["metrics"][ablation.SCORE] for r in again if r["condition"] == condition]
    assert mean == pytest.approx(np.mean(scores), abs=5e-5)
    assert std == pytest.approx(np.std(scores, ddof=1), abs=5e-5)
  assert (out / ablation.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
