"""Masked language modelling (chapter 05): BERT's masking, masked training batches, and filling in blanks.

The encoder is :class:`helpers.model.GPT` built with ``GPTConfig(causal=False)``: the same blocks, but every
position attends to every other one. Its training batches are windows of the token stream in which about 15% of the
tokens are *selected*; the targets hold the original token at selected positions and ``-100`` elsewhere, so
``GPT.forward``'s cross-entropy averages over the selected positions only.

- :func:`mask_tokens`: BERT's rule (15% selected; of those 80% ``[MASK]``, 10% a random token, 10% unchanged).
- :class:`MaskedWindows` / :func:`masked_eval_batches`: training batches by ``(seed, step)`` and a fixed validation
  set, both for :class:`helpers.train.Trainer`.
- :func:`fill_mask`: the top-k tokens for a blank in a text (an encoder uses both sides, a causal model the left).
- :func:`word_blanks` / :func:`fill_in_accuracy`: one-token words blanked out of held-out verses, and how often a
  model's first (or top-k) guess is the word.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from helpers.batches import RandomWindows, eval_batches, pad, seeded_generator
from helpers.env import eval_mode
from helpers.model import IGNORE_INDEX

#: Of the selected tokens, these fractions become ``[MASK]`` and a random token; the rest stay unchanged (BERT).
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1
BLANK = "___"


def _check_masking(mask_id: int, vocab_size: int, p: float, special_ids) -> list[int]:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}.")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must be a token id in [0, {vocab_size}), got {mask_id!r}; use tokenizer.mask_id.")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"p (the fraction of tokens selected for prediction) must lie in (0, 1], got {p!r}.")
    special = sorted({int(i) for i in special_ids} | {mask_id})
    if special[0] < 0 or special[-1] >= vocab_size or len(special) >= vocab_size:
        raise ValueError(f"special_ids must be token ids in [0, {vocab_size}) that leave some ordinary tokens, got {special}.")
    return special


def mask_tokens(
    ids, mask_id: int, vocab_size: int, p: float = 0.15, generator: torch.Generator | None = None, special_ids: Iterable[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a tensor of token ids (any shape): returns ``(inputs, targets)`` of the same shape.

    Each token outside ``special_ids`` is *selected* with probability ``p``. A selected token becomes ``mask_id``
    (80%), a random ordinary token (10%; never a special token or ``mask_id``), or stays as it is (10%). ``targets``
    holds the original id at selected positions and ``-100`` (ignored by the loss) everywhere else. Special tokens
    (end of text, padding) are never selected. The draws come from ``generator``: the same seed, the same masks.

    Taught in chapter 05, section 2.
    """
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"ids must be a tensor of integer token ids, got {type(ids).__name__} {getattr(ids, 'dtype', '')}.")
    special = _check_masking(mask_id, vocab_size, p, special_ids)
    ids = ids.long()
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"Token ids must lie in [0, {vocab_size}) (vocab_size), got {int(ids.min())} to {int(ids.max())}.")
    ordinary = torch.ones(vocab_size, dtype=torch.bool)
    ordinary[special] = False
    ordinary_ids = ordinary.nonzero().squeeze(1)
    # Three draws in a fixed order, all of the input's shape, so the result depends on the seed and the shape only.
    u_select = torch.rand(ids.shape, generator=generator)
    u_how = torch.rand(ids.shape, generator=generator)
    random_ids = ordinary_ids[torch.randint(0, len(ordinary_ids), ids.shape, generator=generator)]
    selected = (u_select < p) & ordinary[ids]
    targets = ids.masked_fill(~selected, IGNORE_INDEX)
    inputs = torch.where(selected & (u_how < MASK_FRACTION), mask_id, ids)
    to_random = selected & (u_how >= MASK_FRACTION) & (u_how < MASK_FRACTION + RANDOM_FRACTION)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, targets


def _mask_generator(seed: int, step: int) -> torch.Generator:
    """The generator of the masks of batch ``step``: seeded from ``(seed, step)`` apart from the windows' own draws."""
    return seeded_generator(seed, step, 1)


