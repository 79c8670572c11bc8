"""notebooks/quickstart.ipynb, executed headless as a user's Jupyter kernel runs it (nbclient), on
the tiny experiment with a few steps: every cell must run, and what it shows must be there."""
import json

import pytest

from tests import train_cli
from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def reduced(notebook, workdir) -> None:
    """The parameters cell (tagged "parameters") replaced by a few steps of the tiny experiment."""
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    names = {line.split("=")[0].strip() for line in cells[0].source.splitlines() if "=" in line}
    assert names == {"CONFIG", "TRAIN_STEPS", "HELDOUT", "SWEEP_STAGES", "SWEEP_STEPS", "WORK"}, names
    cells[0].source = "\n".join([
        'CONFIG = "tests/tiny_experiment.py"', "TRAIN_STEPS = 3", "HELDOUT = 4",
        'SWEEP_STAGES = "1"', "SWEEP_STEPS = 2", f"WORK = {str(workdir)!r}"])


def test_quickstart_runs(tmp_path, tmp_path_factory, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="the test extra (nbformat, nbclient, ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="the test extra (nbformat, nbclient, ipykernel)")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", train_cli.cache_dir(tmp_path_factory))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    reduced(notebook, tmp_path)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()   # raises CellExecutionError, with the cell and its traceback, if a cell fails

    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # skeletons, 4 belief strips, the PCK curves, the sweep's plot, the two predictions
    assert len(images) == 9, f"{len(images)} pictures shown"
    text = "".join(o.get("text", "") for o in outputs)
    assert "step 3/3" in text and "r_wrist" in text
    assert (tmp_path / "demo" / "pck_by_stage.png").stat().st_size > 0
    with open(tmp_path / "stages" / "sweep.csv") as f:
        assert len(f.read().strip().splitlines()) == 2      # header + the 1-stage model
    report = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert report["step"] == 3 and len(report["pck@0.2_per_stage"]) == 2
