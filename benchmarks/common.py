"""What every benchmark section shares: the machine, timing, the measured matmul peak, tables and result files."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from helpers.env import sync

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Section:
    """One table of the report: ``rows`` are dicts keyed by ``columns`` (raw numbers; formatting is for Markdown)."""

    name: str
    title: str
    columns: list[str]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---- the machine ------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def machine_info(device: torch.device) -> dict:
    import transformers

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def result_name(info: dict, tiny: bool = False) -> str:
    """The file stem of a machine's results: the GPU's name, or the CPU's name and thread count."""
    what = info["device"] if info["device"] not in ("cpu", "mps") else f"{info['device']}-{info['cpu']}-{info['threads']}t"
    slug = re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-")
    return slug + ("-tiny" if tiny else "")


# ---- timing -----------------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """The median seconds of one call of each function, timed in turns (a, b, c, a, b, c, ...) after warm-up calls.

    Taking turns spreads a slow spell of the machine (another process, thermal throttling) over every contender
    instead of penalising whichever ran during it; the median ignores the odd outlier.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """GFLOP/s of an (n, n) @ (n, n) matmul in ``dtype``: the attainable peak that MFU is measured against."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = interleaved({"mm": lambda: a @ b}, device, warmup=2, repeats=repeats)["mm"]
    return 2 * n**3 / seconds / 1e9


def precisions(device: torch.device) -> list[str]:
    """Precisions to train in: fp32 everywhere, plus bf16 autocast where it pays (CUDA)."""
    return ["fp32", "bf16"] if device.type == "cuda" and torch.cuda.is_bf16_supported() else ["fp32"]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- tables and files -------------------------------------------------------------------------------------


def fmt(value) -> str:
    """A table cell: thousands separators for big numbers, three significant digits or so for small ones."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        size = abs(value)
        if size >= 1000:
            return f"{value:,.0f}"
        if size >= 100:
            return f"{value:.0f}"
        if size >= 10:
            return f"{value:.1f}"
        if size >= 1 or size == 0:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def markdown_table(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(info: dict, sections: list[Section], targets: list[dict], total_s: float, command: str) -> str:
    head = [
        "# Benchmarks",
        "",
        f"`{command}` took {total_s:.0f} s on this machine.",
        "",
        markdown_table(list(info), [info]),
    ]
    body = []
    for s in sections:
        body += ["", f"## {s.title}", "", markdown_table(s.columns, s.rows)]
        if s.notes:
            body += [""] + [f"- {note}" for note in s.notes]
        body += ["", f"_This section took {s.seconds:.0f} s._"]
    body += ["", "## Targets", "", markdown_table(["target", "measured", "met"], targets)]
    return "\n".join(head + body) + "\n"


def write_results(
    out_dir: Path, stem: str, info: dict, sections: list[Section], targets: list[dict], total_s: float, command: str
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (every number) and ``<stem>.md`` (the tables) into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command,
        "total_s": round(total_s, 1),
        "machine": info,
        "sections": {s.name: asdict(s) for s in sections},
        "targets": targets,
    }
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    md_path.write_text(markdown_report(info, sections, targets, total_s, command))
    return json_path, md_path
