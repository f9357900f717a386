"""Time to a fixed validation loss on the standard small benchmark: a character-level GPT of the World English Bible.

The data: every English verse (:func:`helpers.data.verses`), in canonical order, joined by newlines; the first 90%
of the characters train, the last 10% validate (a fixed subset of windows, evaluated every ``EVAL_EVERY`` steps).
The model: 4 layers, 4 heads, width 128, context 64, batch 12, no dropout, trained by :class:`helpers.train.Trainer`.
Runs: the Trainer's defaults (bf16 autocast and fused AdamW on a GPU; float32 on a CPU, where the defaults *are*
plain fp32 eager, so one run stands for both) against plain fp32 eager, and, if asked, with ``torch.compile``.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import Section
from helpers.batches import RandomWindows, eval_batches
from helpers.data import verses
from helpers.model import GPT, GPTConfig
from helpers.tokenizers import CharTokenizer
from helpers.train import TrainConfig, Trainer

TARGET_LOSS = 1.70
STEPS = 2000
EVAL_EVERY = 100
LR = 1e-3
COLUMNS = ["run", "steps", "wall s", "tok/s", "final val loss", "target val loss", "step at target", "s to target"]


def char_streams(tiny: bool = False) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(vocabulary size, train ids, val ids): the English Bible as characters, split 90/10 in order."""
    text = "\n".join(v.text for v in verses("en"))
    if tiny:
        text = text[:60_000]
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    cut = int(0.9 * len(ids))
    return tokenizer.vocab_size, ids[:cut], ids[cut:]


def runs(device: torch.device, compile: bool = False) -> list[tuple[str, bool | str, bool]]:
    """(label, TrainConfig.mixed_precision, compile) of each run on ``device``."""
    if device.type != "cuda":
        out = [("Trainer defaults = fp32 eager (CPU)", True, False)]
    else:
        out = [("Trainer defaults (bf16 autocast, fused AdamW)", True, False), ("fp32 eager (fused AdamW)", False, False)]
    if compile:
        out.append(("Trainer defaults + torch.compile", True, True))
    return out


def convergence(
    device: torch.device, steps: int = STEPS, tiny: bool = False, compile: bool = False, target: float = TARGET_LOSS
) -> Section:
    vocab_size, train_ids, val_ids = char_streams(tiny)
    if tiny:
        config = GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
        eval_every, n_val = max(1, steps // 3), 4
    else:
        config = GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
        eval_every, n_val = EVAL_EVERY, 20
    train = RandomWindows(train_ids, config.block_size, 12, seed=0)
    val = eval_batches(val_ids, config.block_size, 12, n_batches=n_val)
    section = Section("convergence", f"Time to validation loss {target} (character-level English Bible)", COLUMNS)
    for label, mixed_precision, compiled in runs(device, compile):
        torch.manual_seed(0)
        model = GPT(config)
        cfg = TrainConfig(
            max_steps=steps,
            lr=LR,
            min_lr=LR / 10,
            warmup_steps=min(100, steps // 10),
            eval_every=eval_every,
            mixed_precision=mixed_precision,
            compile=compiled,
        )
        trainer = Trainer(model, cfg, train, val, device=device, progress=False)
        start = time.perf_counter()
        history = trainer.fit()
        wall = time.perf_counter() - start
        evals = [r for r in history if r["val_loss"] is not None]
        hit = next((r for r in evals if r["val_loss"] <= target), None)
        tokens_per_s = sorted(r["tokens_per_s"] for r in history)[len(history) // 2]
        section.rows.append(
            {
                "run": label,
                "steps": trainer.step,
                "wall s": wall,
                "tok/s": tokens_per_s,
                "final val loss": evals[-1]["val_loss"],
                "target val loss": target,
                "step at target": hit and hit["step"],
                "s to target": hit and hit["elapsed_s"],
            }
        )
    section.notes += [
        f"{config.n_layer} layers, {config.n_head} heads, width {config.n_embd}, context {config.block_size}, batch 12, "
        f"vocabulary {vocab_size} characters, {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{len(train_ids):,} train / {len(val_ids):,} val characters.",
        f"AdamW lr {LR:g} (warm-up {cfg.warmup_steps} steps, cosine to {LR / 10:g}), the Trainer's other defaults; "
        f"val loss every {eval_every} steps on {n_val * 12} fixed windows; wall and 's to target' include those evaluations; "
        "tok/s is the median training step's.",
    ]
    return section
