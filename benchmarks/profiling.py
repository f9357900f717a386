"""Where the time goes: torch.profiler tables of our model and the library's, for a training step or a generation.

    python -m benchmarks.profiling training [--size 0]   # one training step at sizes()[0], ours then HF sdpa
    python -m benchmarks.profiling generation            # greedy generation with the cache, ours then HF generate

The tables list the operators by their own time: where both spend it in the same matrix products, no change to
the model code can make one much faster than the other; the rows that differ are what one does and the other not.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import interleaved
from helpers.env import sync


def _table(fn, device: torch.device, rows: int) -> str:
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        sync(device)
    return prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=rows)


def training_fns(device: torch.device, size: int = 0, tiny: bool = False) -> dict:
    from benchmarks.training import sizes, step_functions

    config, batch_size = sizes(device, tiny)[size]
    steps, _, _ = step_functions(config, batch_size, device, "fp32", compile=False)
    return {name: steps[name] for name in ("ours", "HF sdpa")}


def generation_fns(device: torch.device, tiny: bool = False) -> dict:
    from benchmarks.training import COURSE_VOCAB
    from helpers.hf import to_hf
    from helpers.model import GPT, GPTConfig
    from helpers.recipes.pretrain import model_config

    config = (
        GPTConfig(vocab_size=97, block_size=48, n_layer=2, n_head=2, n_embd=32)
        if tiny
        else replace(model_config(COURSE_VOCAB), block_size=512)
    )
    n = 16 if tiny else 64
    torch.manual_seed(0)
    ours = GPT(config).to(device).eval()
    hf = to_hf(ours).eval()
    prompt = torch.randint(0, config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1)).to(device)
    return {
        "ours": lambda: ours.generate(prompt, n, temperature=0.0),
        "HF": lambda: hf.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False, pad_token_id=0
        ),
    }


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profiling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("training", "generation"))
    parser.add_argument("--size", type=int, default=0, help="index into benchmarks.training.sizes() (training only)")
    parser.add_argument("--rows", type=int, default=20, help="operators to list per table")
    parser.add_argument("--tiny", action="store_true", help="tiny models: checks that it runs")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the course's choice)")
    args = parser.parse_args(argv)
    from helpers.env import get_device

    device = torch.device(args.device) if args.device else get_device(verbose=False)
    if args.what == "training":
        from benchmarks.training import sizes

        n_sizes = len(sizes(device, args.tiny))
        if not 0 <= args.size < n_sizes:
            parser.error(f"--size must be 0..{n_sizes - 1} (an index into benchmarks.training.sizes()), got {args.size}")
        fns = training_fns(device, args.size, args.tiny)
    else:
        fns = generation_fns(device, args.tiny)
    seconds = interleaved(fns, device, warmup=1, repeats=3)
    tables = {}
    for name, fn in fns.items():
        tables[name] = _table(fn, device, args.rows)
        print(f"===== {name}: {1e3 * seconds[name]:.1f} ms per call (median of 3, interleaved)\n{tables[name]}", flush=True)
    return tables


if __name__ == "__main__":
    main()
