"""The training loop every chapter reuses, and checkpoints that never unpickle.

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

A checkpoint is a folder: ``model.safetensors`` + ``config.json`` (the weights, with tied weights stored once,
and the model's config; :func:`save_model` writes just these, :func:`load_model_state` reads them from any
checkpoint), plus for a trainer ``trainer.safetensors`` (optimizer tensors, RNG states, best weights) and
``trainer.json`` (everything else: step, history, optimizer and scaler settings, Python/NumPy RNG states).
Folders are written under a temporary name and renamed, so an interruption never leaves a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from helpers.env import autocast, autocast_dtype, set_seed

FORMAT = "gpt-inside-and-out/checkpoint"
FORMAT_VERSION = 1
MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
STATE_FILE, TRAINER_FILE = "trainer.safetensors", "trainer.json"
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_TRAINER_KEYS = ("step", "best_val", "best_step", "bad_evals", "stopped_early", "elapsed_s", "optimizer", "scaler", "rng",
                 "history")


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt, or does not fit the model it is loaded into."""


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; ``step`` is the step at which it happened."""

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
    (seconds of training since step 0, evaluations included, summed over resumed sessions)."""

    COLUMNS = ("step", "lr", "train_loss", "val_loss", "grad_norm", "tokens_per_s", "elapsed_s")

    def to_frame(self):
        """The history as a pandas DataFrame, one row per update (NaN where there was no evaluation)."""
        import pandas as pd

        return pd.DataFrame(list(self), columns=list(self.COLUMNS)).astype(float).astype({"step": int})


# ---- checkpoint files -------------------------------------------------------------------------------------


def _config_dict(config) -> dict:
    if config is None:
        return {}
    if is_dataclass(config):
        return asdict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)


def _write_folder(path: Path, write_files) -> Path:
    """Write a checkpoint folder atomically: ``write_files(tmp)`` fills a temporary folder, then it is renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        write_files(tmp)
        if path.exists():
            os.replace(path, old)  # a folder cannot be renamed over a non-empty one
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1))


def _unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a state dict into one copy of each tensor and ``{alias: name}`` for the tensors that share storage
    with an earlier one (tied weights such as ``lm_head.weight`` and ``transformer.wte.weight``)."""
    unique, aliases, seen = {}, {}, {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t.detach().cpu().contiguous()
    return unique, aliases


def _model_files(model: torch.nn.Module, config) -> Callable[[Path], None]:
    tensors, aliases = _unique_tensors(model.state_dict())
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "config": _config_dict(config), "aliases": aliases}

    def write(folder: Path) -> None:
        save_file(tensors, str(folder / MODEL_FILE))
        _write_json(folder / CONFIG_FILE, meta)

    return write


def save_model(model: torch.nn.Module, path, config=None) -> Path:
    """Save the weights and ``config`` (a dict or dataclass; default: ``model.config``) to the folder ``path``.

    The folder gets ``model.safetensors`` and ``config.json``; tied weights are stored once. Read it back with
    :func:`read_config` (to build the model) and :func:`load_model_state`.
    """
    return _write_folder(path, _model_files(model, getattr(model, "config", None) if config is None else config))


def _read_json(path: Path, name: str, what: str = "Use another checkpoint.") -> dict:
    file = path / name
    if not file.is_file():
        raise CheckpointError(f"The checkpoint {path} is incomplete: {name} is missing. {what}")
    try:
        meta = json.loads(file.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{name} in {path} is not valid JSON ({e}): the file is corrupt; use another checkpoint.") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{name} in {path} was not written by this course's helpers (no '{FORMAT}' format field): it is a "
            "checkpoint of another program. Save checkpoints with helpers.train (save_model or Trainer.save)."
        )
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{name} in {path} has format version {meta.get('version')}, this code reads {FORMAT_VERSION}.")
    return meta


def _read_tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    file = path / name
    if not file.is_file():
        raise CheckpointError(f"The checkpoint {path} is incomplete: {name} is missing. Use another checkpoint.")
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{name} in {path} is not a readable safetensors file ({e}): it is truncated or corrupt; use another checkpoint."
        ) from e


def _check_folder(path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"No checkpoint at {path}: expected a folder holding {MODEL_FILE} and {CONFIG_FILE} (written by save_model "
            "or Trainer.save). Check the path, or train first."
        )
    return path


def read_config(path) -> dict:
    """The model config stored in the checkpoint folder ``path`` (to build the model before loading weights)."""
    return _read_json(_check_folder(path), CONFIG_FILE)["config"]


