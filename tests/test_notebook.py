"""notebooks/analysis.ipynb runs top to bottom on the fixture sweep and shows its leaderboard and plots."""

import pandas as pd
import pytest

from harness.results.tables import leaderboard, leaderboard_markdown, summarize_frame

from .conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

FIXTURE = REPO / "tests" / "fixtures" / "results_small.parquet"


def test_analysis_notebook_on_fixture(monkeypatch):
    monkeypatch.setenv("SPECLAB_RESULTS", str(FIXTURE))  # the kernel inherits this process's environment
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()

    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    markdown = "\n".join(o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    summary = summarize_frame(pd.read_parquet(FIXTURE))
    assert leaderboard_markdown(summary) in markdown
    board = leaderboard(summary)
    assert f"{board.loc['pld', 'overall']:.2f}x |" in markdown
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 6  # heatmap + the five standard plots
    assert any(str(FIXTURE) in o.get("text", "") for o in outputs if o.output_type == "stream")
