"""The notebooks: run time and peak memory (the kernel's resident set) of each chapter.

Full mode is read from the committed notebooks: ``make notebooks`` stores how the full run went in
``metadata.course`` (:func:`tools.notebooks.run`). Smoke mode takes minutes for the whole course, so it is
measured live only on request (``make bench NOTEBOOKS=1``): each notebook in a fresh kernel, one after the other.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from benchmarks.common import Section
from helpers.env import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"
#: Full-mode peak memory above this is flagged: a learner's laptop (or a free Colab) must run every chapter.
PEAK_LIMIT_MIB = 4096
#: The smoke suite (every notebook) should fit in this many seconds on 2 cores.
SMOKE_LIMIT_S = 600
COLUMNS = ["notebook", "full s", "full peak MiB", "full peak <= 4 GiB", "smoke s", "smoke peak MiB"]


def _smoke(path: Path) -> tuple[float | None, float | None, str | None]:
    """(seconds, peak MiB, error) of one smoke-mode run in a fresh kernel."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    from tools.notebooks import run

    try:
        record = run(path, smoke=True, write=False, timeout=SMOKE_LIMIT_S)
    except (CellExecutionError, CellTimeoutError) as err:
        return None, None, str(err).strip().splitlines()[-1][:200]
    return record["seconds"], record["peak_rss_mib"], None


def notebooks(notebook_dir: Path = NOTEBOOK_DIR, live: bool = False) -> Section:
    paths = sorted(Path(notebook_dir).glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"No notebooks (*.ipynb) in {notebook_dir}; pass the course's notebooks folder.")
    section = Section("notebooks", "Notebooks: wall time and peak memory (kernel RSS)", COLUMNS)
    for path in paths:
        meta = nbformat.read(path, as_version=4).metadata.get("course") or {}
        full = meta if meta.get("mode") == "full" else {}
        if not full:
            section.notes.append(f"{path.name}: no committed full-mode run (make notebooks NB=notebooks/{path.name}).")
        peak = full.get("peak_rss_mib")
        row = {
            "notebook": path.name,
            "full s": full.get("seconds"),
            "full peak MiB": peak,
            "full peak <= 4 GiB": None if peak is None else peak <= PEAK_LIMIT_MIB,
            "smoke s": None,
            "smoke peak MiB": None,
        }
        if live:
            row["smoke s"], row["smoke peak MiB"], error = _smoke(path)
            if error:
                section.notes.append(f"{path.name}: the smoke run failed: {error}")
        section.rows.append(row)
    full_total = sum(r["full s"] or 0 for r in section.rows)
    section.notes.append(
        f"Full mode: {full_total / 60:.1f} min for the notebooks that have a committed run "
        "(threads and device as recorded in each notebook's metadata)."
    )
    if live:
        smoke_total = sum(r["smoke s"] or 0 for r in section.rows)
        section.notes.append(
            f"Smoke mode, measured now, one notebook at a time: {smoke_total / 60:.1f} min in all "
            f"(target <= {SMOKE_LIMIT_S // 60} min on 2 cores)."
        )
    else:
        section.notes.append("Smoke mode not measured: run `make bench NOTEBOOKS=1` (takes minutes).")
    return section
