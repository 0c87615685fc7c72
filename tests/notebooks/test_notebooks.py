"""Every notebook executes end to end on a tiny budget (OMNISEQ_NOTEBOOK_SMOKE=1) and shows what it teaches."""

from __future__ import annotations

import os

import nbformat
import pytest

from tests.conftest import REPO_ROOT

# notebook -> lines its outputs must show
NOTEBOOKS = {
    "forecasting.ipynb": ["synthetic (smoke)"],
    # A user's CSV with a sentinel and a gap: the checks, the split line and the checkpoint round trip.
    "custom_series.ipynb": [
        "column 'temperature' has a missing or non-finite value",
        "column 'humidity' holds the value -9999 5 times",
        "split 'ratio' (auto: not ETT data), ratios 0.7/0.1/0.2",
        "split 'ratio', ratios 0.6/0.2/0.2",
        "same forecast from the checkpoint: True",
    ],
}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(name):
    notebook = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_every_notebook_is_tested():
    assert sorted(p.name for p in (REPO_ROOT / "notebooks").glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes(name, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("OMNISEQ_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}})
    client.execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    missing = [line for line in NOTEBOOKS[name] if line not in text]
    assert not missing, f"{name} outputs lack {missing}"
