"""Run directories that may live on a local disk or in a bucket (gs://...).

The TPU pod launcher puts the work directory in Cloud Storage, where
`os.path.abspath` would turn `gs://b/run` into `$PWD/gs:/b/run` and
`os.makedirs` / `open` would write there. Everything a run reads or writes
goes through `etils.epath` instead, which dispatches on the scheme (fsspec's
gcsfs or TensorFlow's gfile for `gs://`, plain `os` for local paths) and only
imports a cloud client when a cloud path is first touched.
"""

from __future__ import annotations

import os
import re
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]

_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


def is_local(path: PathLike) -> bool:
  """Whether `path` is on this machine's file system (no `scheme://` prefix)."""
  return _URI.match(os.fspath(path)) is None


def resolve(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`: absolute if local, unchanged if a URI.

  Raises:
    ValueError: for a URI scheme epath has no backend for.
  """
  text = os.fspath(path)
  if is_local(text):
    return epath.Path(os.path.abspath(os.path.expanduser(text)))
  try:
    return epath.Path(text)
  except KeyError:  # epath's lookup of the scheme's path class.
    raise ValueError(f"unsupported URI scheme {_URI.match(text)['scheme']!r} in {text!r}; "
                     "epath handles gs://, s3://, az:// and hf://") from None


def write_bytes(path: PathLike, data: bytes) -> None:
  """Replaces the file at `path` with `data`, never leaving a partial file.

  Locally the bytes go to a hidden sibling that is then renamed over the
  target. An object-store write already is all-or-nothing (readers see the old
  object until the new one is complete), and a rename there is a copy, so the
  object is written directly.
  """
  path = epath.Path(path)
  if not is_local(path):
    path.write_bytes(data)
    return
  partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
  partial.write_bytes(data)
  partial.replace(path)
