"""Run the benchmarks, print the tables and write them to benchmarks/results/<machine>.json and .md.

python -m benchmarks.run                      # everything but the live notebook runs (make bench)
python -m benchmarks.run --notebooks          # also run every notebook in smoke mode (make bench NOTEBOOKS=1)
python -m benchmarks.run --sections training,generation --steps 500
python -m benchmarks.run --tiny --out /tmp/b  # seconds: checks that every section runs (the tests do this)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SECTIONS = ("training", "generation", "attention", "convergence", "notebooks")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks that everything runs, in seconds")
    parser.add_argument("--notebooks", action="store_true", help="also run each notebook in smoke mode (minutes)")
    parser.add_argument("--notebook-dir", type=Path, default=None, help="where the notebooks are (default: notebooks/)")
    parser.add_argument("--steps", type=int, default=None, help="training steps of the convergence run (default 2000)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the models (worth it on a GPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the course's choice, helpers.env)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the result files (default benchmarks/results)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        parser.error(f"unknown or no sections {unknown or args.sections!r}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen]
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive number of training steps, got {args.steps}")
    if args.steps is None:
        args.steps = 30 if args.tiny else 2000
    return args


def targets(sections: dict, total_s: float, complete: bool) -> list[dict]:
    """The course's speed and memory targets, each with what was measured and whether it is met (None: not measured)."""
    out = []
    if "training" in sections:
        fp32 = [r for r in sections["training"].rows if r["precision"] == "fp32"]
        worst = min(fp32, key=lambda r: r["ours / HF sdpa"])
        out.append(
            {
                "target": "training: ours >= 1.1x HF sdpa tokens/s at every size (fp32)",
                "measured": f"{worst['ours / HF sdpa']:.2f}x at worst ({worst['size']})",
                "met": worst["ours / HF sdpa"] >= 1.1,
            }
        )
    if "generation" in sections:
        rows = sections["generation"].rows
        longest = rows[-1]
        out.append(
            {
                "target": f"generation: KV cache >= 5x no cache at {longest['new tokens']} new tokens",
                "measured": f"{longest['cache / no-cache']:.1f}x",
                "met": longest["cache / no-cache"] >= 5,
            }
        )
        worst = min(rows, key=lambda r: r["ours cache / HF"])
        out.append(
            {
                "target": "generation: ours (cache) >= 1.0x transformers' generate",
                "measured": f"{worst['ours cache / HF']:.2f}x at worst ({worst['new tokens']} new tokens)",
                "met": worst["ours cache / HF"] >= 1.0,
            }
        )
    if "notebooks" in sections:
        rows = sections["notebooks"].rows
        peaks = [r for r in rows if r["full peak MiB"] is not None]
        over = [r["notebook"] for r in peaks if not r["full peak <= 4 GiB"]]
        measured = (
            "no committed full-mode run"
            if not peaks
            else (
                f"max {max(r['full peak MiB'] for r in peaks):,} MiB"
                + (f"; over: {', '.join(over)}" if over else "")
                + (f" ({len(rows) - len(peaks)} notebook(s) without a full run)" if len(peaks) < len(rows) else "")
            )
        )
        out.append(
            {
                "target": "notebooks: full-mode peak memory <= 4 GiB each",
                "measured": measured,
                "met": (not over) if peaks else None,
            }
        )
        smoke = [r["smoke s"] for r in rows if r["smoke s"] is not None]
        out.append(
            {
                "target": "notebooks: smoke suite <= 10 min on 2 cores",
                "measured": f"{sum(smoke) / 60:.1f} min, one at a time" if smoke else "not measured (make bench NOTEBOOKS=1)",
                "met": sum(smoke) <= 600 if smoke and len(smoke) == len(rows) else None,
            }
        )
    out.append(
        {
            "target": "make bench <= 10 min on this 2-core CPU",
            "measured": f"{total_s / 60:.1f} min",
            "met": total_s <= 600 if complete else None,
        }
    )
    return out


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    from benchmarks.common import DTYPES, RESULTS_DIR, machine_info, matmul_peak, precisions, result_name, write_results
    from helpers.env import get_device

    device = torch.device(args.device) if args.device else get_device(verbose=False)
    info = machine_info(device)
    size = 256 if args.tiny else (8192 if device.type == "cuda" else 2048)
    peaks = {p: matmul_peak(device, DTYPES[p], size) for p in precisions(device)}
    info.update({f"matmul peak {p} GFLOP/s": round(v, 1) for p, v in peaks.items()})
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)

    def build(name):
        if name == "training":
            from benchmarks.training import training

            return training(device, peaks, tiny=args.tiny, compile=args.compile)
        if name == "generation":
            from benchmarks.generation import generation

            return generation(device, tiny=args.tiny)
        if name == "attention":
            from benchmarks.attention import attention

            return attention(device, tiny=args.tiny)
        if name == "convergence":
            from benchmarks.convergence import convergence

            return convergence(device, steps=args.steps, tiny=args.tiny, compile=args.compile)
        from benchmarks.notebooks import NOTEBOOK_DIR, notebooks

        return notebooks(args.notebook_dir or NOTEBOOK_DIR, live=args.notebooks)

    from benchmarks.common import markdown_table

    sections = {}
    for name in args.sections:
        start = time.perf_counter()
        section = build(name)
        section.seconds = round(time.perf_counter() - start, 1)
        sections[name] = section
        print(f"\n## {section.title} ({section.seconds:.0f} s)\n\n{markdown_table(section.columns, section.rows)}", flush=True)
    total = time.perf_counter() - started
    complete = len(sections) == len(SECTIONS) and not args.tiny and args.steps == 2000 and not args.notebooks
    goals = targets(sections, total, complete)
    print("\n## Targets\n\n" + markdown_table(["target", "measured", "met"], goals))
    command = " ".join(["python -m benchmarks.run", *argv]).strip()
    stem = result_name(info, tiny=args.tiny)
    json_path, md_path = write_results(args.out or RESULTS_DIR, stem, info, list(sections.values()), goals, total, command)
    print(f"\nWrote {json_path.name} and {md_path.name} ({total:.0f} s in all).")
    return {"machine": info, "sections": sections, "targets": goals, "json": json_path, "markdown": md_path}


if __name__ == "__main__":
    main()
