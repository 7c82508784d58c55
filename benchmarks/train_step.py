"""Times LXMERT pre-training and inference: lxmert_jax against transformers' PyTorch model.

One run measures, on one device and on identical shapes and work:

* the full pre-training train step (all five objectives with their labels,
  dropout on, AdamW after global-norm clipping at 1.0) of ours and of
  transformers' `LxmertForPreTraining`, eager with bf16 autocast and under
  `torch.compile`;
* the VQA-style forward of `LxmertForQuestionAnswering` (3129 answers, no
  dropout) of both, for inference throughput;
* optionally, the largest batch our train step fits in device memory.

Each step is synchronised with the device (`jax.block_until_ready`,
`torch.cuda.synchronize`) and timed after a warm-up; the tables report the
median and the 10th/90th percentiles, examples per second, model FLOPs
utilisation (MFU; FLOPs counted by `workload.forward_flops`) and peak device
memory. Batches are generated once, placed on the device before timing and
rotated, so the input pipeline is not measured on either side.

Before timing, `--check` compares the two models on the same weights (see
`checks.py`): fp32 logits and loss terms must agree to 1e-4 relative, and our
bf16 outputs must stay within bf16 tolerance of fp32.

    python -m benchmarks.train_step --out results.json                 # GPU: all sides
    python -m benchmarks.train_step --ladder --max-batch --out r.json  # + levers, max batch
    python -m benchmarks.train_step --tiny                             # CPU functional run

Run it from the repository root. Unless `--no-isolate` (the default with
`--tiny`), every measurement runs in a fresh child process, so that each
peak-memory reading is that measurement's own and PyTorch and JAX never
share the device.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Mapping, Optional, Sequence

# PyTorch and JAX may share the device in one process (the checks always do,
# and so does everything with --no-isolate); JAX would otherwise reserve 75% of
# GPU memory as soon as it starts. Set before anything imports jax.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# pylint: disable=wrong-import-position
from benchmarks import workload
from benchmarks.workload import SIDES, Job, Variant, gib, log
from lxmert_jax.objectives import masked_decoding
from lxmert_jax.model.config import LxmertConfig

# pylint: enable=wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
            "orbax-checkpoint", "chex", "numpy", "torch", "transformers", "triton",
            "nvidia-cudnn-cu12", "nvidia-cudnn-cu13", "nvidia-cublas-cu12", "nvidia-cublas")


# --- Jobs ----------------------------------------------------------------------


def run_job(job: Job) -> dict[str, Any]:
  """Runs one job in this process; a failure is returned in `error`, not raised."""
  # Imported here: a PyTorch-only child never loads our side, and vice versa.
  from benchmarks import checks, jax_side, torch_side  # pylint: disable=import-outside-toplevel
  result: dict[str, Any] = dict(kind=job.kind, side=job.side, variant=job.variant.label(),
                                dtype=job.dtype)
  started = time.perf_counter()
  try:
    if job.kind == "check":
      result.update(jax_side.device_info())
      result["check"] = checks.run(job)
    elif job.kind == "max_batch":
      result.update(jax_side.device_info())
      result["max_batch"] = jax_side.max_batch(job)
    else:
      side = jax_side if job.side == "ours" else torch_side
      info = side.device_info()
      result.update(info)
      peak = workload.peak_flops(info["device"], job.dtype)
      # Inference first: JAX's peak-memory counter only ever grows.
      if job.infer:
        result["infer"] = dict(side.bench_infer(job, peak), batch=job.infer_batch)
      if job.train:
        result["train"] = dict(side.bench_train(job, peak), batch=job.batch)
  except Exception as e:  # pylint: disable=broad-except
    result["error"] = f"{type(e).__name__}: {e}"
    result["traceback"] = traceback.format_exc()
    log(f"{job.describe()} failed: {result['error'][:2000]}")
  result["wall_s"] = time.perf_counter() - started
  return result


def _failed(job: Job, error: str) -> dict[str, Any]:
  return dict(kind=job.kind, side=job.side, variant=job.variant.label(), dtype=job.dtype,
              error=error)


def run_isolated(job: Job, timeout: Optional[float]) -> dict[str, Any]:
  """Runs `job` in a fresh Python process (this module with `--job`)."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  if job.side == "ours":
    # Our runs own the device: let JAX use nearly all of it.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  if job.kind == "run" and job.side != "ours":
    env["JAX_PLATFORMS"] = "cpu"  # PyTorch runs: keep JAX off the device entirely
  if job.kind == "max_batch":
    # Probes only need memory sizes: skip autotuning, which costs compile time
    # and picks among kernels, not buffer sizes.
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_gpu_autotune_level=0".strip()
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "result.json"
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--job", job.to_json(),
           "--job-out", str(out)]
    try:
      proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
      return _failed(job, f"timed out after {timeout:.0f}s")
    if not out.exists():
      return _failed(job, f"child process exited with status {proc.returncode}, no result")
    return json.loads(out.read_text())


