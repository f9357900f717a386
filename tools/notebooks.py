"""Notebook housekeeping: stamp the Colab badge, setup cell and kernelspec, run a notebook in full mode and record how it ran.

    python -m tools.notebooks stamp notebooks/*.ipynb   # badge + setup cell from helpers.env.REPO_SLUG, installed kernelspec
    python -m tools.notebooks run notebooks/04_pretraining.ipynb [--smoke]

``run`` executes top to bottom in a fresh kernel and rewrites the file only if every cell succeeded, with
``metadata.course = {mode, device, seconds, peak_rss_mib, ...}``; committed outputs come from here, never by hand.
Before writing, widget outputs get a readable ``text/plain`` and text progress bars keep only their final state, so an
untrusted notebook (a fresh clone) or a viewer without a widget manager shows what the run ended with.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import threading
import time
from pathlib import Path

import nbformat

from helpers.data import nodeps_pins
from helpers.env import REPO_SLUG, atomic_write_bytes

BADGE_PREFIX = "[![Open In Colab]"
SETUP_TAG = "setup"
# What `make setup` installs (ipykernel's spec); JupyterLab rewrites a differing kernelspec on open: "modified".
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MODEL_REF = "IPY_MODEL_"


def course_name(path: Path) -> str:
    """The notebook's path under ``notebooks/``: ``04_pretraining.ipynb``, or ``solutions/03_gpt_model.ipynb``."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name == "solutions" else path.name


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO_SLUG}/blob/main/notebooks/{name}"
    return f"{BADGE_PREFIX}(https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def setup_source() -> str:
    return (
        "# Setup. On Colab: install the course (Colab's own torch is kept). Locally (make lab): nothing to do.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    !pip install -q "gpt-inside-and-out @ git+https://github.com/{REPO_SLUG}"\n'
        f"    !pip install -q --no-deps {' '.join(nodeps_pins().values())}"
    )


def stamp(nb) -> bool:
    """Put the badge in the first (title) cell and the setup cell second. Returns True if anything changed."""
    path_name = nb.metadata.get("course_name")
    if path_name is None:
        raise ValueError("notebook metadata lacks 'course_name'; stamp it through stamp_file(path)")
    changed = False
    title = nb.cells[0]
    if title.cell_type != "markdown":
        raise ValueError("the first cell must be the markdown title cell")
    lines = [ln for ln in title.source.splitlines() if not ln.startswith(BADGE_PREFIX)]
    new_title = "\n".join([badge(path_name), "", *lines]) if lines and lines[0] else "\n".join([badge(path_name), *lines])
    if title.source != new_title:
        title.source, changed = new_title, True
    setup = nb.cells[1] if len(nb.cells) > 1 else None
    if setup is None or SETUP_TAG not in setup.metadata.get("tags", []):
        setup = nbformat.v4.new_code_cell(metadata={"tags": [SETUP_TAG]})
        nb.cells.insert(1, setup)
        changed = True
    if setup.source != setup_source():
        setup.source, changed = setup_source(), True
    return changed


def kernelspec() -> dict:
    """The kernelspec of the installed python3 kernel, as JupyterLab will write it; KERNELSPEC if none is installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNELSPEC["name"])
    except NoSuchKernel:
        return dict(KERNELSPEC)
    return {"display_name": spec.display_name, "language": spec.language, "name": KERNELSPEC["name"]}


def stamp_file(path: Path) -> bool:
    """``stamp`` plus the installed kernelspec, kept out of ``stamp`` so its checks don't depend on this machine's Jupyter."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    nb.metadata["course_name"] = course_name(path)
    changed = stamp(nb)
    spec = kernelspec()
    if nb.metadata.get("kernelspec") != spec:
        nb.metadata["kernelspec"], changed = spec, True
    if changed:
        _write(nb, path)
    return changed


def _write(nb, path: Path) -> None:
    atomic_write_bytes(Path(path), (nbformat.writes(nb) + "\n").encode())