class MaskedWindows:
    """Masked training windows of a token stream: ``batches(step) -> (inputs, targets)``, both (batch_size, block_size).

    The windows are :class:`helpers.batches.RandomWindows`' (seeded by ``(seed, step)``), masked by
    :func:`mask_tokens` with a generator seeded by ``(seed, step)`` too: ``batches(step)`` is always the same batch,
    so a resumed run sees the very batches of the uninterrupted one.

    Taught in chapter 05, section 3.
    """

    def __init__(
        self,
        tokens,
        block_size: int,
        batch_size: int,
        mask_id: int,
        vocab_size: int,
        seed: int = 0,
        special_ids: Iterable[int] = (),
        p: float = 0.15,
    ):
        _check_masking(mask_id, vocab_size, p, special_ids)
        self.windows = RandomWindows(tokens, block_size, batch_size, seed)
        self.mask_id, self.vocab_size, self.seed, self.p = mask_id, vocab_size, seed, p
        self.special_ids = tuple(special_ids)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.windows(step)  # the shifted next-token targets are not used: the masked tokens are the targets
        return mask_tokens(x, self.mask_id, self.vocab_size, self.p, _mask_generator(self.seed, step), self.special_ids)


def masked_eval_batches(
    tokens,
    block_size: int,
    batch_size: int,
    mask_id: int,
    vocab_size: int,
    n_batches: int | None = None,
    seed: int = 0,
    special_ids: Iterable[int] = (),
    p: float = 0.15,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of masked ``(inputs, targets)`` validation batches: the windows of
    :func:`helpers.batches.eval_batches`, batch ``i`` masked with a generator seeded by ``(seed, i)``.
    First used in chapter 05, section 4."""
    _check_masking(mask_id, vocab_size, p, special_ids)
    special_ids = tuple(special_ids)
    return [
        mask_tokens(x, mask_id, vocab_size, p, _mask_generator(seed, i), special_ids)
        for i, (x, _) in enumerate(eval_batches(tokens, block_size, batch_size, n_batches))
    ]


# ------------------------------------------------------------------------------------------- filling in blanks
def _eval_logits(model, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``model`` for ``idx`` on the model's device, in eval mode (restored afterwards), without gradients."""
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        mask = None if attention_mask is None else attention_mask.to(device)
        return model(idx.to(device), attention_mask=mask)[0].float().cpu()


def fill_mask(
    model, tokenizer, text: str, k: int = 5, n_tokens: int = 1, prefix: Sequence[int] = (), blank: str = BLANK
) -> list[list[tuple[str, float]]]:
    """The ``k`` likeliest tokens, with their probabilities, for each token of the blank in ``text``.

    ``text`` holds one ``blank`` ("___"), which stands for ``n_tokens`` tokens (a word's leading space belongs to the
    word, as in the tokenizer: write "the ___ and"). ``prefix`` (token ids, e.g. ``[tokenizer.eot_id]``) goes before
    the text. An encoder (``config.causal=False``) reads ``n_tokens`` mask tokens in place of the blank and sees both
    sides; each masked position is predicted on its own, as in BERT. A causal model can only read the text before
    the blank: it predicts the blank's first token from the left context, so it needs ``n_tokens=1``.
    Returns one list per blank token of ``(token text, probability)``, likeliest first.

    Taught in chapter 05, section 5.
    """
    if not isinstance(text, str) or text.count(blank) != 1:
        raise ValueError(f"text must be a string with exactly one blank {blank!r}, e.g. 'God created the {blank} and the earth.'")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}.")
    causal = model.config.causal
    if causal and n_tokens != 1:
        raise ValueError(
            "A causal model predicts only the first token of a blank, from the text on its left: pass n_tokens=1 "
            "(or use an encoder, GPTConfig(causal=False), to fill several tokens)."
        )
    if not 1 <= k <= model.config.vocab_size:
        raise ValueError(f"k must lie in [1, vocab_size={model.config.vocab_size}], got {k!r}.")
    left, right = text.split(blank)
    # The blank's word carries its leading space, so the space before the blank is not a token of its own.
    left_ids = list(prefix) + tokenizer.encode(left.rstrip(" "))
    ids = left_ids + [tokenizer.mask_id] * n_tokens + tokenizer.encode(right)
    if causal and not left_ids:
        raise ValueError("A causal model needs some text (or a prefix token) before the blank to predict it from.")
    positions = range(len(left_ids), len(left_ids) + n_tokens)
    logits = _eval_logits(model, torch.tensor([ids]))[0]
    rows = [logits[len(left_ids) - 1]] if causal else [logits[i] for i in positions]
    out = []
    for row in rows:
        probs, top = row.softmax(-1).topk(k)
        out.append([(tokenizer.decode([int(t)], skip_special=False), float(q)) for q, t in zip(probs, top)])
    return out


