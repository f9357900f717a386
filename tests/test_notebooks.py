"""The committed notebooks: collected by nbval, stamped, shaped as lessons, with full-mode outputs and no errors."""

from pathlib import Path

import nbformat
import pytest

from tools import notebooks

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SOLUTIONS = sorted((NOTEBOOK_DIR / "solutions").glob("*.ipynb"))  # a chapter's exercises, solved apart from it


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"
    assert NOTEBOOKS[0].name == "00_start_here.ipynb"


def test_nbval_collected_every_notebook(request):
    if not request.config.getoption("nbval_lax", default=False) and not request.config.getoption("nbval", default=False):
        pytest.skip("run with --nbval-lax (as `make test` does) to check notebook collection")
    collected = {Path(str(item.fspath)).resolve() for item in request.session.items}
    missing = [p.name for p in NOTEBOOKS + SOLUTIONS if p.resolve() not in collected]
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
        assert "## Exercises" in markdown, f"{path.name}: exercises"
        if (NOTEBOOK_DIR / "solutions" / path.name).exists():
            assert f"(solutions/{path.name})" in markdown, f"{path.name}: link the solutions notebook"
            assert "<details>" not in markdown, f"{path.name}: the solutions are in solutions/{path.name}, not here"
        else:
            assert "<details>" in markdown, f"{path.name}: exercises with solutions"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_are_stamped_and_belong_to_a_chapter(path):
    nb = nbformat.read(path, as_version=4)
    nb.metadata["course_name"] = notebooks.course_name(path)
    assert not notebooks.stamp(nb), f"solutions/{path.name}: run `make stamp`"
    assert (NOTEBOOK_DIR / path.name).exists(), f"solutions/{path.name} has no chapter notebooks/{path.name}"
    assert f"# {path.name[:2]} · Solutions" in nb.cells[0].source
    assert any("solution" in c.metadata.get("tags", []) for c in nb.cells), "tag the solution cells 'solution'"


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=notebooks.course_name)
def test_committed_outputs_are_a_clean_full_run(path):
    nb = nbformat.read(path, as_version=4)
    record = nb.metadata.get("course", {})
    name = notebooks.course_name(path)
    assert record.get("mode") == "full", f"{name}: commit the outputs of `make notebooks NB=notebooks/{name}`"
    assert {"device", "seconds", "peak_rss_mib"} <= record.keys()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code if c.source.strip()), f"{path.name}: cells not executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: committed notebook holds an error output"
    counts = [c.execution_count for c in code if c.source.strip()]
    assert counts == sorted(counts), f"{path.name}: cells were not run top to bottom"


def _widget(name: str, **state) -> dict:
    return {"model_module": "@jupyter-widgets/controls", "model_module_version": "2.0.0", "model_name": name, "state": state}


def _view(model_id: str, stale: str) -> dict:
    view = {"model_id": model_id, "version_major": 2, "version_minor": 0}
    return nbformat.v4.new_output("display_data", data={notebooks.WIDGET_VIEW: view, "text/plain": stale})


TQDM_CHILDREN = ["IPY_MODEL_left", "IPY_MODEL_progress", "IPY_MODEL_right"]


def _widget_notebook():
    """A tqdm.notebook bar, a hidden (leave=False) one and a control panel, displayed with their first-state reprs."""
    state = {
        "bar": _widget("HBoxModel", children=TQDM_CHILDREN, layout="IPY_MODEL_lay"),
        "lay": _widget("LayoutModel"),
        "left": _widget("HTMLModel", value="training:\u2007100%"),
        "progress": _widget("FloatProgressModel", value=900.0, max=900.0, bar_style="success"),
        "right": _widget("HTMLModel", value="\u2007900/900\u2007[09:15&lt;00:00,\u2007\u20071.50s/step,\u2007loss=1]"),
        "gone": _widget("HBoxModel", children=TQDM_CHILDREN, layout="IPY_MODEL_hid"),
        "hid": _widget("LayoutModel", visibility="hidden"),
        "panel": _widget("VBoxModel", children=["IPY_MODEL_prompt", "IPY_MODEL_row", "IPY_MODEL_out"]),
        "prompt": _widget("TextModel", description="prompt", value="Au commencement"),
        "row": _widget("HBoxModel", children=["IPY_MODEL_temp", "IPY_MODEL_go"]),
        "temp": _widget("FloatSliderModel", description="temperature", value=0.8),
        "go": _widget("ButtonModel", description="generate"),
        "out": _widget("OutputModel", outputs=[{"output_type": "stream", "name": "stdout", "text": "Au commencement, il\n"}]),
    }
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {notebooks.WIDGET_STATE: {"state": state, "version_major": 2, "version_minor": 0}}
    cell = nbformat.v4.new_code_cell("train(); panel()")
    cell.outputs = [
        _view("bar", "training:   0%|          | 0/900 [00:00<?, ?step/s]"),
        _view("gone", "plain:   0%|          | 0/200 [00:00<?, ?it/s]"),
        _view("panel", "VBox(children=(Text(value='Au commencement', description='prompt'), ..."),
    ]
    nb.cells.append(cell)
    return nb


def test_widget_fallbacks_show_the_final_bar_and_describe_controls():
    nb = _widget_notebook()
    notebooks.widget_fallbacks(nb)
    texts = [out.data["text/plain"] for out in nb.cells[0].outputs]
    assert texts == [
        "training: 100% 900/900 [09:15<00:00, 1.50s/step, loss=1]",
        "",
        "[interactive control: prompt, temperature, generate — run the cell to use it]",
    ]
    nbformat.validate(nb)


def test_collapse_progress_streams_keeps_each_bars_final_state():
    cell = nbformat.v4.new_code_cell("fit()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="\rtraining:   0%|          | 0/2"),
        nbformat.v4.new_output("stream", name="stderr", text="\rtraining:  50%|##   | 1/2\rtraining: 100%|#####| 2/2\n"),
        nbformat.v4.new_output("stream", name="stdout", text="done\r\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"}),
        nbformat.v4.new_output("stream", name="stdout", text="after\n"),
    ]
    nb = nbformat.v4.new_notebook(cells=[cell])
    notebooks.collapse_progress_streams(nb)
    assert [(o.output_type, o.get("name"), o.get("text")) for o in cell.outputs] == [
        ("stream", "stderr", "training: 100%|#####| 2/2\n"),
        ("stream", "stdout", "done\n"),
        ("display_data", None, None),
        ("stream", "stdout", "after\n"),
    ]


# A test of stamp_file, not of the committed notebooks: those get the kernelspec when next re-stamped, and it comes from
# the Jupyter installed where they are stamped.
def test_stamp_file_writes_the_installed_kernelspec(tmp_path):
    path = tmp_path / "99_x.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 99 · X")])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)
    assert notebooks.stamp_file(path)
    assert nbformat.read(path, as_version=4).metadata.kernelspec == notebooks.kernelspec()
    assert not notebooks.stamp_file(path)


def test_kernelspec_falls_back_to_ipykernels_without_an_installed_one(monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def missing(self, name):
        raise NoSuchKernel(name)

    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", missing)
    assert notebooks.kernelspec() == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
