"""Test set-up: run JAX on 8 fake CPU devices, before anything imports jax.

Also the fixtures several test files share. None is autouse, and none takes
the name of a fixture a test file defines for itself, so a file's own
definition keeps working until it is dropped in favour of these.
"""

import os
import shutil

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def fast_compile():
  """Turns XLA's optimisations off for a module whose time is mostly compiling.

  Use with `pytestmark = pytest.mark.usefixtures("fast_compile")`; the
  setting is restored when the module is done, so numerical tests elsewhere
  still run optimised programs.
  """
  import jax  # pylint: disable=import-outside-toplevel
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache for one module whose runs compile the same programs.

  Use with `pytestmark = pytest.mark.usefixtures("compilation_cache")`; the
  settings are restored when the module is done.
  """
  import jax  # pylint: disable=import-outside-toplevel
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  previous = {n: getattr(jax.config, n) for n in names}
  for name, value in zip(names, (str(tmp_path_factory.mktemp("jax_cache")), 0, -1)):
    jax.config.update(name, value)
  yield
  for name, value in previous.items():
    jax.config.update(name, value)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
  """Prepared pre-training demo data matching configs/pretrain.py:tiny (F=32).

  Built once per session and read-only: the training and command-line tests
  only read it.
  """
  from lxmert_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  return data_lib.build_demo_data(str(tmp_path_factory.mktemp("demo_data")), num_images=24,
                                  feature_dim=32, tasks=("pretrain",))


@pytest.fixture(scope="session")
def _pristine_small_corpus(tmp_path_factory):
  from lxmert_jax.data.prepare import synthetic_corpus  # pylint: disable=import-outside-toplevel
  root = str(tmp_path_factory.mktemp("small_corpus") / "corpus")
  synthetic_corpus.build_synthetic_corpus(root, num_images=16, seed=7, feature_dim=8,
                                          num_boxes=4)
  return root


@pytest.fixture
def small_corpus(_pristine_small_corpus, tmp_path):
  """A raw synthetic corpus (reference TSV/JSON layout) of 16 images, F=8, 4 boxes.

  Each test gets its own copy, so it may edit the files (the bad-input tests
  do); the corpus itself is generated once per session.
  """
  root = str(tmp_path / "corpus")
  shutil.copytree(_pristine_small_corpus, root)
  return root
