"""Chapter 04's pretraining recipe, and the pretrained model that chapters 05 and 06 start from.

The recipe: the course tokenizer (:func:`helpers.tokenizers.course_tokenizer`), a GPT of :func:`model_config`
trained with :func:`train_config` on random windows of ``BATCH_SIZE`` of the train verses of both languages
(:func:`token_streams`), evaluated on the validation verses.

- :func:`pretrain` runs the recipe and saves the model as the checkpoint ``artifact_dir("pretrained")`` (see
  :mod:`helpers.checkpoint`), with a fingerprint of the recipe and the tokenizer in its ``config.json``.
- :func:`load_pretrained` loads that checkpoint if it fits the current recipe and tokenizer, and otherwise trains
  it (saying so in one line), so a later chapter runs even if chapter 04 was never run.
- :func:`complete` continues a prompt the way the model saw verses in training (after an end-of-text token).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

import torch

from helpers.batches import RandomWindows, eval_batches
from helpers.checkpoint import CheckpointError, NoCheckpointError, load_model_state, read_config, save_model
from helpers.data import corpus_text
from helpers.env import MODE, artifact_dir, get_device, pick, set_seed
from helpers.model import GPT, GPTConfig
from helpers.plots import LiveLossPlot
from helpers.tokenizers import CourseTokenizer, course_tokenizer
from helpers.train import TrainConfig, Trainer

#: Windows per training batch, and validation batches per evaluation (spread over both languages).
BATCH_SIZE = pick(smoke=8, full=32)
N_VAL_BATCHES = pick(smoke=2, full=8)
#: Bump when the data pipeline changes in a way the configs do not show: older checkpoints then count as stale.
RECIPE_VERSION = 1


def model_config(vocab_size: int) -> GPTConfig:
    """The GPT that chapter 04 pretrains (and chapters 05-06 reuse), for a tokenizer of ``vocab_size`` ids.

    First used in chapter 04, section 1.
    """
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=pick(smoke=64, full=128),
        n_layer=pick(smoke=2, full=4),
        n_head=4,
        n_embd=pick(smoke=64, full=256),
        dropout=0.0,  # about one pass over the data: nothing to regularise yet
    )


def train_config() -> TrainConfig:
    """The optimisation recipe: AdamW, warm-up then cosine decay, evaluated every ``eval_every`` updates.

    Chapter 04's setup cell makes it; section 3 prints and plots it.
    """
    return TrainConfig(
        max_steps=pick(smoke=60, full=900),
        lr=pick(smoke=3e-3, full=2e-3),
        min_lr=1e-4,
        warmup_steps=pick(smoke=10, full=50),
        weight_decay=0.1,
        grad_clip=1.0,
        eval_every=pick(smoke=20, full=50),
    )


def encode_verses(tokenizer: CourseTokenizer, text: str) -> torch.Tensor:
    """One verse a line -> a 1-D LongTensor: each verse's tokens followed by the end-of-text token.

    The end-of-text token after every verse teaches the model where a verse ends (and, at generation time, that
    it can stop); the token before a verse tells it that a new one begins.

    Chapter 04, section 2 writes this out by hand; section 5 calls it.
    """
    _check_tokenizer(tokenizer)
    ids = []
    for verse in tokenizer.encode_batch(text.splitlines()):
        ids += verse
        ids.append(tokenizer.eot_id)
    return torch.tensor(ids, dtype=torch.long)


def token_streams(tokenizer: CourseTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The train and validation verses of both languages (English, then French) as two token streams (in smoke
    mode every 8th train verse, as the smoke tokenizer is trained on, so that encoding takes a second).

    Encoded once per tokenizer and process (it takes seconds in full mode); each call returns fresh copies.
    Taught in chapter 04, section 2."""
    key = _tokenizer_hash(tokenizer)
    if key not in _STREAMS:
        train = corpus_text("train").splitlines(keepends=True)
        train_text = "".join(pick(smoke=train[::8], full=train))
        _STREAMS.clear()  # keep one tokenizer's streams only
        _STREAMS[key] = encode_verses(tokenizer, train_text), encode_verses(tokenizer, corpus_text("val"))
    train_ids, val_ids = _STREAMS[key]
    return train_ids.clone(), val_ids.clone()


_STREAMS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _check_tokenizer(tokenizer) -> None:
    if not isinstance(tokenizer, CourseTokenizer):
        raise TypeError(f"Expected a CourseTokenizer (helpers.tokenizers.course_tokenizer()), got {type(tokenizer).__name__}.")


def _tokenizer_hash(tokenizer: CourseTokenizer) -> str:
    _check_tokenizer(tokenizer)
    return hashlib.sha256(tokenizer.tokenizer.to_str().encode()).hexdigest()


