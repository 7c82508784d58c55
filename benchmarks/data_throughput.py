"""Pre-training batch assembly throughput, in examples per second per CPU core.

Builds the synthetic corpus at the reference's sizes (36 boxes x 2048
features, T = 20), prepares it, and times `make_pretrain_loader` batches end to
end: reading records and float16 images, matching, QA targets, word and
object masking and batching, with float16 features (what the training loop
uses; it casts them on the device) and with the float32 cast on the host.
The single-core figures run with `worker_count=0` pinned to one core;
`--workers N` adds a run with N grain worker processes.

    python benchmarks/data_throughput.py
    python benchmarks/data_throughput.py --workers 2 --data-dir /tmp/lxmert_bench
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from typing import Sequence

import numpy as np


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _versions() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  names = ("grain", "tensorflow-datasets", "array-record", "tokenizers")
  return ", ".join([f"python {platform.python_version()}", f"numpy {np.__version__}"]
                   + [f"{name} {metadata.version(name)}" for name in names])


def _time_loaders(data_dir: str, args: argparse.Namespace, worker_count: int,
                  feature_dtypes: Sequence[str]) -> tuple[dict, dict, int]:
  """Per feature dtype and trial: examples per wall second and per CPU second.

  The loaders' trials alternate, so that a slow spell of a shared machine
  (another tenant, page-cache reclaim) hits every configuration alike.

  Returns:
    (walls, cpus, examples per trial), `walls`/`cpus` keyed by dtype.
  """
  from lxmert_jax.data import make_pretrain_loader  # pylint: disable=g-import-not-at-top
  iterators = {}
  for dtype in feature_dtypes:
    iterators[dtype] = iter(make_pretrain_loader(
        data_dir, "mscoco_train+mscoco_nominival+vgnococo", batch_size=args.batch_size,
        seed=args.seed, max_seq_length=20, num_objects=args.num_boxes, shard_index=0,
        shard_count=1, worker_count=worker_count, read_threads=args.read_threads,
        feature_dtype=np.dtype(dtype)))
    for _ in range(args.warmup_batches):  # Start-up: feature bank, worker spawn, first reads.
      next(iterators[dtype])
  walls = {dtype: [] for dtype in feature_dtypes}
  cpus = {dtype: [] for dtype in feature_dtypes}
  n = args.batches * args.batch_size
  for _ in range(args.trials):
    for dtype, it in iterators.items():
      start, cpu_start = time.perf_counter(), time.process_time()
      for _ in range(args.batches):
        next(it)
      walls[dtype].append(n / (time.perf_counter() - start))
      cpus[dtype].append(n / (time.process_time() - cpu_start))
  return walls, cpus, n


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=None,
                      help="prepared demo data to reuse/build (default: a temporary dir)")
  parser.add_argument("--num-images", type=int, default=1000)
  parser.add_argument("--feature-dim", type=int, default=2048)
  parser.add_argument("--num-boxes", type=int, default=36)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--batches", type=int, default=10, help="batches per timed trial")
  parser.add_argument("--trials", type=int, default=5)
  parser.add_argument("--warmup-batches", type=int, default=3)
  parser.add_argument("--read-threads", type=int, default=0,
                      help="grain record-reading threads (0: read in the loop's own thread)")
  parser.add_argument("--workers", type=int, default=0, help="also time N worker processes")
  parser.add_argument("--no-pin", action="store_true", help="do not pin to one core")
  parser.add_argument("--core", type=int, default=None,
                      help="core to pin the single-core run to (default: the first allowed)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  from lxmert_jax.data import build_demo_data  # pylint: disable=g-import-not-at-top
  tmp = None
  data_dir = args.data_dir
  if data_dir is None:
    tmp = tempfile.TemporaryDirectory(prefix="lxmert_bench_")
    data_dir = tmp.name
  start = time.perf_counter()
  build_demo_data(data_dir, num_images=args.num_images, seed=args.seed,
                  feature_dim=args.feature_dim, num_boxes=args.num_boxes, tasks=("pretrain",))
  print(f"data: {data_dir} ({args.num_images} images, {args.num_boxes} boxes x "
        f"{args.feature_dim} features, T=20), ready in {time.perf_counter() - start:.1f}s")
  print(f"cpu: {_cpu_model()}, {os.cpu_count()} logical cores; {platform.platform()}")
  print(f"versions: {_versions()}")

  if not args.no_pin and hasattr(os, "sched_setaffinity"):
    core = sorted(os.sched_getaffinity(0))[0] if args.core is None else args.core
    os.sched_setaffinity(0, {core})
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
  # float16 features are what the training loop asks for (it casts on the
  # device); float32 batches are the loaders' default for other users.
  walls, cpus, n = _time_loaders(data_dir, args, 0, ("float16", "float32"))
  print(f"worker_count=0 on {cores} core(s), {args.trials} alternating trials of {n} examples "
        f"(batch {args.batch_size}) per feature dtype, load average {os.getloadavg()[0]:.1f}:")
  for dtype in walls:
    # On a shared machine wall time includes time other processes held the
    # core; CPU time of this single-threaded run is the per-core figure.
    print(f"  {dtype} features: examples per CPU-second (= examples/s/core) median "
          f"{np.median(cpus[dtype]):,.0f}, best {max(cpus[dtype]):,.0f}; per wall-second "
          f"median {np.median(walls[dtype]):,.0f}")
  if args.workers:
    if hasattr(os, "sched_setaffinity"):
      os.sched_setaffinity(0, range(os.cpu_count()))
    walls, _, n = _time_loaders(data_dir, args, args.workers, ("float16",))
    print(f"worker_count={args.workers}, float16 features, on {os.cpu_count()} core(s): "
          f"median {np.median(walls['float16']):,.0f}, best {max(walls['float16']):,.0f} "
          "examples per wall-second")
  if tmp is not None:
    tmp.cleanup()
  return 0


if __name__ == "__main__":
  sys.exit(main())
