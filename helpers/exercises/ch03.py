"""The checks of chapter 03's exercises (the GPT model); solutions in ``notebooks/solutions/03_gpt_model.ipynb``."""

from __future__ import annotations

import torch

from helpers.exercises import check, choice, each
from helpers.model import GPT, GPTConfig

_TINY = dict(block_size=32, n_layer=2, n_head=4, n_embd=32)


def _tiny(vocab_size: int = 64, seed: int = 0, **overrides) -> GPT:
    with torch.random.fork_rng(devices=[]):  # the learner's random state is left as it was
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=vocab_size, **{**_TINY, **overrides})).eval()


def params_no_bias(n_params_no_bias) -> str:
    """Exercise 1 (easy): ``n_params_no_bias(config)`` counts a ``bias=False`` GPT's parameters, checked against
    ``GPT(config).num_params(non_embedding=False)`` on two configurations (chapter 03, section 5's table)."""
    cases = [
        GPTConfig(vocab_size=100, block_size=16, n_layer=1, n_head=2, n_embd=8, bias=False),
        GPTConfig(vocab_size=512, block_size=64, n_layer=3, n_head=4, n_embd=64, bias=False),
    ]
    counted = [GPT(c).num_params(non_embedding=False) for c in cases]
    return check(
        "Exercise 1 (parameters without biases)",
        lambda: each([n_params_no_bias(c) for c in cases]),
        lambda got: [int(n) for n in got] == counted,
        "go through the table of section 5 and keep only the weight matrices and the LayerNorm gains.",
    )


def longer_context(answer) -> str:
    """Exercise 2 (easy, predict then run): what doubling ``block_size`` does to the parameter count (chapter 03,
    section 5): only the position table grows, by block_size x n_embd."""
    return choice(
        "Exercise 2 (a longer context)",
        answer,
        "b",
        "which of the model's tables or matrices has one row per position? Count the parameters of two models to see.",
    )


def leak(leak_fn) -> str:
    """Exercise 3 (medium): ``leak(model, idx, t)`` measures how much changing token ``t`` moves the logits before
    ``t``: zero for a causal GPT, clearly positive for an encoder (chapter 03, section 6)."""
    idx = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    decoder, encoder = _tiny(), _tiny(causal=False)
    return check(
        "Exercise 3 (a leak detector)",
        lambda: each([leak_fn(decoder, idx, 12), leak_fn(encoder, idx, 12)]),
        lambda got: float(got[0]) < 1e-5 and float(got[1]) > 1e-4,
        "clone idx, set position t to another id, run both through the model under torch.no_grad() and compare "
        "the logits of the positions before t only.",
    )


def left_pad(left_pad_fn, pad_id: int = 1) -> str:
    """Exercise 4 (hard): ``left_pad(seqs, pad_id)`` pads prompts on the left with an attention mask, so that a batch
    generates what each prompt generates alone (chapter 03, section 8)."""
    model = _tiny()
    prompts = [[5, 9, 13], [7, 8, 20, 21, 22, 40], [3]]
    alone = [model.generate(torch.tensor([p]), 6, temperature=0)[0, len(p) :] for p in prompts]

    def right(got):
        idx, mask = got
        if idx.shape != mask.shape or idx.shape != (3, 6) or not bool((idx[mask == 0] == pad_id).all()):
            return False
        batch = model.generate(idx.long(), 6, temperature=0, attention_mask=mask.long())[:, idx.shape[1] :]
        return all(torch.equal(batch[i], alone[i]) for i in range(len(prompts)))

    return check(
        "Exercise 4 (a batch of prompts)",
        lambda: left_pad_fn([list(p) for p in prompts], pad_id),
        right,
        "every row must end with its prompt's last token: the padding goes before the tokens, and the mask is 0 there.",
    )
