"""The built-in demo corpus of a run, built by every process that does not find it.

`config.data.build_demo` runs train on the synthetic corpus of
`lxmert_jax.data.build_demo_data`, generated on first use. In a multi-process
run the processes may or may not share a file system, so each one that finds
no prepared dataset builds it itself: the corpus is a deterministic function
of its seed and sizes, so every host gets the same records and the data
shards still compose into the same global batches.

Where the directory is shared, several processes build at once, and
`build_demo_data` writing in place would not survive that (it deletes
half-built datasets it finds, which may be another process's work in
progress). Each process therefore builds into a private directory inside
the target and then publishes the result with renames, one complete unit at
a time: a dataset version directory (complete by construction: the data
pipeline renames it into place only once written) or the raw corpus. A unit
the target already has is kept; the corpus is deterministic, so the copies
are interchangeable. The task's own dataset, the one readers look for, is
published after the feature sets it points into, so a process that sees it
sees everything it needs. A process killed while building leaves its private
`.building-*` directory behind; it is never read and can be deleted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections

from lxmert_jax import data as data_lib
from lxmert_jax import paths
from lxmert_jax.data import layout
from lxmert_jax.data.prepare.synthetic_corpus import DEMO_MARKER

_PRIVATE_PREFIX = ".building-"
# Files whose presence marks a directory as a complete unit: a prepared
# dataset's (written by TFDS before the directory is renamed into place) and
# the raw corpus's (written last by build_demo_data).
_COMPLETE_FILES = ("dataset_info.json", "corpus_config.json")


def demo_data_dir(workdir: str) -> str:
  """Where the demo corpus goes when `data.dir` is empty: in a local work directory.

  The corpus is written with local file operations, so a bucket work
  directory gets it in the machine's temporary directory instead.
  """
  if paths.is_local(workdir):
    return os.path.join(workdir, "demo_data")
  return os.path.join(tempfile.gettempdir(), "lxmert_jax_demo_data")


def data_dir(data_config: ml_collections.ConfigDict, workdir: str) -> str:
  """`data.dir`, else the demo corpus's directory with `build_demo`, else ""."""
  if data_config.dir:
    return data_config.dir
  return demo_data_dir(workdir) if data_config.build_demo else ""


def say(message: str) -> None:
  """Logs, and shows on the console of process 0."""
  logging.info("%s", message)
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def ensure(directory: str, data_config: ml_collections.ConfigDict, task: str,
           is_prepared: Callable[[], bool]) -> None:
  """Builds the demo corpus's `task` dataset in `directory` unless it is prepared there.

  Every process calls this (all of them, whatever each finds, so that the
  final barrier is reached by all); each builds the dataset itself when it
  does not find it, safely when `directory` is shared (see the module
  docstring).

  Args:
    directory: the run's data directory.
    data_config: `config.data` (`demo_images`, `demo_seed`, `demo_feature_dim`,
      `demo_max_objects`, `demo_captions`).
    task: "pretrain", "vqa", "gqa" or "nlvr2".
    is_prepared: whether `directory` holds the task's prepared dataset.

  Raises:
    ValueError: `directory` holds demo data built with other parameters.
  """
  if not is_prepared():
    what = "the demo corpus" if task == "pretrain" else f"the demo corpus's {task} data"
    say(f"building {what} ({data_config.demo_images} images) in {directory}")
    build(directory, task, num_images=data_config.demo_images, seed=data_config.demo_seed,
          feature_dim=data_config.demo_feature_dim, max_objects=data_config.demo_max_objects,
          caption_style=data_config.demo_captions)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"lxmert_jax demo {task} data")


def build(directory: str, task: str, *, num_images: int, seed: int, feature_dim: int,
          **corpus_options: Any) -> None:
  """`build_demo_data(directory, ..., tasks=(task,))`, safe against concurrent builders.

  `corpus_options` go to `build_demo_data` (`max_objects`, `caption_style`).

  Builds into a private directory inside `directory` and publishes what
  `directory` lacks (see the module docstring). Only process 0 shows the
  data pipeline's console lines.

  Raises:
    ValueError: `directory` holds demo data built with other parameters.
  """
  os.makedirs(directory, exist_ok=True)
  private = tempfile.mkdtemp(prefix=f"{_PRIVATE_PREFIX}{socket.gethostname()}-{os.getpid()}-",
                             dir=directory)
  try:
    marker = os.path.join(directory, DEMO_MARKER)
    if os.path.exists(marker):
      # build_demo_data checks the parameters against the marker it finds; with
      # no task listed it builds this one even if the marker names it.
      with open(marker, encoding="utf-8") as f:
        params = {**json.load(f), "tasks": []}
      with open(os.path.join(private, DEMO_MARKER), "w", encoding="utf-8") as f:
        json.dump(params, f)
    quiet = contextlib.redirect_stdout(io.StringIO()) if jax.process_index() else (
        contextlib.nullcontext())
    with quiet:
      try:
        data_lib.build_demo_data(private, num_images=num_images, seed=seed,
                                 feature_dim=feature_dim, tasks=(task,), **corpus_options)
      except ValueError as e:
        raise ValueError(str(e).replace(private, directory)) from None
    task_dataset = layout.TASK_DATASETS[task]
    for name in sorted(os.listdir(private), key=lambda n: (n == task_dataset, n)):
      if name != DEMO_MARKER:
        _publish(os.path.join(private, name), os.path.join(directory, name))
    _merge_marker(os.path.join(private, DEMO_MARKER), marker)
  finally:
    shutil.rmtree(private, ignore_errors=True)


def _complete(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, f)) for f in _COMPLETE_FILES)


def _publish(source: str, target: str) -> None:
  """Moves `source` to `target` one complete unit at a time, keeping what `target` has.

  A directory that is not itself a unit (e.g. `lxmert_features/`) is merged
  entry by entry; what the target has is never modified, so a process
  reading it is never disturbed.
  """
  if os.path.basename(source).startswith("incomplete."):
    return
  if os.path.isdir(source) and not _complete(source):
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(source)):
      _publish(os.path.join(source, name), os.path.join(target, name))
    return
  if os.path.lexists(target):
    return
  try:
    os.rename(source, target)
  except OSError:
    if not os.path.lexists(target):
      raise
    # Another process published the same unit first; its copy is identical.


def _merge_marker(source: str, target: str) -> None:
  """Writes the marker of the built tasks: this build's and those `target` lists.

  Two processes adding different tasks at the same moment may each miss the
  other's; the marker only lets `build_demo_data` skip work, and the
  datasets themselves are what `ensure` checks, so nothing is lost.
  """
  with open(source, encoding="utf-8") as f:
    built = json.load(f)
  if os.path.exists(target):
    with open(target, encoding="utf-8") as f:
      earlier = json.load(f).get("tasks", [])
    built["tasks"] = earlier + [t for t in built["tasks"] if t not in earlier]
  staged = f"{source}.merged"
  with open(staged, "w", encoding="utf-8") as f:
    json.dump(built, f)
  os.replace(staged, target)
