"""The checks of chapter 04's exercises (pretraining); solutions in ``notebooks/solutions/04_pretraining.ipynb``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers.batches import pad
from helpers.decode import top_p_filter
from helpers.env import eval_mode
from helpers.exercises import check, choice
from helpers.model import IGNORE_INDEX


def perplexity(answer) -> str:
    """Exercise 1 (easy, predict then run): a mean loss of ln 100 nats per token is a perplexity of 100, the number
    of equally likely tokens the model is as unsure as (chapter 04, section 5)."""
    return choice(
        "Exercise 1 (a loss as a number of choices)",
        answer,
        "a",
        "perplexity is exp(loss); a model that spreads its probability evenly over n tokens has loss ln n.",
    )


def entropy(entropy_at, logits: torch.Tensor) -> str:
    """Exercise 2 (easy): ``entropy_at(logits, temperature)``, the entropy in nats of softmax(logits / temperature)
    (chapter 04, section 7)."""
    temps = (0.05, 0.5, 1.0, 2.0, 50.0)
    ref = [float(-(torch.softmax(logits / t, -1) * torch.log_softmax(logits / t, -1)).sum()) for t in temps]

    def attempt():
        first = entropy_at(logits, temps[0])
        return None if first is None else [float(entropy_at(logits, t)) for t in temps]

    return check(
        "Exercise 2 (temperature and entropy)",
        attempt,
        lambda got: all(abs(a - b) < 1e-3 for a, b in zip(got, ref)),
        "H = -sum p log p, with log p = torch.log_softmax(logits / temperature, -1) and p its exp.",
    )


def nucleus(nucleus_fn, logits: torch.Tensor) -> str:
    """Exercise 3 (medium): ``nucleus(probs, p)``, the ids kept by nucleus (top-p) sampling, equal to those
    :func:`helpers.decode.top_p_filter` keeps (chapter 04, section 7)."""
    probs = torch.softmax(logits, -1)
    ps = (0.1, 0.5, 0.9, 0.99)
    ref = [set(torch.isfinite(top_p_filter(logits[None], p))[0].nonzero().flatten().tolist()) for p in ps]
    return check(
        "Exercise 3 (nucleus sampling by hand)",
        lambda: None if nucleus_fn(probs, ps[0]) is None else [nucleus_fn(probs, p) for p in ps],
        lambda got: [{int(i) for i in g} for g in got] == ref,
        "sort the probabilities in descending order, take the cumulative sum, and keep the tokens up to and including "
        "the first one where it reaches p.",
    )


def surprising(answer, model, tokenizer, candidates: list[str]) -> str:
    """Exercise 4 (hard): the verse of ``candidates`` with the highest mean loss per token, each scored on its own
    after an end-of-text token and cut to ``block_size`` (chapter 04, section 5)."""
    device = next(model.parameters()).device
    windows = [[tokenizer.eot_id, *tokenizer.encode(text)][: model.config.block_size + 1] for text in candidates]
    ids, mask = pad(windows, tokenizer.pad_id)
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    with torch.no_grad(), eval_mode(model):  # every verse in one batch, each its own mean
        logits, _ = model(ids[:, :-1].to(device), attention_mask=mask[:, :-1].to(device))
        nll = F.cross_entropy(logits.transpose(1, 2).float().cpu(), targets, ignore_index=IGNORE_INDEX, reduction="none")
    losses = nll.sum(1) / (targets != IGNORE_INDEX).sum(1)
    worst = candidates[int(losses.argmax())]

    return check(
        "Exercise 4 (the most surprising verse)",
        lambda: answer,
        lambda got: got == worst,
        "for each verse: ids = ([eot] + tok.encode(text))[: block_size + 1], then the loss of model(ids[:, :-1], "
        "ids[:, 1:]) under torch.no_grad(); keep the verse with the largest.",
    )