def plan_jobs(args: argparse.Namespace) -> list[Job]:
  """The run's jobs, most important first, so a time budget cuts the least useful."""
  common = dict(tiny=args.tiny, dtype=args.dtype, batch=args.batch, infer_batch=args.infer_batch,
                seq_len=args.seq_len, num_objects=args.num_objects, steps=args.steps,
                warmup=args.warmup, num_batches=args.num_batches, seed=args.seed,
                check_batch=args.check_batch, max_batch_granule=args.max_batch_granule,
                max_batch_probes=args.max_batch_probes,
                torch_compile_mode=args.torch_compile_mode)
  best = Variant(attention=args.attention, mlm_fraction=args.mlm_decode_fraction,
                 feat_fraction=args.feat_decode_fraction, prng=args.prng, donate=args.donate)
  jobs = []
  if args.check:
    jobs.append(Job(kind="check", variant=best, **common))
  jobs += [Job(kind="run", side=side, variant=best, infer=args.infer, **common)
           for side in args.sides]
  if args.ladder and "ours" in args.sides:
    jobs += [Job(kind="run", side="ours", variant=v, infer=False, **common)
             for v in workload.lever_ladder(best) if v != best]
  if args.max_batch:
    jobs.append(Job(kind="max_batch", variant=best, **common))
  return jobs


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
  results = []
  start = time.perf_counter()
  for job in plan_jobs(args):
    remaining = (None if args.time_budget is None
                 else args.time_budget - (time.perf_counter() - start))
    if remaining is not None and remaining < 30:
      results.append(_failed(job, "skipped: time budget spent"))
      log(f"{job.describe()}: skipped, time budget spent")
      continue
    log(job.describe())
    results.append(run_isolated(job, remaining) if args.isolate else run_job(job))
  return results


# --- Environment ---------------------------------------------------------------


def package_versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return out


def gpu_driver() -> Optional[str]:
  """`name, driver, memory` from nvidia-smi, without touching CUDA."""
  if not shutil.which("nvidia-smi"):
    return None
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return out.splitlines()[0] if out else None


# --- Report --------------------------------------------------------------------