def _fitted_state(model: torch.nn.Module, path: Path) -> tuple[dict, dict]:
    """Read a checkpoint's weights and check they fit ``model``; returns (state dict, config)."""
    meta = _read_json(path, CONFIG_FILE)
    tensors = _read_tensors(path, MODEL_FILE)
    for alias, name in meta.get("aliases", {}).items():
        if name not in tensors:
            raise CheckpointError(
                f"{CONFIG_FILE} in {path} ties {alias} to {name}, which {MODEL_FILE} lacks: the checkpoint is corrupt."
            )
        tensors[alias] = tensors[name]
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [
        f"{k} {tuple(tensors[k].shape)} in the checkpoint vs {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [f"missing {_few(missing)}" * bool(missing), f"unexpected {_few(unexpected)}" * bool(unexpected), _few(shapes)]
        raise CheckpointError(
            f"The checkpoint {path} does not fit this model: {'; '.join(p for p in parts if p)}. It was saved from "
            f"another model or config (its config: {meta['config']}); build the model with read_config(path)."
        )
    return tensors, meta["config"]


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def load_model_state(model: torch.nn.Module, path) -> dict:
    """Load the weights of the checkpoint folder ``path`` into ``model`` and return the stored config.

    Works on :func:`save_model` folders and on trainer checkpoints. Raises :class:`CheckpointError` naming what is
    missing, corrupt or mismatched. Tied weights stay tied (both names are filled from the one stored copy).
    """
    tensors, config = _fitted_state(model, _check_folder(path))
    model.load_state_dict(tensors)
    return config


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
    run. ``device`` defaults to the device of the model's parameters. ``progress`` shows a tqdm bar;
    ``live_plot`` redraws the loss curves at each evaluation in a notebook (one final plot elsewhere).
    With ``cfg.patience``, early stopping puts the best weights back into the model.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, train_batches, val_batches=None, *, device=None,
                 progress: bool = True, live_plot: bool = False):
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
        self.progress, self.live_plot = progress, live_plot
        self.history = History()
        self.step = 0
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.stopped_early = False
        self._bad_evals = 0
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._elapsed = 0.0
        self._saved: tuple[Path, int] | None = None  # the last checkpoint this trainer wrote: (folder, step)

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

    def _stop(self, what: str, value: float, step: int, updated: bool) -> NonFiniteLossError:
        kept = (
            f"The last good checkpoint, from step {self._saved[1]}, is kept in {self._saved[0]}."
            if self._saved
            else "No checkpoint was written (set checkpoint_dir to keep one)."
        )
        when = "after" if updated else "at"
        note = "" if updated else " Training stopped before updating the weights with it."
        return NonFiniteLossError(
            f"The {what} is {value} {when} step {step} (lr {lr_at(step - 1, self.cfg):.2e}).{note} {kept} "
            "Try a lower lr, a longer warm-up or gradient clipping.",
            step=step,
        )

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
            raise self._stop("training loss", train_loss, self.step + 1, updated=False)
        grad_norm = None
        if cfg.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip).item()
            if self.scaler is None and not math.isfinite(grad_norm):  # the scaler skips such steps itself
                raise self._stop("gradient norm", grad_norm, self.step + 1, updated=False)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        tokens_per_s = n_tokens / max(time.perf_counter() - start, 1e-9)
        return {"step": self.step, "lr": lr, "train_loss": train_loss, "val_loss": None, "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_s}

    @torch.no_grad()
    def evaluate(self) -> float:
        """The mean loss over ``val_batches`` (weighted by tokens), with the model in eval mode."""
        if self.val_batches is None:
            raise ValueError("This Trainer has no val_batches to evaluate on: pass val_batches=... when creating it.")
        was_training = self.model.training
        self.model.eval()
        total, count = torch.zeros((), device=self.device), 0
        try:
            for batch in self.val_batches:
                batch = _to_device(batch, self.device)
                n = _n_tokens(batch)
                total += self._loss(batch) * n
                count += n
        finally:
            self.model.train(was_training)
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
        plot = None
        if self.live_plot:
            from helpers.plots import LiveLossPlot

            plot = LiveLossPlot()
        every = cfg.checkpoint_every or cfg.eval_every
        started, elapsed_before = time.perf_counter(), self._elapsed
        with tqdm(total=target, initial=self.step, desc="training", unit="step", disable=not self.progress) as bar:
            while self.step < target and not self.stopped_early:
                row = self._train_step()
                evaluated = self.val_batches is not None and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps)
                if evaluated:
                    row["val_loss"] = self.evaluate()
                    if not math.isfinite(row["val_loss"]):
                        raise self._stop("validation loss", row["val_loss"], self.step, updated=True)
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

    def _names(self) -> list[list[str]]:
        return [list(g["names"]) for g in self.optimizer.param_groups]

    def save(self, path) -> Path:
        """Save the whole training state to the folder ``path`` (atomically); :meth:`load` resumes from it."""
        tensors, values = {}, {}
        for group in self.optimizer.param_groups:
            for name, p in zip(group["names"], group["params"]):
                for key, v in self.optimizer.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor):
                        tensors[f"optimizer.{name}.{key}"] = v.detach().cpu().contiguous()
                    else:
                        values.setdefault(name, {})[key] = v
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = state
        for name, t in (self._best_weights or {}).items():
            tensors[f"best.{name}"] = t
        np_state = np.random.get_state()
        py_state = random.getstate()
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "step": self.step,
            "best_val": self.best_val,
            "best_step": self.best_step,
            "bad_evals": self._bad_evals,
            "stopped_early": self.stopped_early,
            "elapsed_s": self._elapsed,
            "train_config": asdict(self.cfg),
            "optimizer": {"groups": self._names(), "state": values},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {
                "python": [py_state[0], list(py_state[1]), py_state[2]],
                "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            },
            "history": list(self.history),
        }
        write_model = _model_files(self.model, getattr(self.model, "config", None))

        def write(folder: Path) -> None:
            write_model(folder)
            save_file(tensors, str(folder / STATE_FILE))
            _write_json(folder / TRAINER_FILE, meta)

        path = _write_folder(path, write)
        self._saved = (path, self.step)
        return path

    def load(self, path) -> Trainer:
        """Resume from a :meth:`save` folder: weights, optimizer, scaler, RNG states, step, history, best.

        Create the model and the Trainer as for the original run, then ``trainer.load(path).fit()``: on the CPU
        the result is bit for bit that of the uninterrupted run. Everything is checked before anything changes.
        """
        path = _check_folder(path)
        weights_only = "It holds weights only: load them with load_model_state, or use a Trainer.save folder."
        meta = _read_json(path, TRAINER_FILE, weights_only)
        missing = [k for k in _TRAINER_KEYS if k not in meta]
        if missing:
            raise CheckpointError(f"{TRAINER_FILE} in {path} lacks {missing}: the checkpoint is corrupt.")
        weights, _ = _fitted_state(self.model, path)
        tensors = _read_tensors(path, STATE_FILE)
        optimizer_state = self._optimizer_state(meta["optimizer"], tensors, path)
        if "rng.torch" not in tensors:
            raise CheckpointError(f"{STATE_FILE} in {path} lacks the torch RNG state: the checkpoint is corrupt.")
        try:
            py, npy = meta["rng"]["python"], meta["rng"]["numpy"]
            py_state, np_state = (py[0], tuple(py[1]), py[2]), (npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:])
            history = History(meta["history"])
        except (TypeError, KeyError, IndexError, ValueError) as e:
            raise CheckpointError(
                f"{TRAINER_FILE} in {path} has a malformed RNG state or history ({e!r}): the checkpoint is corrupt."
            ) from e

        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer_state)
        if self.scaler is not None and meta["scaler"]:
            self.scaler.load_state_dict(meta["scaler"])
        best = {k.removeprefix("best."): t for k, t in tensors.items() if k.startswith("best.")}
        self._best_weights = best or None
        self.step, self.best_val, self.best_step = meta["step"], meta["best_val"], meta["best_step"]
        self._bad_evals, self.stopped_early, self._elapsed = meta["bad_evals"], meta["stopped_early"], meta["elapsed_s"]
        self.history = history
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
        self._saved = (path, self.step)
        return self

    def _optimizer_state(self, saved: dict, tensors: dict, path: Path) -> dict:
        """Rebuild ``optimizer.state_dict()`` from a checkpoint's by-name optimizer state, checking it fits."""
        if saved.get("groups") != self._names():
            ours = {n for g in self._names() for n in g}
            theirs = {n for g in saved.get("groups", []) for n in g}
            raise CheckpointError(
                f"The optimizer state in {path} does not fit this model's trainable parameters (missing "
                f"{_few(sorted(ours - theirs)) or 'none'}, unexpected {_few(sorted(theirs - ours)) or 'none'}, or grouped "
                "differently): it was saved from another model, or with other parameters frozen."
            )
        by_name: dict[str, dict] = {name: dict(v) for name, v in saved.get("state", {}).items()}
        for key, t in tensors.items():
            if key.startswith("optimizer."):
                name, entry = key.removeprefix("optimizer.").rsplit(".", 1)
                by_name.setdefault(name, {})[entry] = t
        current = self.optimizer.state_dict()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        names = [n for g in self._names() for n in g]
        state = {}
        for i, (name, p) in enumerate(zip(names, params)):
            if name in by_name:
                for entry, t in by_name[name].items():
                    if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape != p.shape:
                        raise CheckpointError(
                            f"The optimizer state {entry} of {name} in {path} has shape {tuple(t.shape)}, the parameter "
                            f"{tuple(p.shape)}: the checkpoint is from another model."
                        )
                state[i] = by_name[name]
        return {"state": state, "param_groups": current["param_groups"]}