def fingerprint(tokenizer: CourseTokenizer, model_cfg: GPTConfig, train_cfg: TrainConfig, steps_done: int) -> str:
    """A short hash of everything that makes a pretrained model what it is; two checkpoints with the same
    fingerprint were trained the same way on the same tokens.
    Chapter 04 explains it (sections 4 and 10); not called in a notebook."""
    recipe = {
        "version": RECIPE_VERSION,
        "mode": MODE,
        "tokenizer": _tokenizer_hash(tokenizer),
        "model": asdict(model_cfg),
        "train": asdict(train_cfg),
        "batch_size": BATCH_SIZE,
        "val_batches": N_VAL_BATCHES,
        "steps_done": steps_done,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_trainer(
    tokenizer: CourseTokenizer | None = None, device=None, live_plot: bool = False, steps: int | None = None
) -> tuple[GPT, Trainer]:
    """A freshly initialised model of the recipe and its :class:`Trainer`, ready for ``trainer.fit()``.

    ``steps`` replaces the recipe's ``max_steps`` (the learning-rate schedule is then planned over ``steps``).
    Call ``fit(steps=n)`` repeatedly to look at the model between parts of the run. ``live_plot`` redraws the loss
    curves at each evaluation (:class:`helpers.plots.LiveLossPlot`).

    Taught in chapter 04, section 4 (chapter 05, section 6 trains a shorter run with it).
    """
    tokenizer = course_tokenizer() if tokenizer is None else tokenizer
    device = get_device(verbose=False) if device is None else torch.device(device)
    cfg = train_config()
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer (or None for the recipe's {cfg.max_steps}), got {steps!r}.")
        cfg = replace(cfg, max_steps=steps, warmup_steps=min(cfg.warmup_steps, steps))
    train_ids, val_ids = token_streams(tokenizer)
    mcfg = model_config(tokenizer.vocab_size)
    set_seed(cfg.seed)  # the same initial weights on every run
    model = GPT(mcfg).to(device)
    trainer = Trainer(
        model,
        cfg,
        RandomWindows(train_ids, mcfg.block_size, BATCH_SIZE, seed=cfg.seed),
        eval_batches(val_ids, mcfg.block_size, BATCH_SIZE, n_batches=N_VAL_BATCHES),
        device=device,
        live_plot=LiveLossPlot() if live_plot else None,
    )
    return model, trainer


def save_pretrained(model: GPT, tokenizer: CourseTokenizer, trainer: Trainer):
    """Save ``model`` to ``artifact_dir("pretrained")`` (atomically), with its config, the recipe's fingerprint
    and the run's final validation loss; returns the folder. Taught in chapter 04, section 4."""
    val = [row["val_loss"] for row in trainer.history if row["val_loss"] is not None]
    config = {
        "model": asdict(model.config),
        "vocab_size": tokenizer.vocab_size,
        "fingerprint": fingerprint(tokenizer, model.config, trainer.cfg, trainer.step),
        "steps": trainer.step,
        "val_loss": val[-1] if val else None,
        "train_seconds": trainer.history[-1]["elapsed_s"] if trainer.history else None,
    }
    return save_model(model, artifact_dir("pretrained"), config=config)


def pretrain(
    tokenizer: CourseTokenizer | None = None, device=None, live_plot: bool = False, steps: int | None = None
) -> tuple[GPT, Trainer]:
    """Run the recipe (``steps`` replaces its ``max_steps``), save the model with :func:`save_pretrained` and
    return ``(model, trainer)``; the model is left in eval mode. Named in chapter 04, section 4;
    :func:`load_pretrained` calls it when no saved model fits."""
    tokenizer = course_tokenizer() if tokenizer is None else tokenizer
    model, trainer = build_trainer(tokenizer, device, live_plot, steps)
    trainer.fit()
    save_pretrained(model, tokenizer, trainer)
    return model.eval(), trainer


def _read_checkpoint(path, tokenizer: CourseTokenizer) -> tuple[GPT | None, str]:
    """The model of the checkpoint in ``path`` if it fits the current recipe, else None and why not."""
    try:
        model = GPT(GPTConfig(**read_config(path)["model"]))
        config = load_model_state(model, path)  # the config of the very weights loaded, should a save come between
    except NoCheckpointError:
        return None, "none found (chapter 04 saves it)"
    except CheckpointError as err:  # corrupt, incomplete, non-finite weights, or of another layout
        return None, f"the one found is unusable ({str(err).rstrip('.')})"
    except (KeyError, TypeError, ValueError) as err:
        return None, f"the one found has a config this code cannot read ({err!r})"
    expected = fingerprint(tokenizer, model_config(tokenizer.vocab_size), train_config(), train_config().max_steps)
    if config.get("fingerprint") != expected or model.config != model_config(tokenizer.vocab_size):
        return None, "the one found was trained with another recipe or tokenizer"
    return model, ""


def load_pretrained(device=None) -> tuple[GPT, CourseTokenizer]:
    """The pretrained model (in eval mode, on ``device``) and its tokenizer.

    Loads ``artifact_dir("pretrained")`` if it holds a checkpoint of the current recipe and tokenizer; otherwise
    (none there, a stale one, or one that is corrupt or holds NaN weights) prints one line saying why and trains it
    with :func:`pretrain`.

    Taught in chapter 04, section 10; chapters 05 and 06 start from it.
    """
    tokenizer = course_tokenizer()
    device = get_device(verbose=False) if device is None else torch.device(device)
    path = artifact_dir("pretrained")
    model, problem = _read_checkpoint(path, tokenizer)
    if model is not None:
        return model.to(device).eval(), tokenizer
    steps = train_config().max_steps
    took = pick(smoke="seconds", full="about 15 minutes on a 2-core CPU, a few on a GPU")
    print(f"Pretrained model ({MODE} mode): {problem}; training it now as chapter 04 does ({steps} steps, {took}).")
    model, _ = pretrain(tokenizer, device)
    return model, tokenizer


def complete(
    model: GPT,
    tokenizer: CourseTokenizer,
    prompt: str,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> str:
    """The model's continuation of ``prompt`` (the new text only), greedy by default, stopping at end of text.

    The prompt is read after an end-of-text token, as every verse was in training. ``seed`` makes sampling
    reproducible (see :func:`helpers.decode.sample_next` for ``temperature``, ``top_k``, ``top_p``).

    First used in chapter 04, section 4; section 7 compares its decoding settings.
    """
    device = next(model.parameters()).device
    idx = torch.tensor([[tokenizer.eot_id, *tokenizer.encode(prompt)]], device=device)
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)
    out = model.generate(
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        use_cache=use_cache,
        eos_id=tokenizer.eot_id,
        generator=generator,
    )
    return tokenizer.decode(out[0, idx.size(1) :].tolist())
