"""The custom-series notebook (a user's CSV with a sentinel and a gap) executes end to end, tiny budget."""

from __future__ import annotations

import os

import nbformat
import pytest

from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "custom_series.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_executes(monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("OMNISEQ_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}})
    client.execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    # The checks, the split line and the checkpoint round trip all show in the outputs.
    assert "column 'temperature' has a missing or non-finite value" in text
    assert "column 'humidity' holds the value -9999 5 times" in text
    assert "split 'ratio' (auto: not ETT data), ratios 0.7/0.1/0.2" in text
    assert "split 'ratio', ratios 0.6/0.2/0.2" in text
    assert "same forecast from the checkpoint: True" in text
