"""Attention alone: chapter 02's hand-written attention against torch's fused ``scaled_dot_product_attention``.

The hand-written version materialises the (T, T) scores and weights of every head, so its time and memory grow
with T²; the fused kernels stream over keys and never hold the whole matrix (on a GPU, flash attention). Both
compute causal attention on the same random queries, keys and values, and must agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import DTYPES, Section, interleaved, precisions
from helpers.attention import scaled_dot_product_attention
from helpers.env import sync

COLUMNS = [
    "T",
    "precision",
    "hand fwd ms",
    "SDPA fwd ms",
    "fwd speed-up",
    "hand fwd+bwd ms",
    "SDPA fwd+bwd ms",
    "fwd+bwd speed-up",
    "scores MiB",
]
CUDA_COLUMNS = ["hand peak MiB", "SDPA peak MiB"]


def _peak_mib(fn, device: torch.device) -> float:
    """Peak GPU memory allocated while ``fn`` runs, beyond what was allocated before."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _measure(
    shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device, warmup: int, repeats: int, gen: torch.Generator
) -> dict:
    """Forward and forward+backward times (median seconds) of both implementations on one shape, and GPU peaks."""
    q, k, v, grad = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    impls = {
        "hand": lambda: scaled_dot_product_attention(q, k, v, is_causal=True)[0],
        "SDPA": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }
    with torch.no_grad():
        diff = (impls["hand"]().float() - impls["SDPA"]().float()).abs().max().item()
    if diff > (1e-4 if dtype == torch.float32 else 5e-2):
        raise RuntimeError(f"Hand-written attention and SDPA differ by {diff:.2e} at shape {shape} ({dtype}).")

    def forward(impl):
        with torch.no_grad():
            impl()

    both = {name: lambda f=f: torch.autograd.grad(f(), (q, k, v), grad) for name, f in impls.items()}
    out = {
        "fwd": interleaved({name: lambda f=f: forward(f) for name, f in impls.items()}, device, warmup, repeats),
        "fwd+bwd": interleaved(both, device, warmup, repeats),
    }
    if device.type == "cuda":
        out["peak MiB"] = {name: _peak_mib(fn, device) for name, fn in both.items()}
    return out


def attention(device: torch.device, tiny: bool = False) -> Section:
    if tiny:
        (B, H, d), lengths, warmup, repeats = (1, 2, 8), (16, 32), 1, 2
    else:
        (B, H, d), lengths, warmup, repeats = (2, 4, 64), (128, 256, 512, 1024, 2048), 1, 5
        if device.type == "cuda":
            lengths += (4096, 8192)
    cuda = device.type == "cuda"
    section = Section(
        "attention",
        "Attention: hand-written vs torch SDPA (causal, milliseconds per call)",
        COLUMNS + (CUDA_COLUMNS if cuda else []),
    )
    gen = torch.Generator().manual_seed(0)
    for precision in precisions(device):
        for T in lengths:
            m = _measure((B, H, T, d), DTYPES[precision], device, warmup, repeats, gen)
            fwd, both = m["fwd"], m["fwd+bwd"]
            row = {
                "T": T,
                "precision": precision,
                "hand fwd ms": 1e3 * fwd["hand"],
                "SDPA fwd ms": 1e3 * fwd["SDPA"],
                "fwd speed-up": fwd["hand"] / fwd["SDPA"],
                "hand fwd+bwd ms": 1e3 * both["hand"],
                "SDPA fwd+bwd ms": 1e3 * both["SDPA"],
                "fwd+bwd speed-up": both["hand"] / both["SDPA"],
                # The softmax runs in float32 at least (helpers.attention): 4 bytes per score.
                "scores MiB": B * H * T * T * 4 / 2**20,
            }
            if cuda:
                row["hand peak MiB"], row["SDPA peak MiB"] = m["peak MiB"]["hand"], m["peak MiB"]["SDPA"]
            section.rows.append(row)
    section.notes += [
        f"q, k, v of shape (batch {B}, heads {H}, T, {d}); fwd+bwd = forward and the gradients of q, k, v; "
        f"median of {repeats} calls taken in turns after {warmup} warm-up.",
        "scores MiB = one (B, H, T, T) float32 matrix: what the hand-written version holds (several times, with the "
        "weights and the backward pass); the fused kernel keeps no such matrix.",
    ]
    return section
