"""The training loop that chapter 04 introduces (section 3) and every later chapter reuses.

:class:`Trainer` trains any ``nn.Module`` whose ``forward`` returns ``(logits, loss)`` (or an object with a
``.loss``, as Hugging Face models do) on batches it asks for by step number:

- ``train_batches(i) -> batch`` for micro-batch ``i`` (``i = step * grad_accum + k``), a tuple passed as
  ``model(*batch)`` or a dict passed as ``model(**batch)``; see :mod:`helpers.batches`. Because a batch depends
  only on ``i``, a resumed run sees the very batches the uninterrupted run saw.
- ``val_batches``: a list (anything re-iterable) of such batches, evaluated every ``eval_every`` steps.

The loss must be a mean over the tokens of its batch. Gradient accumulation then divides each micro-batch loss
by ``grad_accum``, so ``k`` micro-batches of ``b`` examples give the gradient of one batch of ``k * b`` (exactly
when every micro-batch has as many tokens, e.g. fixed-length windows; padded batches weigh micro-batches equally).
Throughput counts the elements of the first tensor of a batch (``input_ids`` for a dict), padding included.

Optimizer: AdamW with two parameter groups (:func:`decay_groups`); learning rate: linear warm-up then cosine
decay (:func:`lr_at`); gradient clipping; mixed precision on GPUs (bf16, or fp16 with a gradient scaler);
fused AdamW on CUDA; optional ``torch.compile``; early stopping; a NaN guard (:class:`NonFiniteLossError`).

Checkpoints (``checkpoint_dir``, :meth:`Trainer.save` and :meth:`Trainer.load`) are written and read by
:mod:`helpers.checkpoint`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from helpers.checkpoint import load_trainer, save_model, save_trainer
from helpers.env import autocast, autocast_dtype, eval_mode, set_seed

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; ``step`` is the step at which it happened.

    The message names the cause when a cheap check finds it (a NaN or infinite weight, a batch whose targets are
    all ignored), else the learning rate, and which checkpoint is kept.
    Not shown in a notebook: :meth:`Trainer.fit` (chapter 04) raises it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclass
class TrainConfig:
    """Settings of a training run (stored in every checkpoint).

    ``max_steps`` counts optimizer updates; each update averages ``grad_accum`` micro-batches. ``eval_every``,
    ``patience`` (evaluations without a new best val loss before stopping; None: never stop early) and
    ``checkpoint_every`` (default: ``eval_every``) count updates too; the last update is always evaluated.
    ``mixed_precision``: True picks bf16/fp16 on CUDA and float32 elsewhere (:func:`helpers.env.autocast_dtype`),
    False is float32, ``"bf16"``/``"fp16"`` force a dtype. ``seed`` seeds Python, NumPy and torch when a run
    starts from step 0, so dropout does not depend on what ran before. ``checkpoint_dir`` receives ``last/``
    (the whole training state) and ``best/`` (the weights with the best val loss).

    Taught in chapter 04, section 3 (:func:`helpers.recipes.pretrain.train_config` makes one).
    """

    max_steps: int
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    eval_every: int = 100
    patience: int | None = None
    mixed_precision: bool | str = True
    compile: bool = False
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = str(self.checkpoint_dir)
        problems = []
        for name in ("max_steps", "grad_accum", "eval_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            problems.append(
                f"warmup_steps must be between 0 and max_steps ({self.max_steps}), got {self.warmup_steps}: "
                "size both with pick(smoke=..., full=...)"
            )
        if not 0 <= self.min_lr <= self.lr:
            problems.append(f"need 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.mixed_precision not in (True, False, *_AMP_DTYPES):
            problems.append(f"mixed_precision must be True, False, 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if problems:
            raise ValueError("Invalid TrainConfig: " + "; ".join(problems) + ".")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of the update that follows ``step`` completed updates.

    Linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps`` updates, then a cosine
    from ``lr`` down to ``min_lr`` at ``max_steps``; ``min_lr`` after that (a run continued past its plan).

    Chapter 04, section 3 plots it (:func:`helpers.plots.plot_lr_schedule`).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay for tensors with 2+ dimensions, none for the others.

    The rule: weight matrices and embedding tables (2-D) are decayed; biases and LayerNorm gains/shifts (1-D)
    and scalars are not, since shrinking them towards zero only distorts the scale the layer works at. Frozen
    parameters (``requires_grad=False``) are left out; a tied parameter appears once. Each group carries the
    parameter ``names`` (checkpoints store optimizer state by name).

    Chapter 04, section 3 states the rule; :class:`Trainer` builds its optimizer from it.
    """
    groups = {decay: {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0} for decay in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[p.dim() >= 2]["params"].append(p)
            groups[p.dim() >= 2]["names"].append(name)
    if not groups[True]["params"] and not groups[False]["params"]:
        raise ValueError("The model has no trainable parameters (all have requires_grad=False).")
    return [g for g in groups.values() if g["params"]]


class History(list):
    """The record of a run: one dict per update with ``step``, ``lr``, ``train_loss``, ``val_loss`` (None between
    evaluations), ``grad_norm`` (before clipping; None without clipping), ``tokens_per_s`` and ``elapsed_s``
    (seconds of training since step 0, evaluations included, summed over resumed sessions).
    First used in chapter 04, section 4."""

    COLUMNS = ("step", "lr", "train_loss", "val_loss", "grad_norm", "tokens_per_s", "elapsed_s")

    def to_frame(self):
        """The history as a pandas DataFrame, one row per update (NaN where there was no evaluation)."""
        import pandas as pd

        return pd.DataFrame(list(self), columns=list(self.COLUMNS)).astype(float).astype({"step": int})


# ---- the trainer ------------------------------------------------------------------------------------------


def _amp_dtype(mixed_precision: bool | str, device: torch.device):
    if mixed_precision is False:
        return None
    if mixed_precision is True:
        return autocast_dtype(device)
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; use True (automatic) or 'bf16'.")
    return _AMP_DTYPES[mixed_precision]


def _to_device(batch, device: torch.device):
    move = lambda v: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
    if isinstance(batch, dict):
        return {k: move(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return tuple(move(v) for v in batch)
    raise TypeError(f"A batch must be a tuple (passed as model(*batch)) or a dict (model(**batch)), got {type(batch).__name__}.")


def _n_tokens(batch) -> int:
    values = batch
    if isinstance(batch, dict):
        values = [batch["input_ids"]] if "input_ids" in batch else list(batch.values())
    return next((v.numel() for v in values if isinstance(v, torch.Tensor)), 0)


class Trainer:
    """Train ``model`` with ``cfg`` on ``train_batches`` (a callable ``i -> batch``), evaluating on ``val_batches``.

    ``fit()`` trains up to ``cfg.max_steps`` updates (``fit(steps=n)``: ``n`` more) and can be called again to go
    on. ``history`` (a :class:`History`), ``step``, ``best_val``, ``best_step`` and ``stopped_early`` describe the
    run. ``device`` defaults to the device of the model's parameters. ``progress`` shows a tqdm bar.
    ``live_plot``: anything with ``update(history)`` (called after each evaluation) and ``close(history)`` (when
    ``fit`` returns), such as :class:`helpers.plots.LiveLossPlot`, which redraws the loss curves in a notebook.
    With ``cfg.patience``, early stopping puts the best weights back into the model. ``after_step(trainer)`` is
    called after every update, with ``trainer.step`` already counting it and the gradients still in place (AdaLoRA
    reallocates its ranks from them, chapter 07).

    Taught in chapter 04, section 3.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        train_batches,
        val_batches=None,
        *,
        device=None,
        progress: bool = True,
        live_plot=None,
        after_step=None,
    ):
        if not callable(train_batches):
            raise TypeError(
                "train_batches must be a callable step -> batch, e.g. helpers.batches.RandomWindows(...); for a list "
                "use lambda i: batches[i % len(batches)]."
            )
        if isinstance(val_batches, Iterator):
            raise TypeError(
                "val_batches must be re-iterable (a list of batches), not an iterator or generator: each evaluation reads it."
            )
        if cfg.patience is not None and val_batches is None:
            raise ValueError("cfg.patience needs val_batches: early stopping watches the validation loss.")
        if live_plot is not None and not all(callable(getattr(live_plot, m, None)) for m in ("update", "close")):
            raise TypeError(
                "live_plot must have update(history) and close(history) methods, e.g. live_plot=helpers.plots.LiveLossPlot(); "
                f"got {live_plot!r}."
            )
        self.model, self.cfg = model, cfg
        self.train_batches, self.val_batches = train_batches, val_batches
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.amp_dtype = _amp_dtype(cfg.mixed_precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        groups = decay_groups(model, cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True if self.device.type == "cuda" else None
        )
        self._params = [p for g in groups for p in g["params"]]
        self._forward = torch.compile(model) if cfg.compile else model
        if after_step is not None and not callable(after_step):
            raise TypeError(f"after_step must be a function of the trainer, got {after_step!r}.")
        self.progress, self.live_plot, self.after_step = progress, live_plot, after_step
        self.history = History()
        self.step = 0
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.stopped_early = False
        self._bad_evals = 0
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._elapsed = 0.0
        self._saved: tuple[Path, int] | None = None  # (folder, step) of the checkpoint last written or loaded

    # -- one step ------------------------------------------------------------------------------------------

    def _loss(self, batch) -> torch.Tensor:
        with autocast(self.device, self.amp_dtype) if self.amp_dtype is not None else contextlib.nullcontext():
            out = self._forward(**batch) if isinstance(batch, dict) else self._forward(*batch)
        loss = out[1] if isinstance(out, (tuple, list)) else getattr(out, "loss", None)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(
                "The model must return (logits, loss) with a scalar loss when the batch holds targets; got "
                f"{type(loss).__name__} as the loss. Does the batch include the targets?"
            )
        return loss.float()

    def _stop(self, what: str, value: float, step: int, updated: bool, batches) -> NonFiniteLossError:
        """The error for a non-finite ``what``; ``batches``: ``(label, batch)`` pairs of the batches it came from."""
        when = "after" if updated else "at"
        note = "" if updated else " Training stopped before updating the weights with it."
        return NonFiniteLossError(
            f"The {what} is {value} {when} step {step} (lr {lr_at(step - 1, self.cfg):.2e}).{note} "
            f"{self._cause(batches, updated)} {self._kept()}",
            step=step,
        )

    def _cause(self, batches, updated: bool) -> str:
        """The cause of a non-finite loss as far as cheap checks tell, the learning rate by elimination."""
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            since = "since this step's update" if updated else "from before this step: as built or loaded, or an earlier update"
            names = ", ".join(bad[:3]) + (" and more" if len(bad) > 3 else "")
            return (
                f"Cause: NaN or inf values in the weights {names} ({since}); "
                "start again from a fresh model or a good checkpoint, with a lower lr or gradient clipping."
            )
        for label, batch in batches:
            values = batch.values() if isinstance(batch, dict) else batch
            if any(
                isinstance(v, torch.Tensor) and not v.is_floating_point() and v.numel() and bool((v == -100).all())
                for v in values
            ):
                return (
                    f"Cause: every target of {label} is -100 (ignored), so its mean loss is 0/0; give every batch at "
                    "least one target that counts (check how the targets are masked)."
                )
        return (
            "No weight is NaN or inf and no batch has all its targets ignored (-100), so the likely cause is the "
            "learning rate: try a lower lr, a longer warm-up or gradient clipping."
        )

    def _kept(self) -> str:
        if self._saved:
            return f"The last good checkpoint, from step {self._saved[1]}, is kept in {self._saved[0]}."
        if self.cfg.checkpoint_dir is None:
            return "No checkpoint is kept (set checkpoint_dir to keep one)."
        folder, every = Path(self.cfg.checkpoint_dir), self.cfg.checkpoint_every or self.cfg.eval_every
        kept = f"This run had not written {folder / 'last'} yet (every {every} steps)"
        if self.best_step is not None:
            kept += f"; {folder / 'best'} holds the weights of step {self.best_step}"
        return kept + "."

    def _micro_batches(self):
        first = self.step * self.cfg.grad_accum
        return ((f"training micro-batch {i}", self.train_batches(i)) for i in range(first, first + self.cfg.grad_accum))

    def _train_step(self) -> dict:
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, n_tokens = torch.zeros((), device=self.device), 0
        for k in range(cfg.grad_accum):
            batch = _to_device(self.train_batches(self.step * cfg.grad_accum + k), self.device)
            n_tokens += _n_tokens(batch)
            loss = self._loss(batch)
            loss_sum += loss.detach()
            loss = loss / cfg.grad_accum
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        train_loss = loss_sum.item() / cfg.grad_accum
        if not math.isfinite(train_loss):
            raise self._stop("training loss", train_loss, self.step + 1, False, self._micro_batches())
        grad_norm = None
        if cfg.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip).item()
            if self.scaler is None and not math.isfinite(grad_norm):  # the scaler skips such steps itself
                raise self._stop("gradient norm", grad_norm, self.step + 1, False, self._micro_batches())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        tokens_per_s = n_tokens / max(time.perf_counter() - start, 1e-9)
        return {
            "step": self.step,
            "lr": lr,
            "train_loss": train_loss,
            "val_loss": None,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
        }

    @torch.no_grad()
    def evaluate(self) -> float:
        """The mean loss over ``val_batches`` (weighted by tokens), with the model in eval mode (chapter 04, section 4)."""
        if self.val_batches is None:
            raise ValueError("This Trainer has no val_batches to evaluate on: pass val_batches=... when creating it.")
        total, count = torch.zeros((), device=self.device), 0
        with eval_mode(self.model):
            for batch in self.val_batches:
                batch = _to_device(batch, self.device)
                n = _n_tokens(batch)
                total += self._loss(batch) * n
                count += n
        if count == 0:
            raise ValueError("val_batches holds no batches: give a non-empty list, e.g. helpers.batches.eval_batches(...).")
        return (total / count).item()

    def _track_best(self, val: float) -> None:
        if self.best_val is None or val < self.best_val:
            self.best_val, self.best_step, self._bad_evals = val, self.step, 0
            if self.cfg.patience is not None:
                params = self.model.named_parameters()
                self._best_weights = {n: p.detach().to("cpu", copy=True) for n, p in params if p.requires_grad}
            if self.cfg.checkpoint_dir is not None:
                save_model(self.model, Path(self.cfg.checkpoint_dir) / "best")
        else:
            self._bad_evals += 1
            self.stopped_early = self.cfg.patience is not None and self._bad_evals >= self.cfg.patience

    def _restore_best(self) -> None:
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name in self._best_weights:
                    p.copy_(self._best_weights[name])

    # -- the loop ------------------------------------------------------------------------------------------

    def fit(self, steps: int | None = None) -> History:
        """Train until ``cfg.max_steps`` updates (or for ``steps`` more) and return the history.

        Evaluates every ``cfg.eval_every`` updates and at ``max_steps``; writes ``checkpoint_dir/last`` every
        ``checkpoint_every`` updates and when ``fit`` returns. Raises :class:`NonFiniteLossError` on a NaN or
        infinite loss without touching the checkpoints on disk.
        """
        cfg = self.cfg
        target = cfg.max_steps if steps is None else self.step + steps
        if self.stopped_early:
            print(f"Training stopped early at step {self.step}; the model holds the best weights (step {self.best_step}).")
            return self.history
        if self.step == 0:
            set_seed(cfg.seed)
        self.model.train()
        plot = self.live_plot
        every = cfg.checkpoint_every or cfg.eval_every
        started, elapsed_before = time.perf_counter(), self._elapsed
        with tqdm(total=target, initial=self.step, desc="training", unit="step", disable=not self.progress) as bar:
            while self.step < target and not self.stopped_early:
                row = self._train_step()
                if self.after_step is not None:
                    self.after_step(self)
                evaluated = self.val_batches is not None and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps)
                if evaluated:
                    row["val_loss"] = self.evaluate()
                    if not math.isfinite(row["val_loss"]):
                        val = ((f"validation batch {j}", b) for j, b in enumerate(self.val_batches))
                        raise self._stop("validation loss", row["val_loss"], self.step, True, val)
                    self._track_best(row["val_loss"])
                self._elapsed = elapsed_before + time.perf_counter() - started
                row["elapsed_s"] = self._elapsed
                self.history.append(row)
                if cfg.checkpoint_dir is not None and (self.step % every == 0 or self.stopped_early or self.step == target):
                    self.save(Path(cfg.checkpoint_dir) / "last")
                bar.update(1)
                postfix = {"loss": f"{row['train_loss']:.3f}", "tok/s": f"{row['tokens_per_s']:,.0f}"}
                if self.best_val is not None:
                    postfix["best val"] = f"{self.best_val:.3f}"
                bar.set_postfix(postfix, refresh=False)
                if plot is not None and evaluated:
                    plot.update(self.history)
        if self.stopped_early:
            self._restore_best()
            print(
                f"Early stop at step {self.step}: no better validation loss in {cfg.patience} evaluations. The model holds "
                f"the best weights again (step {self.best_step}, val loss {self.best_val:.3f})."
            )
        if plot is not None:
            plot.close(self.history)
        return self.history

    # -- checkpoints ---------------------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Save the whole training state as the checkpoint ``path`` (atomically); :meth:`load` resumes from it."""
        path = save_trainer(self, path)
        self._saved = (path, self.step)
        return path

    def load(self, path) -> Trainer:
        """Resume from a :meth:`save` checkpoint: weights, optimizer, scaler, RNG states, step, history, best.

        Create the model and the Trainer as for the original run, then ``trainer.load(path).fit()``: on the CPU
        the result is bit for bit that of the uninterrupted run. Everything is checked before anything changes.
        """
        load_trainer(self, path)
        self._saved = (Path(path), self.step)
        return self