@dataclass(frozen=True)
class Blank:
    """A text's token ids (unmasked) and the position of the one-token word to fill in (chapter 05, section 6)."""

    ids: tuple[int, ...]
    pos: int

    @property
    def answer(self) -> int:
        return self.ids[self.pos]


_WORD = re.compile(r"^ [^\W\d_]+$")  # a space and letters only: the start of a word in byte-level BPE
_LETTER = re.compile(r"^[^\W\d_]")


def word_blanks(
    tokenizer,
    texts: Iterable[str],
    seed: int = 0,
    min_letters: int = 3,
    prefix: Sequence[int] = (),
    max_tokens: int | None = None,
) -> list[Blank]:
    """One blank per text: a whole word of at least ``min_letters`` letters that is a single token, not the first
    word, picked at random (seeded). ``prefix`` ids go before each text. Texts without such a word, and texts longer
    than ``max_tokens`` (prefix included; pass the model's block_size), are skipped. Taught in chapter 05, section 6."""
    rng = random.Random(seed)
    blanks = []
    for text in texts:
        ids = list(prefix) + tokenizer.encode(text)
        if max_tokens is not None and len(ids) > max_tokens:
            continue
        pieces = [tokenizer.decode([i], skip_special=False) for i in ids]
        candidates = [
            t
            for t in range(len(prefix) + 1, len(ids))
            if _WORD.match(pieces[t])
            and len(pieces[t]) > min_letters
            and (t + 1 == len(ids) or not _LETTER.match(pieces[t + 1]))  # the next token does not continue the word
        ]
        if candidates:
            blanks.append(Blank(tuple(ids), rng.choice(candidates)))
    return blanks


def fill_in_accuracy(model, tokenizer, blanks: Sequence[Blank], k: int = 5, batch_size: int = 64) -> dict[str, float]:
    """How often the blank's word is the model's first guess (``top1``) or among its ``k`` first (``top{k}``).

    An encoder reads each text with ``mask_id`` at the blank and predicts it from both sides; a causal model reads
    the text and predicts the blank from the tokens before it only (its logits one position earlier).
    Taught in chapter 05, section 6."""
    if not blanks:
        raise ValueError("No blanks to fill: build them with word_blanks(tokenizer, texts).")
    causal = model.config.causal
    top1 = topk = 0
    for start in range(0, len(blanks), batch_size):
        chunk = blanks[start : start + batch_size]
        idx, attention = pad([b.ids for b in chunk], tokenizer.pad_id)
        if not causal:
            for row, b in enumerate(chunk):
                idx[row, b.pos] = tokenizer.mask_id
        logits = _eval_logits(model, idx, attention)
        rows = torch.arange(len(chunk))
        at = torch.tensor([b.pos - 1 if causal else b.pos for b in chunk])
        guesses = logits[rows, at].topk(k, dim=-1).indices
        answers = torch.tensor([b.answer for b in chunk])
        top1 += int((guesses[:, 0] == answers).sum())
        topk += int((guesses == answers[:, None]).any(dim=1).sum())
    return {"top1": top1 / len(blanks), f"top{k}": topk / len(blanks)}
