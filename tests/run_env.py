"""The environment of a training run started as a subprocess of a test."""

from __future__ import annotations

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def one_device_env(cache_dir: os.PathLike, optimize: bool = False) -> dict[str, str]:
  """This process's environment with the machine's own single CPU device.

  conftest.py splits the CPU into 8 devices; a small run's sharded programs
  compile and run slower there. The compilation cache is shared by the runs
  of a test module. `optimize` False: XLA's optimisations off, for runs whose
  time is mostly compiling; True for runs whose time is mostly stepping.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  if optimize:
    env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
  else:
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                              if not flag.startswith("--xla_force_host_platform_device_count"))
  return env