def widget_fallbacks(nb) -> None:
    """Replace each widget output's ``text/plain`` (the widget's repr when first displayed: a 0% bar, a ``VBox(...)``)
    with what the widget ended as, read from the widget state the run saved in the notebook metadata."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view:
                out.data["text/plain"] = _widget_text(state, view["model_id"])


def _widget_text(state: dict, model_id: str) -> str:
    model = state.get(model_id.removeprefix(MODEL_REF), {})
    layout = state.get(model.get("state", {}).get("layout", "").removeprefix(MODEL_REF), {}).get("state", {})
    if layout.get("visibility") == "hidden" or layout.get("display") == "none":
        return ""  # e.g. a finished tqdm bar with leave=False, which a live run hides
    children = [state.get(ref.removeprefix(MODEL_REF), {}) for ref in model.get("state", {}).get("children", [])]
    kinds = [child.get("model_name") for child in children]
    is_bar = len(kinds) == 3 and kinds[0] == kinds[2] == "HTMLModel" and kinds[1] in ("FloatProgressModel", "IntProgressModel")
    if model.get("model_name") == "HBoxModel" and is_bar:
        # tqdm.notebook: description and percentage left of the bar, counts and rate right of it, HTML-escaped and
        # padded with U+2007 figure spaces, which split() treats as whitespace.
        text = f"{children[0]['state'].get('value', '')} {children[2]['state'].get('value', '')}"
        return " ".join(html.unescape(text).split())
    labels = _descriptions(state, model_id)
    return f"[interactive control{': ' + ', '.join(labels) if labels else ''} — run the cell to use it]"


def _descriptions(state: dict, model_id: str) -> list[str]:
    """The descriptions of the controls inside a widget, in display order (an Output widget has none)."""
    model = state.get(model_id.removeprefix(MODEL_REF), {}).get("state", {})
    if model.get("children"):
        return [label for ref in model["children"] for label in _descriptions(state, ref)]
    return [model["description"]] if model.get("description") else []


def collapse_progress_streams(nb) -> None:
    r"""Keep only what a terminal ends up showing of lines redrawn with '\r' (text tqdm bars): the text after the last
    '\r'. nbclient stores every flush as its own stream output, so adjacent ones of one stream are merged first; its
    ``coalesce_streams`` would also merge streams across other outputs and reorder stdout before stderr."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.outputs:
            last = merged[-1] if merged else None
            if out.output_type == "stream" and last and last.output_type == "stream" and last.name == out.name:
                last.text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream" and "\r" in out.text:
                # rstrip first: a '\r\n' line ending is not a redraw.
                out.text = "\n".join(line.rstrip("\r").rpartition("\r")[2] for line in out.text.split("\n"))
        cell.outputs = merged


class _PeakRSS:
    """Samples the resident memory of this process's children (the kernel) while a notebook runs."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self._me, self._interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        import psutil

        while not self._stop.is_set():
            for child in self._me.children(recursive=True):
                try:
                    self.peak = max(self.peak, child.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(path: Path, smoke: bool = False, write: bool = True, timeout: int = 3600) -> dict:
    """Execute ``path`` in a fresh kernel (full mode unless ``smoke``); return and store how it ran.

    ``timeout`` bounds each cell, so a stuck kernel fails the run instead of hanging it."""
    from nbclient import NotebookClient

    import helpers.env as env

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    saved = os.environ.get("COURSE_SMOKE")
    os.environ["COURSE_SMOKE"] = "1" if smoke else "0"
    try:
        # store_widget_state (nbclient's default, relied on): the saved state renders the widgets when the notebook is
        # trusted, and widget_fallbacks reads it.
        resources = {"metadata": {"path": str(path.parent)}}
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True, resources=resources)
        start = time.perf_counter()
        with _PeakRSS() as rss:
            client.execute()
        seconds = time.perf_counter() - start
    finally:
        if saved is None:
            os.environ.pop("COURSE_SMOKE", None)
        else:
            os.environ["COURSE_SMOKE"] = saved
    info = env.report()
    record = {
        "mode": "smoke" if smoke else "full",
        "device": info["cuda"] or "cpu",
        "threads": info["threads"],
        "torch": info["torch"],
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(rss.peak / 2**20),
        "cpu_count": os.cpu_count(),
    }
    if write:
        widget_fallbacks(nb)
        collapse_progress_streams(nb)
        nb.metadata["course"] = record
        _write(nb, path)
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_stamp = sub.add_parser("stamp")
    p_stamp.add_argument("paths", nargs="+", type=Path)
    p_run = sub.add_parser("run")
    p_run.add_argument("paths", nargs="+", type=Path)
    p_run.add_argument("--smoke", action="store_true", help="run in smoke mode (the file is not rewritten)")
    args = parser.parse_args(argv)
    for path in args.paths:
        if args.cmd == "stamp":
            print(f"{path}: {'stamped' if stamp_file(path) else 'unchanged'}")
        else:
            record = run(path, smoke=args.smoke, write=not args.smoke)
            print(f"{path}: {json.dumps(record)}", flush=True)


if __name__ == "__main__":
    main()
