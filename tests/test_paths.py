"""paths: local paths made absolute, bucket URIs kept as they are, whole-file writes.

`fake_gcs` serves gs:// from memory through epath's real fsspec backend, so
a test can show a bucket path is written through epath (nothing lands in the
working directory, which `os.makedirs('gs://...')` or `open` would do).
Appending is refused, as gcsfs does.
"""

import importlib
import os
import subprocess
import sys

from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem
import pytest

from lxmert_jax import paths


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
  """gs:// served from memory; the working directory is an empty `tmp_path/cwd`.

  Yields:
    The dict of stored objects, keyed '/bucket/name'.
  """

  class FakeGcs(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
      return super()._strip_protocol(os.fspath(path).removeprefix("gs://"))

    def _open(self, path, mode="rb", **kwargs):
      if "a" in mode:
        raise NotImplementedError("objects cannot be appended to")
      return super()._open(path, mode, **kwargs)

  registry = importlib.import_module("fsspec.registry")
  for protocol in FakeGcs.protocol:
    monkeypatch.setitem(registry._registry, protocol, FakeGcs)  # pylint: disable=protected-access
  # With TensorFlow installed epath would pick gfile for gs://; use fsspec.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  cached = epath_backend._FileSystemSpecBackend._get_filesystem  # pylint: disable=protected-access
  cached.cache_clear()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield FakeGcs.store
  cached.cache_clear()
  assert not list(cwd.iterdir()), "a gs:// path was written to the local disk"


@pytest.mark.parametrize("uri", ["gs://bucket/dir", "gs://bucket/runs/base", "s3://b/x"])
def test_resolve_leaves_a_uri_unchanged(uri):
  for given in (uri, epath.Path(uri)):
    resolved = paths.resolve(given)
    assert isinstance(resolved, epath.Path)
    assert str(resolved) == uri
    assert os.fspath(resolved) == uri
    assert str(resolved / "checkpoints") == f"{uri}/checkpoints"
    assert not paths.is_local(resolved)


def test_resolve_makes_a_relative_local_path_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for given in ("runs/demo", epath.Path("runs/demo"), tmp_path / "runs" / "demo"):
    resolved = paths.resolve(given)
    assert isinstance(resolved, epath.Path)
    assert str(resolved) == str(tmp_path / "runs" / "demo")
    assert paths.is_local(resolved)


def test_resolve_rejects_a_scheme_epath_does_not_handle():
  with pytest.raises(ValueError, match="unsupported URI scheme 'memory'"):
    paths.resolve("memory://bucket/x")


def test_resolving_a_bucket_path_imports_no_cloud_client():
  code = ("import sys; from lxmert_jax import paths; "
          "p = paths.resolve('gs://bucket/run') / 'metrics.jsonl'; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'gcsfs', 'fsspec', 'tensorflow'}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.stdout.strip() == "[]"


def test_write_bytes_replaces_a_local_file_without_leftovers(tmp_path):
  target = tmp_path / "f.bin"
  for given in (str(target), epath.Path(target)):
    paths.write_bytes(given, b"first")
    paths.write_bytes(given, b"second")
    assert target.read_bytes() == b"second"
  assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_write_bytes_to_a_bucket_goes_through_epath(fake_gcs):
  paths.write_bytes("gs://bucket/run/f.bin", b"first")
  paths.write_bytes(epath.Path("gs://bucket/run/f.bin"), b"second")
  assert epath.Path("gs://bucket/run/f.bin").read_bytes() == b"second"
  assert sorted(fake_gcs) == ["/bucket/run/f.bin"]
