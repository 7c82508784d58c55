"""LXMERT's pre-training ablation (Tan & Bansal 2019, Tables 4 and 5) on the built-in corpus.

Which pre-training tasks make the fine-tuned model better? For every
condition (a set of pre-training tasks, `CONDITIONS`) and seed, the trainer
pre-trains a model (nothing for `none`), then fine-tunes it on the corpus's
VQA task with the same fine-tuning budget, and the fine-tuned model's
evaluation of the whole dev split at its last step is recorded: LXMERT's soft
score (`eval/soft_score`) and the official VQA accuracy (`eval/vqa_accuracy`).
Both stages read one corpus, built once in DIR/data from the pre-training
config's `data.demo_*` fields, so that the fine-tuning questions are about
the world the model was pre-trained on (as notebooks/pretrain_and_finetune
does).

    python -m benchmarks.pretraining_ablation --out runs/ablation --seeds 0,1,2
    python -m benchmarks.pretraining_ablation --out runs/ablation --plot_only

Each finished (condition, seed) appends a line to DIR/results.jsonl, and a
rerun skips the pairs it lists; an interrupted run resumes from its own
checkpoints (DIR/runs/<condition>-seed<k>/{pretrain,finetune}). At the end,
DIR/ablation.md tabulates mean ± sample standard deviation over seeds and
DIR/ablation.png plots every seed.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import pathlib
import shlex
import sys
import time
from typing import Any, Optional, Sequence

import flax
import jax
import ml_collections
import numpy as np
import optax

from lxmert_jax.training import metrics_writer, trainer

# The pre-training task switches of each condition (`objective.tasks`), or None
# for no pre-training. Table 5 of the paper varies the vision tasks with the
# language tasks (mlm, matched) and QA on: none of them (`no_vision`), RoI
# feature regression (`feat`), detected-label classification (`label`: object
# and attribute labels), both (`all`). Table 4 asks what image-QA pre-training
# adds (`no_qa` against `all`); `none` fine-tunes from random weights.
CONDITIONS: dict[str, Optional[dict[str, bool]]] = {
    "none": None,
    "no_vision": dict(mlm=True, matched=True, obj=False, attr=False, feat=False, qa=True),
    "feat": dict(mlm=True, matched=True, obj=False, attr=False, feat=True, qa=True),
    "label": dict(mlm=True, matched=True, obj=True, attr=True, feat=False, qa=True),
    "all": dict(mlm=True, matched=True, obj=True, attr=True, feat=True, qa=True),
    "no_qa": dict(mlm=True, matched=True, obj=True, attr=True, feat=True, qa=False),
}
SCORE, ACCURACY = "eval/soft_score", "eval/vqa_accuracy"
RESULTS, TABLE, PLOT = "results.jsonl", "ablation.md", "ablation.png"
# What fixes the built-in corpus; fine-tuning takes them from the pre-training config.
CORPUS_FIELDS = ("dir", "build_demo", "demo_images", "demo_seed", "demo_feature_dim")


def pretrains(condition: str) -> str:
  """The table's words for what `condition` pre-trains on."""
  tasks = CONDITIONS[condition]
  return "nothing" if tasks is None else ", ".join(t for t, on in tasks.items() if on)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` as `--config=` reads it: the file's `get_config(arg)`, locked.

  Locked, so that a misspelt override is an error instead of a new field.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found (paths are relative to the "
                            "current directory: run from the repository root)")
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.lock()
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Sets each `dotted.key=value`; a value that is not a python literal is taken as a string."""
  for override in overrides:
    key, sep, text = override.partition("=")
    if not sep:
      raise ValueError(f"override {override!r}: expected key=value")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    config.update_from_flattened_dict({key.strip(): value})


def pretrain_config(args: argparse.Namespace, condition: str, seed: int
                    ) -> ml_collections.ConfigDict:
  """The pre-training config of a pair; for `none` it only names the corpus.

  The condition's task switches are set after `--pretrain_set`, so an
  override cannot blur what a condition pre-trains.
  """
  config = load_config(args.pretrain_config)
  apply_overrides(config, args.pretrain_set)
  config.seed = seed
  if args.pretrain_steps:
    config.num_train_steps = args.pretrain_steps
  # One corpus for every run: built once, and the same world for all of them.
  config.data.dir = config.data.dir or os.path.join(args.out, "data")
  if CONDITIONS[condition] is not None:
    config.objective.tasks.update(CONDITIONS[condition])
  return config


def finetune_config(args: argparse.Namespace, seed: int, corpus: ml_collections.ConfigDict,
                    init_path: Optional[str]) -> ml_collections.ConfigDict:
  """The VQA fine-tuning config: the pre-training corpus, from `init_path`'s last checkpoint.

  The last checkpoint, not the "best" by pre-training loss: the ablation
  compares the models each objective ends with. `init_path` None: from scratch.
  """
  config = load_config(args.finetune_config)
  apply_overrides(config, args.finetune_set)
  config.seed = seed
  if args.finetune_steps:
    config.num_train_steps = args.finetune_steps
  for field in CORPUS_FIELDS:
    config.data[field] = corpus[field]
  if init_path is None:
    config.init.mode = "scratch"
  else:
    config.init.update(dict(mode="lxmert", path=init_path, step="latest"))
  return config


def read_results(out: str) -> list[dict[str, Any]]:
  """The rows of DIR/results.jsonl (none when it does not exist yet)."""
  path = os.path.join(out, RESULTS)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _metrics_rows(workdir: str) -> list[dict[str, float]]:
  return metrics_writer.read_jsonl(os.path.join(workdir, metrics_writer.METRICS_FILE))


def _last_step(workdir: str) -> int:
  """The last step a run logged (its length, however many invocations it took)."""
  return max(int(r["step"]) for r in _metrics_rows(workdir))


def run_pair(args: argparse.Namespace, condition: str, seed: int) -> dict[str, Any]:
  """Pre-trains (unless `none`) and fine-tunes one (condition, seed); returns its result row.

  The metrics come from the fine-tuning run's metrics.jsonl, not from what
  the trainer returns, so a run that had finished before an interruption
  (and returns no evaluation when rerun) is still recorded.
  """
  run_dir = os.path.join(args.out, "runs", f"{condition}-seed{seed}")
  pre = pretrain_config(args, condition, seed)
  seconds = {"pretrain": 0.0, "finetune": 0.0}
  init_path = None
  if CONDITIONS[condition] is not None:
    init_path = os.path.join(run_dir, "pretrain")
    start = time.time()
    trainer.train_and_evaluate(pre, init_path)
    seconds["pretrain"] = time.time() - start
  finetune_dir = os.path.join(run_dir, "finetune")
  print(f"  {condition} seed {seed}: fine-tuning on VQA "
        f"({'from scratch' if init_path is None else 'from ' + init_path}) -> {finetune_dir}",
        flush=True)
  start = time.time()
  trainer.train_and_evaluate(finetune_config(args, seed, pre.data, init_path), finetune_dir)
  seconds["finetune"] = time.time() - start
  final = [r for r in _metrics_rows(finetune_dir) if SCORE in r][-1]
  return dict(condition=condition, seed=seed,
              metrics={k: v for k, v in final.items() if k.startswith("eval/")},
              seconds=seconds, pretrain_steps=_last_step(init_path) if init_path else 0,
              finetune_steps=_last_step(finetune_dir),
              pretrain_config=args.pretrain_config, finetune_config=args.finetune_config,
              pretrain_set=list(args.pretrain_set), finetune_set=list(args.finetune_set))


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per condition with results, in `CONDITIONS` order: seeds, scores, mean and sample std.

  The std is the sample standard deviation (ddof=1), None for a single seed.
  """
  summary = []
  for condition in CONDITIONS:
    mine = sorted((r for r in rows if r["condition"] == condition), key=lambda r: r["seed"])
    if not mine:
      continue
    stats = {}
    for key in (SCORE, ACCURACY):
      values = np.array([r["metrics"].get(key, np.nan) for r in mine], dtype=np.float64)
      stats[key] = (float(np.mean(values)),
                    float(np.std(values, ddof=1)) if len(values) > 1 else None)
    summary.append(dict(condition=condition, seeds=[r["seed"] for r in mine],
                        scores=[r["metrics"][SCORE] for r in mine], stats=stats))
  return summary


def _mean_std(mean: float, std: Optional[float], digits: int) -> str:
  return f"{mean:.{digits}f} ± " + ("–" if std is None else f"{std:.{digits}f}")


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
  """The ablation table: one row per condition, mean ± std over seeds and each seed's score."""
  lines = ["| condition | pre-trains | seeds | dev soft score (mean ± std) "
           "| VQA accuracy % (mean ± std) | soft score per seed |",
           "|---|---|---|---|---|---|"]
  for s in summary:
    per_seed = ", ".join(f"{seed}: {score:.4f}" for seed, score in zip(s["seeds"], s["scores"]))
    lines.append(f"| {s['condition']} | {pretrains(s['condition'])} | {len(s['seeds'])} "
                 f"| {_mean_std(*s['stats'][SCORE], 4)} | {_mean_std(*s['stats'][ACCURACY], 2)} "
                 f"| {per_seed} |")
  return "\n".join(lines) + "\n"


def plot(summary: Sequence[dict[str, Any]], path: str) -> None:
  """Every seed's dev soft score as a point, and mean ± std error bars, per condition."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(max(1.2 * len(summary) + 2, 5), 4), layout="constrained")
  ax = fig.add_subplot()
  for x, s in enumerate(summary):
    jitter = np.linspace(-0.12, 0.12, len(s["scores"])) if len(s["scores"]) > 1 else [0.0]
    ax.scatter(x + np.asarray(jitter), s["scores"], color="C0", alpha=0.6, s=18,
               label="one seed" if x == 0 else None)
    mean, std = s["stats"][SCORE]
    ax.errorbar(x + 0.3, mean, yerr=std or 0.0, fmt="o", color="C3", capsize=4,
                label="mean ± std" if x == 0 else None)
  ax.set_xticks(range(len(summary)), [s["condition"] for s in summary])
  ax.set_xlim(-0.5, len(summary) - 0.4)
  ax.set_xlabel("pre-training condition")
  ax.set_ylabel("VQA dev soft score after fine-tuning")
  ax.set_title("Pre-training ablation")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=110)


def report(out: str) -> str:
  """Writes DIR/ablation.md and DIR/ablation.png from DIR/results.jsonl; returns the table."""
  summary = summarize(read_results(out))
  if not summary:
    raise FileNotFoundError(f"{os.path.join(out, RESULTS)}: no results to tabulate")
  table = markdown_table(summary)
  with open(os.path.join(out, TABLE), "w", encoding="utf-8") as f:
    f.write(table)
  plot(summary, os.path.join(out, PLOT))
  return table


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """The command line; conditions and seeds come back as lists."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="results, runs, table and plot go here")
  p.add_argument("--conditions", default=",".join(CONDITIONS),
                 help=f"comma-separated, of {', '.join(CONDITIONS)}")
  p.add_argument("--seeds", default="0,1,2", help="comma-separated; the seed of both stages")
  p.add_argument("--pretrain_config", default="configs/pretrain.py:demo")
  p.add_argument("--finetune_config", default="configs/vqa.py:demo")
  p.add_argument("--pretrain_steps", type=int, default=0,
                 help="num_train_steps of pre-training (0: the config's budget)")
  p.add_argument("--finetune_steps", type=int, default=0,
                 help="num_train_steps of fine-tuning (0: the config's budget)")
  p.add_argument("--pretrain_set", action="append", default=[], metavar="KEY=VALUE",
                 help="pre-training config override, e.g. optimizer.lr=5e-4 (repeatable)")
  p.add_argument("--finetune_set", action="append", default=[], metavar="KEY=VALUE",
                 help="fine-tuning config override, e.g. num_epochs=8 (repeatable)")
  p.add_argument("--plot_only", action="store_true",
                 help="only re-draw the table and plot from DIR's results")
  args = p.parse_args(argv)
  args.conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
  unknown = [c for c in args.conditions if c not in CONDITIONS]
  if unknown:
    p.error(f"unknown conditions {unknown}; expected some of {list(CONDITIONS)}")
  try:
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError:
    p.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the missing (condition, seed) pairs, then writes and prints the table."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  print("command: python -m benchmarks.pretraining_ablation " + shlex.join(argv), flush=True)
  print(f"devices: {jax.devices()}\njax {jax.__version__}, flax {flax.__version__}, "
        f"optax {optax.__version__}", flush=True)
  os.makedirs(args.out, exist_ok=True)
  if not args.plot_only:
    pairs = [(c, s) for c in args.conditions for s in args.seeds]
    finished = {(r["condition"], r["seed"]) for r in read_results(args.out)}
    done = sum(pair in finished for pair in pairs)
    for condition, seed in pairs:
      if (condition, seed) in finished:
        continue
      print(f"[{done}/{len(pairs)} done] starting {condition} seed {seed}: pre-training "
            f"{pretrains(condition)}", flush=True)
      row = run_pair(args, condition, seed)
      with open(os.path.join(args.out, RESULTS), "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
      done += 1
      print(f"[{done}/{len(pairs)} done] {condition} seed {seed}: dev soft score "
            f"{row['metrics'][SCORE]:.4f}", flush=True)
  table = report(args.out)
  print(table, flush=True)
  print(f"wrote {os.path.join(args.out, TABLE)} and {os.path.join(args.out, PLOT)}", flush=True)
  return 0


if __name__ == "__main__":
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # The trainer prints its own lines.
  sys.exit(main())
