"""The checks of chapter 02's exercises (self-attention); solutions in ``notebooks/solutions/02_self_attention.ipynb``."""

from __future__ import annotations

import torch

from helpers.attention import causal_mask, scaled_dot_product_attention
from helpers.exercises import check, choice


def causal(my_causal_mask) -> str:
    """Exercise 1 (easy): ``my_causal_mask(T)`` equals :func:`helpers.attention.causal_mask` (chapter 02, section 4)."""
    sizes = (1, 2, 5, 9)
    return check(
        "Exercise 1 (the causal mask)",
        lambda: None if my_causal_mask(2) is None else [my_causal_mask(n) for n in sizes],
        lambda got: all(g.dtype == torch.bool and torch.equal(g, causal_mask(n)) for g, n in zip(got, sizes)),
        "key j is visible from query i when j <= i: compare torch.arange(T)[:, None] with torch.arange(T)[None, :], "
        "or use .tril() on a matrix of ones; the result must be a bool tensor.",
    )


def sharper_keys(answer) -> str:
    """Exercise 2 (easy, predict then run): multiplying every key by 10 multiplies every score by 10, so the softmax
    moves towards one-hot on the best-matching key (chapter 02, section 3)."""
    return choice(
        "Exercise 2 (keys ten times longer)",
        answer,
        "c",
        "what does a softmax do to scores that are all multiplied by the same large number? Try it on three scores.",
    )


def one_query(weights, output, q, keys, values) -> str:
    """Exercise 3 (medium): the attention weights and output of one query computed by hand (chapter 02, section 1)."""
    out, w = scaled_dot_product_attention(torch.tensor([q]), torch.tensor(keys), torch.tensor(values))
    return check(
        "Exercise 3 (one query by hand)",
        lambda: None if weights is Ellipsis or output is Ellipsis else (weights, output),
        lambda got: (
            torch.allclose(torch.tensor(got[0], dtype=torch.float32), w[0], atol=1e-4)
            and torch.allclose(torch.tensor(got[1], dtype=torch.float32), out[0], atol=1e-3)
        ),
        "scores s_j = (q · k_j) / sqrt(d); weights exp(s_j) / (sum of the exps); output = sum over j of w_j * v_j.",
    )


def one_head(head_weights, mha, x, head: int) -> str:
    """Exercise 4 (hard): the causal attention weights of one head of a ``MultiHeadAttention``, from slices of its
    fused ``qkv`` projection (chapter 02, section 6)."""
    with torch.no_grad():
        _, all_weights = mha(x, is_causal=True)
    return check(
        f"Exercise 4 (head {head} by hand)",
        lambda: head_weights,
        lambda got: (
            tuple(got.shape) == tuple(all_weights[:, head].shape) and torch.allclose(got, all_weights[:, head], atol=1e-5)
        ),
        "rows head*d_head:(head+1)*d_head of the q block (rows 0:d_model) give the head's W_q; the k block starts at "
        "row d_model. Scale by sqrt(d_head), mask with causal_mask, softmax over the keys.",
    )
