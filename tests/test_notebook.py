"""notebooks/QuantizationAwareTraining.ipynb: stored without outputs, and executes end to
end in a fresh kernel (nbclient, ipykernel and nbformat are in the [test] extra)."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "QuantizationAwareTraining.ipynb")


def read():
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_stored_without_outputs():
    nb = read()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None


def test_notebook_executes_end_to_end(monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = read()
    # the kernel is a child process: let it import qatfhe from this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()   # raises CellExecutionError naming the failing cell
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs if out.output_type == "stream")
    assert "same class as the fake-quant network on every test point: True" in text
    assert "integer-circuit accuracy" in text