def build_report(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
  """Everything measured, with the settings, FLOP counts and environment."""
  config = LxmertConfig(**workload.model_fields(args.tiny))
  answers = workload.vqa_answers(args.tiny)
  breakdown = workload.forward_flops(config, args.seq_len, args.num_objects)
  check = next((r for r in results if r["kind"] == "check"), None)
  max_batch = next((r for r in results if r["kind"] == "max_batch"), None)
  cuda = {k: v for r in results for k, v in r.items() if k in ("torch_cuda", "torch_cudnn")}
  return dict(
      command=" ".join(["python", "-m", "benchmarks.train_step"] + sys.argv[1:]),
      settings=dict(model="tiny" if args.tiny else "base (9/5/5 layers, hidden 768, 9500 answers)",
                    dtype=args.dtype, batch=args.batch, infer_batch=args.infer_batch,
                    seq_len=args.seq_len, num_objects=args.num_objects, steps=args.steps,
                    warmup=args.warmup, isolated=args.isolate, vqa_answers=answers,
                    optimizer=(f"AdamW (lr {workload.LEARNING_RATE}, weight decay "
                               f"{workload.WEIGHT_DECAY}, eps {workload.ADAM_EPS}) after "
                               f"global-norm clipping at {workload.CLIP_NORM}"),
                    mlm_slots=masked_decoding.capacity(args.mlm_decode_fraction,
                                                       args.batch * args.seq_len),
                    feat_slots=masked_decoding.capacity(args.feat_decode_fraction,
                                                        args.batch * args.num_objects)),
      flops=dict(train_per_example=workload.train_flops_per_example(config, args.seq_len,
                                                                    args.num_objects),
                 forward_per_example=sum(breakdown.values()), forward_breakdown=breakdown,
                 infer_per_example=workload.infer_flops_per_example(
                     config, args.seq_len, args.num_objects, answers)),
      environment=dict(devices=sorted({r["device"] for r in results if r.get("device")}),
                       nvidia_smi=gpu_driver(), versions=package_versions(), **cuda,
                       host=platform.node(), cpu_count=os.cpu_count()),
      check=None if check is None else check.get("check") or {"error": check.get("error")},
      max_batch=None if max_batch is None else (max_batch.get("max_batch")
                                                or {"error": max_batch.get("error")}),
      runs=[r for r in results if r["kind"] == "run" and ("train" in r or "infer" in r)],
      not_measured=[{k: r.get(k) for k in ("kind", "side", "variant", "error")}
                    for r in results if r.get("error")])


def _fmt(x: Optional[float], spec: str, suffix: str = "") -> str:
  return "-" if x is None else format(x, spec) + suffix


def _levers(run: Mapping[str, Any], part: str) -> str:
  if run["side"] != "ours":
    return "bf16 autocast" if run["dtype"] == "bf16" else "fp32 (TF32 matmuls)"
  if part == "infer":
    return f"attn={run[part].get('attention')}"
  return run["variant"].replace("attn=auto", f"attn={run[part].get('attention')}")


def markdown(report: Mapping[str, Any]) -> str:
  """The report as text: environment, train and inference tables, checks, max batch."""
  s, f, env = report["settings"], report["flops"], report["environment"]
  lines = [f"device: {', '.join(env['devices']) or 'unknown'}"
           + (f" (nvidia-smi: {env['nvidia_smi']})" if env["nvidia_smi"] else ""),
           "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
           + "".join(f", {k} {env[k]}" for k in ("torch_cuda", "torch_cudnn") if env.get(k)),
           f"model: {s['model']}; T={s['seq_len']}, O={s['num_objects']}, {s['dtype']}; "
           f"{s['optimizer']}",
           f"model FLOPs/example (reference count): train {f['train_per_example'] / 1e9:.2f} G "
           f"(3 x forward {f['forward_per_example'] / 1e9:.2f} G), VQA forward "
           f"{f['infer_per_example'] / 1e9:.2f} G", ""]
  runs = report["runs"]
  for part, title, batch in (("train", "Train step", s["batch"]),
                             ("infer", "Inference (VQA forward)", s["infer_batch"])):
    rows = [r for r in runs if part in r]
    if not rows:
      continue
    peer = next((r[part]["examples_per_s"] for r in rows if r["side"] == "torch-compile"), None)
    lines += [f"#### {title}, batch {batch}", "",
              "| side | levers | ex/s | step ms p10 / p50 / p90 | pipelined ms | MFU "
              "| peak mem GiB | compile or first call s | vs torch.compile |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
      m = r[part]
      mfu = None if m["mfu"] is None else 100 * m["mfu"]
      ratio = None if peer is None else m["examples_per_s"] / peer
      lines.append(
          f"| {r['side']} | {_levers(r, part)} | {m['examples_per_s']:,.0f} | "
          f"{m['p10_ms']:.2f} / {m['median_ms']:.2f} / {m['p90_ms']:.2f} | "
          f"{m['pipelined_ms']:.2f} | {_fmt(mfu, '.1f', '%')} | {gib(m['peak_bytes'])} | "
          f"{m['compile_s']:.1f} | {_fmt(ratio, '.2f', 'x')} |")
    lines.append("")
  notes = {r[part].get("attention_note") for r in runs for part in ("train", "infer")
           if part in r}
  notes = sorted(filter(None, notes))
  lines += [f"note: ours ran `attention=auto` as xla; {n}" for n in notes] + ([""] if notes else [])
  lines += _check_lines(report.get("check"))
  mb = report.get("max_batch")
  if mb:
    if mb.get("error"):
      lines.append(f"max batch: failed: {mb['error']}")
    elif mb.get("batch") is None:
      lines.append(f"max batch: {mb.get('note', 'no batch size fits')}")
    else:
      lines.append(f"max batch, ours ({mb['variant']}, attention {mb['attention']}): "
                   f"{mb['batch']} (granule {mb['granule']}; JAX memory limit "
                   f"{gib(mb['bytes_limit'])} GiB with XLA_PYTHON_CLIENT_MEM_FRACTION "
                   f"{mb['mem_fraction']})")
  for r in report["not_measured"]:
    lines.append(f"not measured: {r['kind']} {r['side']} [{r['variant']}]: "
                 f"{(r['error'] or '').splitlines()[0][:300]}")
  return "\n".join(lines)


def _check_lines(check: Optional[Mapping[str, Any]]) -> list[str]:
  if not check:
    return []
  if "error" in check:
    return [f"checks: FAILED to run: {check['error']}", ""]
  fp32, bf16 = check["fp32"], check["bf16"]
  lines = [f"#### Checks (batch {check['batch']})", "",
           f"fp32, ours vs transformers: {'PASS' if fp32['passed'] else 'FAIL'} (tolerance "
           f"{fp32['tolerance']:g}). bf16 (attention {bf16['attention']}) vs our fp32: "
           f"{'PASS' if bf16['passed'] else 'FAIL'} (tolerance {bf16['tolerance']:g})"
           + (f": {bf16['error']}" if bf16.get("error") else ""), "",
           "| max relative error | fp32: ours vs transformers | bf16 vs fp32: ours "
           "| bf16 autocast vs fp32: transformers |", "|---|---|---|---|"]
  torch16 = bf16["torch_autocast_max_rel_error"]
  for k in dict.fromkeys(list(fp32["max_rel_error"]) + list(bf16["max_rel_error"])):
    lines.append(f"| {k} | {_fmt(fp32['max_rel_error'].get(k), '.1e')} | "
                 f"{_fmt(bf16['max_rel_error'].get(k), '.1e')} | "
                 f"{_fmt(torch16.get(k), '.1e')} |")
  return lines + [""]


# --- Command line --------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tiny", action="store_true",
                 help="tiny model, batch 8, 3 steps, in one process: a CPU functional run")
  p.add_argument("--sides", default=None,
                 help=f"comma-separated subset of {','.join(SIDES)}, or none (default: all; "
                      "with --tiny: ours,torch-eager)")
  p.add_argument("--batch", type=int, default=None, help="train batch (default 256; tiny 8)")
  p.add_argument("--infer-batch", type=int, default=None,
                 help="inference batch (default: --batch)")
  p.add_argument("--steps", type=int, default=None, help="timed steps (default 50; tiny 3)")
  p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10; tiny 1)")
  p.add_argument("--seq-len", type=int, default=20)
  p.add_argument("--num-objects", type=int, default=36)
  p.add_argument("--num-batches", type=int, default=2,
                 help="distinct device-resident batches the steps rotate through")
  p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                 help="compute dtype on both sides (parameters stay fp32)")
  p.add_argument("--attention", choices=("auto", "reference", "xla", "cudnn"), default="auto",
                 help="our attention implementation (auto: cudnn where it can run the model, "
                      "else xla)")
  p.add_argument("--mlm-decode-fraction", type=float, default=0.25,
                 help="our MLM decoder on the labelled positions, gathered into this fraction "
                      "of B*T slots (the training config's mlm_decode_fraction); 0: all")
  p.add_argument("--feat-decode-fraction", type=float, default=0.25,
                 help="our feature-regression decoder on the masked boxes, gathered into this "
                      "fraction of B*O slots (feat_decode_fraction); 0: all")
  p.add_argument("--prng", choices=("threefry2x32", "rbg", "unsafe_rbg"), default="rbg",
                 help="jax_default_prng_impl for our dropout masks")
  p.add_argument("--donate", action=argparse.BooleanOptionalAction, default=True,
                 help="donate our train state to the step")
  p.add_argument("--ladder", action="store_true",
                 help="also time ours with the levers added one at a time from the plain model")
  p.add_argument("--infer", action=argparse.BooleanOptionalAction, default=True,
                 help="also time inference (VQA forward)")
  p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                 help="fp32 parity with transformers and bf16-vs-fp32 checks")
  p.add_argument("--check-batch", type=int, default=4)
  p.add_argument("--max-batch", action="store_true",
                 help="search the largest batch our train step fits (a compile per probe)")
  p.add_argument("--max-batch-granule", type=int, default=None,
                 help="resolution of the search (default 64; tiny 8)")
  p.add_argument("--max-batch-probes", type=int, default=6)
  p.add_argument("--torch-compile-mode", default="default",
                 choices=("default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"))
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                 help="one child process per measurement (default: on; off with --tiny)")
  p.add_argument("--time-budget", type=float, default=None,
                 help="seconds; jobs that would start later are skipped and listed")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also write all results as JSON here")
  p.add_argument("--job", default=None, help=argparse.SUPPRESS)
  p.add_argument("--job-out", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  tiny = args.tiny
  sides = args.sides or ("ours,torch-eager" if tiny else ",".join(SIDES))
  args.sides = () if sides == "none" else tuple(sides.split(","))
  unknown = sorted(set(args.sides) - set(SIDES))
  if unknown:
    p.error(f"--sides: unknown {unknown}; expected a subset of {SIDES}")
  args.batch = args.batch or (8 if tiny else 256)
  args.infer_batch = args.infer_batch or args.batch
  args.steps = args.steps or (3 if tiny else 50)
  args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 10)
  args.max_batch_granule = args.max_batch_granule or (8 if tiny else 64)
  args.isolate = (not tiny) if args.isolate is None else args.isolate
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the benchmark; exit status 1 if a check failed or anything was not measured."""
  args = parse_args(argv)
  if args.job:
    result = run_job(Job.from_json(args.job))
    pathlib.Path(args.job_out).write_text(json.dumps(result))
    return 0
  report = build_report(args, run_all(args))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
  print(markdown(report), flush=True)
  check = report["check"]
  checks_failed = check is not None and not (check.get("fp32", {}).get("passed")
                                             and check.get("bf16", {}).get("passed"))
  return 1 if checks_failed or report["not_measured"] else 0


if __name__ == "__main__":
  sys.exit(main())
