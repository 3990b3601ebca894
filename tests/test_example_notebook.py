"""examples/from_python.ipynb, the README's walk-through, runs clean from top to bottom (nbclient, a real
kernel) on a workspace made the quickstart's way."""

from __future__ import annotations

from pathlib import Path

import pytest
import scored_workspace as sw

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "from_python.ipynb"


@pytest.mark.subprocess  # nbclient starts a Jupyter kernel
def test_the_example_notebook_runs_clean(tmp_path_factory, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    ws = sw.shared(tmp_path_factory)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")  # committed without outputs
    monkeypatch.setenv("POOLSIEVE_WORKSPACE", str(ws.root))
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first cell that fails
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any('class="poolsieve-pairs"' in h and "data:image/jpeg;base64," in h for h in html)
    assert "['basic', 'clip30', 'no_filter']" in outputs[0]["data"]["text/plain"]
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
