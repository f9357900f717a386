"""The benchmarks run end to end at tiny sizes and write the expected tables. Their timings are not tested."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from benchmarks import attention, convergence, generation, notebooks, profiling, training
from benchmarks.common import fmt, interleaved, markdown_table, result_name
from benchmarks.run import SECTIONS

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = {
    "training": training.COLUMNS,
    "generation": generation.COLUMNS,
    "attention": attention.COLUMNS,
    "convergence": convergence.COLUMNS,
    "notebooks": notebooks.COLUMNS,
}


def bench(*args, timeout=300):
    # One thread: tiny models on a busy machine otherwise spend their time waiting for a descheduled second thread.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny run of every section, with two made-up notebooks: one over the memory limit, one never run."""
    nb_dir = tmp_path_factory.mktemp("notebooks")
    big = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1 + 1\nassert x == 2")])
    big.metadata["course"] = {"mode": "full", "seconds": 12.5, "peak_rss_mib": 5000}
    nbformat.write(big, nb_dir / "01_big.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hi')")]), nb_dir / "02_fresh.ipynb")
    out = tmp_path_factory.mktemp("results")
    proc = bench("--tiny", "--notebooks", "--notebook-dir", str(nb_dir), "--out", str(out), "--steps", "12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (json_path,) = out.glob("*.json")
    (md_path,) = out.glob("*.md")
    assert json_path.stem == md_path.stem and json_path.stem.endswith("-tiny")
    return json.loads(json_path.read_text()), md_path.read_text(), proc.stdout


def test_every_section_has_its_columns_in_json_and_markdown(tiny):
    result, md, stdout = tiny
    assert list(result["sections"]) == list(SECTIONS)
    for name, columns in COLUMNS.items():
        section = result["sections"][name]
        assert section["columns"] == columns
        assert section["rows"], f"{name} has no rows"
        for row in section["rows"]:
            assert set(columns) <= set(row), f"{name} row lacks {set(columns) - set(row)}"
        header = "| " + " | ".join(columns) + " |"
        assert header in md and header in stdout
    assert "## Targets" in md


def test_machine_table(tiny):
    machine = tiny[0]["machine"]
    for key in ("cpu", "threads", "torch", "device", "transformers", "matmul peak fp32 GFLOP/s"):
        assert machine[key] not in (None, "")
    assert isinstance(machine["threads"], int) and machine["threads"] >= 1
    assert machine["matmul peak fp32 GFLOP/s"] > 0


def test_training_rows_compare_three_sizes(tiny):
    rows = tiny[0]["sections"]["training"]["rows"]
    assert len({r["size"] for r in rows}) == 3
    for r in rows:
        assert min(r["ours tok/s"], r["HF sdpa tok/s"], r["HF eager tok/s"]) > 0
        assert r["ours / HF sdpa"] == pytest.approx(r["ours tok/s"] / r["HF sdpa tok/s"])
        assert 0 < r["ours MFU %"] < 100


def test_generation_rows_agree_on_tokens(tiny):
    rows = tiny[0]["sections"]["generation"]["rows"]
    assert [r["new tokens"] for r in rows] == [8, 16]
    assert all(r["same tokens"] is True for r in rows)
    assert all(r["cache / no-cache"] == pytest.approx(r["ours cache tok/s"] / r["ours no-cache tok/s"]) for r in rows)


def test_attention_rows_grow_with_length(tiny):
    rows = tiny[0]["sections"]["attention"]["rows"]
    assert [r["T"] for r in rows] == [16, 32]
    assert rows[1]["scores MiB"] == pytest.approx(4 * rows[0]["scores MiB"])  # the T² matrix


def test_convergence_row_reports_the_run(tiny):
    (row,) = tiny[0]["sections"]["convergence"]["rows"]  # on a CPU the defaults are fp32 eager: one run
    assert row["steps"] == 12
    assert 0 < row["final val loss"] < 10
    assert row["target val loss"] == convergence.TARGET_LOSS
    assert (row["step at target"] is None) == (row["s to target"] is None)


def test_notebooks_flags_memory_and_missing_runs(tiny):
    result, md, _ = tiny
    section = result["sections"]["notebooks"]
    big, fresh = section["rows"]
    assert big["notebook"] == "01_big.ipynb" and big["full peak MiB"] == 5000 and big["full peak <= 4 GiB"] is False
    assert fresh["full s"] is None and fresh["full peak <= 4 GiB"] is None
    assert any("02_fresh.ipynb: no committed full-mode run" in note for note in section["notes"])
    assert big["smoke s"] > 0 and fresh["smoke peak MiB"] > 0  # both were run live, in smoke mode
    memory = next(t for t in result["targets"] if t["target"].startswith("notebooks: full-mode peak"))
    assert memory["met"] is False and "01_big.ipynb" in memory["measured"]
    assert "**NO**" in md


def test_targets_cover_the_issue(tiny):
    names = " ".join(t["target"] for t in tiny[0]["targets"])
    for part in ("1.1x HF sdpa", "KV cache >= 5x", "1.0x transformers", "4 GiB", "smoke suite", "make bench"):
        assert part in names
    whole = next(t for t in tiny[0]["targets"] if t["target"].startswith("make bench"))
    assert whole["met"] is None  # a tiny run says nothing about the real one


@pytest.mark.parametrize(
    "args, message", [(["--sections", "training,nope"], "choose from"), (["--steps", "0"], "--steps must be a positive")]
)
def test_bad_arguments_are_refused_with_a_hint(args, message):
    proc = bench(*args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr


def test_first_training_size_is_chapter_04s_model():
    from helpers.recipes.pretrain import model_config

    config, _ = training.sizes(torch.device("cpu"))[0]
    assert config == model_config(training.COURSE_VOCAB)
    assert len(training.sizes(torch.device("cpu"))) >= 3


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in bench(): tiny models, busy machine
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("what, names", [("training", ["ours", "HF sdpa"]), ("generation", ["ours", "HF"])])
def test_profiling_tables_name_the_operators(what, names, capsys, one_thread):
    tables = profiling.main([what, "--tiny", "--rows", "5"])
    assert list(tables) == names
    assert all("aten::" in t for t in tables.values())
    assert f"===== {names[1]}:" in capsys.readouterr().out


def test_interleaved_takes_turns_and_returns_medians():
    calls = []
    seconds = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), 1, 3)
    assert calls == ["a", "b"] * 4 and set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())


def test_formatting_and_names():
    assert [fmt(None), fmt(True), fmt(False), fmt(12345), fmt(1234.5), fmt(12.345), fmt(0.01234)] == [
        "—",
        "yes",
        "**NO**",
        "12,345",
        "1,234",
        "12.3",
        "0.012",
    ]
    assert markdown_table(["a", "b"], [{"a": 1}]) == "| a | b |\n|---|---|\n| 1 | — |"
    info = {"device": "cpu", "cpu": "AMD EPYC 7B13 (64-Core)", "threads": 2}
    assert result_name(info) == "cpu-amd-epyc-7b13-64-core-2t" and result_name(info, tiny=True).endswith("-tiny")
    assert result_name({"device": "NVIDIA H200", "cpu": "x", "threads": 8}) == "nvidia-h200"
