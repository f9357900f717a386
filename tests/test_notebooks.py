"""The committed notebooks: collected by nbval, stamped, shaped as lessons, with full-mode outputs and no errors."""

from pathlib import Path

import nbformat
import pytest

from helpers import notebooks

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"
    assert NOTEBOOKS[0].name == "00_start_here.ipynb"


def test_nbval_collected_every_notebook(request):
    if not request.config.getoption("nbval_lax", default=False) and not request.config.getoption("nbval", default=False):
        pytest.skip("run with --nbval-lax (as `make test` does) to check notebook collection")
    collected = {Path(str(item.fspath)).resolve() for item in request.session.items}
    missing = [p.name for p in NOTEBOOKS if p.resolve() not in collected]
    assert not missing, f"nbval did not collect {missing}: pass notebooks/ to pytest"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stamped_and_shaped_as_a_lesson(path):
    nb = nbformat.read(path, as_version=4)
    nb.metadata["course_name"] = path.name
    assert not notebooks.stamp(nb), f"{path.name}: run `make stamp` (badge or setup cell out of date)"
    title = nb.cells[0].source
    assert f"# {path.name[:2]} · " in title, f"{path.name}: the title cell starts with '# {path.name[:2]} · Title'"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("Learning goals", "## 1.", "## Summary"):
        assert heading in markdown, f"{path.name}: missing '{heading}'"
    if path.name != "00_start_here.ipynb":
        assert "## Exercises" in markdown and "<details>" in markdown, f"{path.name}: exercises with solutions"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_a_clean_full_run(path):
    nb = nbformat.read(path, as_version=4)
    record = nb.metadata.get("course", {})
    assert record.get("mode") == "full", f"{path.name}: commit the outputs of `make notebooks NB=notebooks/{path.name}`"
    assert {"device", "seconds", "peak_rss_mib"} <= record.keys()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code if c.source.strip()), f"{path.name}: cells not executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: committed notebook holds an error output"
    counts = [c.execution_count for c in code if c.source.strip()]
    assert counts == sorted(counts), f"{path.name}: cells were not run top to bottom"
