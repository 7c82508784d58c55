"""Every notebook in notebooks/ runs top to bottom, with its small settings.

Each notebook's own cells assert what it shows (the export's outputs match
transformers', the best checkpoint is the best evaluation, ...), so a cell
that fails fails the test. The notebooks run with `LXMERT_NOTEBOOK_SMALL=1`
(the tiny configs) and write only under `LXMERT_NOTEBOOK_WORKDIR`.
"""

from __future__ import annotations

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def test_there_are_notebooks_to_run():
  """Without this, a moved notebooks/ folder would turn the test below into no test."""
  assert NOTEBOOKS


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """A JAX compilation cache the notebooks share: two of them pre-train the same tiny model."""
  return str(tmp_path_factory.mktemp("jax_compilation_cache"))


def kernel_env(workdir: pathlib.Path, compilation_cache: str) -> dict[str, str]:
  """This process's environment with the notebooks' settings."""
  env = dict(os.environ, MPLBACKEND="Agg", LXMERT_NOTEBOOK_WORKDIR=str(workdir),
             LXMERT_NOTEBOOK_SMALL="1", JAX_COMPILATION_CACHE_DIR=compilation_cache,
             # Most of a tiny run's time is XLA compiling; as the fast_compile fixture.
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  # conftest.py splits the CPU into 8 devices for the sharding tests; a
  # notebook sees the machine's own devices, as a reader's kernel does.
  env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                              if not flag.startswith(DEVICE_COUNT_FLAG))
  return env


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, compilation_cache):
  notebook = nbformat.read(path, as_version=4)
  # A cell tagged `raises-exception` would be allowed to fail; none may be.
  tagged = [i for i, cell in enumerate(notebook.cells)
            if "raises-exception" in cell.get("metadata", {}).get("tags", [])]
  assert not tagged, f"cells {tagged} of {path.name} are allowed to raise"
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   allow_errors=False,
                                   resources={"metadata": {"path": str(tmp_path)}})
  # Raises CellExecutionError, with the cell and its traceback, at the first
  # cell that fails (the notebook's own asserts included).
  client.execute(env=kernel_env(tmp_path, compilation_cache))
  code = [c for c in notebook.cells if c.cell_type == "code" and c.source.strip()]
  assert code and all(c.execution_count is not None for c in code)
  assert any(tmp_path.iterdir()), f"{path.name} wrote nothing under LXMERT_NOTEBOOK_WORKDIR"
