"""Every notebook in notebooks/ runs top to bottom."""

from __future__ import annotations

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_to_run():
  """Without this, a moved notebooks/ folder would turn the test below into no test."""
  assert NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("LXMERT_NOTEBOOK_WORKDIR", str(tmp_path))
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
  client.execute(env=dict(os.environ))
  code = [c for c in notebook.cells if c.cell_type == "code" and c.source.strip()]
  assert code and all(c.execution_count is not None for c in code)
