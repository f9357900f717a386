"""Training throughput: our GPT against transformers' GPT2LMHeadModel, same weights, batches, optimizer and loss.

Each size builds our GPT and exports it twice with :func:`helpers.hf.to_hf` (attention "sdpa", the library's
default, and "eager", its hand-written attention). The three train on one fixed batch in turns; a step is
zero_grad, forward, cross-entropy over every position, backward and an AdamW update (:func:`decay_groups`, the
optimizer of :class:`helpers.train.Trainer`). The library model gets ``use_cache=False`` (a training run has no
use for its key/value cache) and the same loss, computed outside the model, so both do the same arithmetic.

MFU (model FLOPs utilisation) = FLOPs per token x tokens/s / the matmul peak measured on this machine, with
FLOPs per token = 6 N + 12 L C T (:meth:`helpers.model.GPT.flops_per_token`): N the parameters that multiply
(the position table left out; the tied token table counted once, as the output layer), L layers, width C, T
positions; 6 N is forward (2 N) plus backward (4 N), 12 L C T the attention scores and weighted sums.
"""

from __future__ import annotations

import contextlib
import gc

import torch
import torch.nn.functional as F

from benchmarks.common import DTYPES, Section, interleaved, precisions
from helpers.hf import to_hf
from helpers.model import GPT, GPTConfig
from helpers.recipes.pretrain import model_config
from helpers.train import decay_groups

#: The course tokenizer's vocabulary in full mode (helpers.tokenizers.course_tokenizer).
COURSE_VOCAB = 4096
COLUMNS = [
    "size",
    "params (M)",
    "batch x T",
    "precision",
    "ours tok/s",
    "HF sdpa tok/s",
    "HF eager tok/s",
    "ours / HF sdpa",
    "ours / HF eager",
    "ours MFU %",
    "HF sdpa MFU %",
]
MODELS = ("ours", "HF sdpa", "HF eager")


def sizes(device: torch.device, tiny: bool = False) -> list[tuple[GPTConfig, int]]:
    """(config, batch size) pairs from small to large; the first is the model chapter 04 pretrains."""
    if tiny:
        return [(GPTConfig(vocab_size=97, block_size=16, n_layer=i, n_head=2, n_embd=16 * i), 2) for i in (1, 2, 3)]
    scale = 8 if device.type == "cuda" else 1  # a GPU needs bigger batches before it stops waiting on launches
    out = [
        (model_config(COURSE_VOCAB), 8 * scale),
        (GPTConfig(vocab_size=COURSE_VOCAB, block_size=256, n_layer=6, n_head=6, n_embd=384), 4 * scale),
        (GPTConfig(vocab_size=COURSE_VOCAB, block_size=256, n_layer=8, n_head=8, n_embd=512), 4 * scale),
    ]
    if device.type == "cuda":
        out.append((GPTConfig(), 8))  # GPT-2 small: 124M parameters, 1024 positions, GPT-2's vocabulary
    return out


def size_label(c: GPTConfig) -> str:
    return f"{c.n_layer}L {c.n_embd}d V{c.vocab_size}"


def _amp(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def step_functions(config: GPTConfig, batch_size: int, device: torch.device, precision: str, compile: bool):
    """The three models' training-step functions and the models' FLOPs per token."""
    torch.manual_seed(0)
    ours = GPT(config).to(device).train()
    models = {"ours": ours, "HF sdpa": to_hf(ours, "sdpa"), "HF eager": to_hf(ours, "eager")}
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, config.vocab_size, (2, batch_size, config.block_size), generator=gen).to(device)

    def loss_of(name, model):
        if name == "ours":
            return lambda: model(x, y)[1]
        return lambda: F.cross_entropy(model(input_ids=x, use_cache=False).logits.flatten(0, 1), y.flatten())

    losses, steps = {}, {}
    for name, model in models.items():
        run = torch.compile(model) if compile else model
        loss_fn = loss_of(name, run)
        with torch.no_grad(), _amp(device, precision):
            losses[name] = loss_fn().item()
        opt = torch.optim.AdamW(
            decay_groups(model, 0.1), lr=3e-4, betas=(0.9, 0.95), fused=True if device.type == "cuda" else None
        )

        def step(loss_fn=loss_fn, opt=opt):
            opt.zero_grad(set_to_none=True)
            with _amp(device, precision):
                loss = loss_fn()
            loss.backward()
            opt.step()

        steps[name] = step
    tolerance = 1e-4 if precision == "fp32" else 1e-2 * losses["ours"]  # bf16 keeps about 3 significant digits
    if max(abs(v - losses["ours"]) for v in losses.values()) > tolerance:
        raise RuntimeError(f"The models disagree before training ({losses}): they are not the same function of the weights.")
    return steps, ours.flops_per_token(config.block_size), ours.num_params() / 1e6


def training(device: torch.device, peaks: dict[str, float], tiny: bool = False, compile: bool = False) -> Section:
    """Tokens/s of a full training step for each size and precision; ``peaks`` maps precision -> matmul GFLOP/s."""
    warmup, repeats = (1, 2) if tiny else (2, 5)
    section = Section("training", "Training throughput (tokens/s, median of interleaved steps)", COLUMNS)
    for config, batch_size in sizes(device, tiny):
        for precision in precisions(device):
            steps, flops_per_token, n_params = step_functions(config, batch_size, device, precision, compile)
            seconds = interleaved(steps, device, warmup, repeats)
            tokens = batch_size * config.block_size
            tps = {name: tokens / s for name, s in seconds.items()}
            mfu = {name: 100 * flops_per_token * tps[name] / (peaks[precision] * 1e9) for name in ("ours", "HF sdpa")}
            section.rows.append(
                {
                    "size": size_label(config),
                    "params (M)": round(n_params, 2),
                    "batch x T": f"{batch_size} x {config.block_size}",
                    "precision": precision + (" compiled" if compile else ""),
                    "ours tok/s": tps["ours"],
                    "HF sdpa tok/s": tps["HF sdpa"],
                    "HF eager tok/s": tps["HF eager"],
                    "ours / HF sdpa": tps["ours"] / tps["HF sdpa"],
                    "ours / HF eager": tps["ours"] / tps["HF eager"],
                    "ours MFU %": mfu["ours"],
                    "HF sdpa MFU %": mfu["HF sdpa"],
                }
            )
            del steps
            gc.collect()
    section.notes += [
        f"One step = zero_grad, forward, loss, backward, AdamW update; {warmup} warm-up and {repeats} timed steps per "
        "model, taken in turns (ours, HF sdpa, HF eager, ...); tokens/s = batch x T / median step time.",
        "HF = transformers' GPT2LMHeadModel with our weights (helpers.hf.to_hf), attn_implementation sdpa or eager, "
        "called with use_cache=False; the loss (cross-entropy over all positions) is the same code for both.",
        "MFU = (6 N + 12 L C T) x tokens/s / measured matmul peak (see the machine table); N = params (M) column.",
        "Target: ours >= 1.1x HF sdpa at every size in fp32.",
    ]
    return section
