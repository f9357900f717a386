"""Batches for :class:`helpers.train.Trainer`: each training batch is a pure function of ``(seed, step)``.

The trainer asks for batch ``i`` by calling ``train_batches(i)``. Because the batch depends only on the seed and
``i`` (not on what was drawn before), a run resumed from a checkpoint sees exactly the batches the uninterrupted
run would have seen, with no data-loader state to save.

- :class:`RandomWindows`: random windows of a long token stream, ``(x, y)`` with ``y`` = ``x`` shifted by one
  (next-token pretraining).
- :func:`eval_batches`: a fixed list of windows spread over a validation stream.
- :class:`ShuffledBatches`: batches of examples from a list, epoch by epoch in a seeded order (fine-tuning).
- :func:`pad`: token-id lists of different lengths as one padded tensor and its attention mask.
- :func:`length_buckets`: examples grouped into batches of similar length, so that little compute goes to padding.

Chapter 04, section 2 introduces the training windows; chapter 06 fine-tunes on :class:`ShuffledBatches`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def seeded_generator(*entropy: int) -> torch.Generator:
    """A CPU torch generator seeded from the integers ``entropy``, e.g. ``(seed, step)``: NumPy's ``SeedSequence``
    mixes them, so that no two tuples share a stream (``seed + step`` would: (0, 1) and (1, 0)).
    Not shown in a notebook: chapter 04's windows, chapter 05's masks and chapter 06's batches draw from it."""
    if any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in entropy):
        raise ValueError(f"a seed and a step must be integers >= 0, got {entropy}")
    state = np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def pad(sequences: Sequence[Sequence[int]], value: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one (B, T) tensor padded with ``value`` to the longest (T), and its attention mask (1 =
    token, 0 = padding). ``side="left"`` puts the padding first, as generation needs (every row ends at T).
    Not shown in a notebook: chapter 05's fill-in accuracy and chapter 06's batches and decoding pad with it."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
    if not sequences:
        raise ValueError("pad needs at least one sequence.")
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), value, dtype=torch.long)
    mask = torch.zeros(len(sequences), T, dtype=torch.long)
    for row, s in enumerate(sequences):
        span = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[row, span] = torch.as_tensor(s, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def _as_tokens(tokens, block_size: int) -> torch.Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be a 1-D tensor of integer token ids, got shape {tuple(tokens.shape)} {tokens.dtype}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if len(tokens) < block_size + 1:
        raise ValueError(
            f"A window needs block_size + 1 = {block_size + 1} tokens (inputs plus the next token), but the stream has "
            f"{len(tokens)}: use a smaller block_size or more text."
        )
    return tokens


def _windows(tokens: torch.Tensor, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = tokens[starts[:, None] + torch.arange(block_size + 1)].long()
    return chunk[:, :-1], chunk[:, 1:]


class RandomWindows:
    """Random training windows of a token stream: ``batches(step) -> (x, y)``, both ``(batch_size, block_size)``.

    ``y[:, t]`` is the token after ``x[:, t]``. Window starts are drawn uniformly from a generator seeded by
    ``(seed, step)``, so ``batches(step)`` always returns the same batch. Tensors stay on the CPU; the trainer
    moves them to its device.

    Taught in chapter 04, section 2.
    """

    def __init__(self, tokens, block_size: int, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tokens = _as_tokens(tokens, block_size)
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_starts = len(self.tokens) - self.block_size
        starts = torch.randint(0, n_starts, (self.batch_size,), generator=seeded_generator(self.seed, step))
        return _windows(self.tokens, starts, self.block_size)


def eval_batches(tokens, block_size: int, batch_size: int, n_batches: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """A fixed list of ``(x, y)`` validation batches of ``block_size`` windows.

    With ``n_batches=None``: every non-overlapping window, in order (the last batch may be smaller). With
    ``n_batches``: ``n_batches * batch_size`` windows spread evenly over the whole stream, so a capped evaluation
    still sees all of it (e.g. both languages of a stream that holds English then French).

    Named in chapter 04, section 2; first used in section 5.
    """
    tokens = _as_tokens(tokens, block_size)
    n_fit = (len(tokens) - 1) // block_size  # non-overlapping windows that fit
    if n_batches is None:
        starts = torch.arange(n_fit) * block_size
    else:
        if n_batches < 1:
            raise ValueError(f"n_batches must be >= 1 or None, got {n_batches}")
        n_windows = n_batches * batch_size
        if n_windows > n_fit:
            raise ValueError(
                f"{n_batches} batches of {batch_size} windows need {n_windows} non-overlapping windows of {block_size} "
                f"tokens, but the stream has room for {n_fit}: ask for at most {max(n_fit // batch_size, 1)} batches "
                f"(or n_batches=None for all of them)."
            )
        starts = torch.linspace(0, len(tokens) - block_size - 1, n_windows).round().long()
    return [_windows(tokens, s, block_size) for s in starts.split(batch_size)]


class ShuffledBatches:
    """Batches of ``batch_size`` examples, ``batches(step) -> collate(list_of_examples)``.

    Each epoch visits every example once, in an order seeded by ``(seed, epoch)``; the ``len(examples) %
    batch_size`` examples left over at the end of an epoch are skipped that epoch (they come up in others).
    ``collate`` turns a list of examples into a batch: a tuple (passed as ``model(*batch)``) or a dict
    (``model(**batch)``), e.g. padded token ids and targets.

    Not shown in a notebook: chapter 06's :func:`helpers.recipes.translation.finetune` (section 4) draws from it.
    """

    def __init__(self, examples: Sequence, batch_size: int, collate: Callable[[list], object], seed: int = 0):
        if not 1 <= batch_size <= len(examples):
            raise ValueError(f"batch_size must be between 1 and the number of examples ({len(examples)}), got {batch_size}")
        self.examples = examples
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.batches_per_epoch = len(examples) // batch_size
        self._epoch, self._order = -1, None

    def __call__(self, step: int):
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._order = torch.randperm(len(self.examples), generator=seeded_generator(self.seed, epoch))
            self._epoch = epoch
        picked = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        return self.collate([self.examples[j] for j in picked.tolist()])


def length_buckets(examples: Sequence, batch_size: int, seed: int = 0, window: int = 50) -> list[list]:
    """Split ``examples`` (anything with ``ids``) into batches of similar length: shuffle (seeded), sort each run of
    ``window`` batches' worth of examples by length, cut it into batches. A right-padded batch costs its longest example times its
    size, so grouping lengths saves the compute spent on padding while the batches stay varied.
    Named in chapter 06, section 4; chapter 06's ``finetune`` and chapter 08's ``train_classifier`` batch with it."""
    if not 1 <= batch_size <= len(examples):
        raise ValueError(f"batch_size must be between 1 and the number of examples ({len(examples)}), got {batch_size}.")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = []
    for start in range(0, len(order) - batch_size + 1, window * batch_size):
        run = sorted(order[start : start + window * batch_size], key=lambda i: len(examples[i].ids))
        batches += [[examples[i] for i in run[j : j + batch_size]] for j in range(0, len(run) - batch_size + 1, batch_size)]
    return batches
