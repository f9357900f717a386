"""Scaled dot-product attention, its masks, and multi-head self-attention, written out to be read (chapter 02).

The GPT of chapter 03 (:class:`helpers.model.SelfAttention`) does not reuse this code: it calls torch's fused
``scaled_dot_product_attention``, which chapter 02 shows gives the same outputs as the version here, faster.

Mask convention (the same as ``torch.nn.functional.scaled_dot_product_attention``): a boolean mask is True where a
query **may attend** to a key. ``torch.nn.MultiheadAttention`` uses the opposite (True = blocked) for its
``attn_mask`` and ``key_padding_mask``; :meth:`MultiHeadAttention.from_torch` and the tests show how to translate.

A query row whose keys are all masked gets all-zero weights and an all-zero output (never NaN), as torch's SDPA does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(T: int, device=None) -> torch.Tensor:
    """The (T, T) boolean mask of a decoder: query t may attend to keys 0..t (True on and below the diagonal).

    Taught in chapter 02, section 4.
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"causal_mask needs a positive integer length, got {T!r}.")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """From a (B, T) 0/1 tensor (1 = real token, 0 = padding) to a (B, 1, 1, T) boolean key mask (chapter 02, section 5).

    The result broadcasts against (B, n_head, T_q, T): no query may attend to a padding key. For scores without a
    head dimension, (B, T_q, T), use ``padding_mask(m)[:, 0]``.
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"padding_mask expects a (batch, time) tensor of 0/1, got {shape}.")
    if attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("padding_mask expects only 0 (padding) and 1 (real token) in attention_mask.")
    return attention_mask.bool()[:, None, None, :]


def _allowed_and_bias(mask, is_causal, shape, device):
    """Turn ``mask`` and ``is_causal`` into (allowed: bool tensor or None, bias: float tensor or None)."""
    Tq, Tk = shape[-2], shape[-1]
    allowed = bias = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor (bool: True = may attend, or additive float), got {type(mask)}.")
        try:
            broadcast = torch.broadcast_shapes(mask.shape, shape)
        except RuntimeError:
            broadcast = None
        if broadcast != torch.Size(shape):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the attention scores' shape {tuple(shape)} "
                "(..., T_q, T_k); for a (B, T) padding mask use padding_mask(), which gives (B, 1, 1, T)."
            )
        if mask.dtype == torch.bool:
            allowed = mask
        elif mask.is_floating_point():
            bias = mask
            allowed = mask != float("-inf")
        else:
            raise TypeError(
                f"mask has dtype {mask.dtype}; pass a boolean mask (True = may attend) or an additive float mask "
                "(0 or -inf). A 0/1 attention_mask of shape (B, T) becomes one with padding_mask()."
            )
    if is_causal:
        causal = torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril()
        allowed = causal if allowed is None else allowed & causal
    return allowed, bias


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim < 2:
            raise ValueError(f"{name} must be a tensor shaped (..., T, d), got {getattr(t, 'shape', type(t))}.")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k need the same last dimension d, got q {tuple(q.shape)} and k {tuple(k.shape)}.")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v need the same length T_k, got k {tuple(k.shape)} and v {tuple(v.shape)}.")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v need one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; convert with .to(dtype).")


def scaled_dot_product_attention(q, k, v, mask=None, is_causal=False, *, dropout_p: float = 0.0):
    """softmax(q kᵀ / √d + mask) v, written out so that the weights can be looked at (chapter 02, section 2).

    q: (..., T_q, d), k: (..., T_k, d), v: (..., T_k, d_v). ``mask`` broadcasts to (..., T_q, T_k) and is either
    boolean (True = may attend, as in torch's SDPA) or an additive float mask (0 = keep, -inf = block).
    ``is_causal`` adds the lower-triangular mask aligned at the top left (query i sees keys 0..i, torch's
    convention also when T_q != T_k); unlike torch's SDPA it may be combined with ``mask`` (both must allow).
    ``dropout_p`` drops weights at random (pass 0.0 at evaluation). The softmax runs in float32 at least (float64 for
    float64 inputs). Returns ``(output (..., T_q, d_v), weights (..., T_q, T_k))``; the weights are the ones applied to v
    (after dropout), blocked keys get exactly 0, and a query with no key allowed gets zero weights and output.
    """
    _check_qkv(q, k, v)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    allowed, bias = _allowed_and_bias(mask, is_causal, scores.shape, q.device)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    if bias is not None:
        scores = scores + bias
    if allowed is not None:
        # The most negative finite float, not -inf: a fully blocked row then gets a finite softmax instead of
        # 0/0 = NaN, and zeroing the blocked entries afterwards makes every blocked weight exactly 0.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if allowed is not None:
        weights = weights.masked_fill(~allowed, 0.0)
    weights = weights.to(q.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with one fused input projection (chapter 02, section 6).

    ``qkv`` is one ``nn.Linear(d_model, 3 * d_model)`` whose output rows are [queries; keys; values], the layout of
    ``nn.MultiheadAttention.in_proj_weight`` (and of GPT-2's ``c_attn``, transposed); ``proj`` mixes the heads.
    One matrix product for q, k and v is faster than three; slicing the weight gives the separate projections.
    """

    def __init__(self, d_model: int, n_head: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if d_model < 1 or n_head < 1:
            raise ValueError(f"d_model and n_head must be positive, got d_model={d_model}, n_head={n_head}.")
        if d_model % n_head:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_head={n_head}: each head gets d_model // n_head dimensions. "
                f"Pick n_head among the divisors of d_model."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout is a probability in [0, 1), got {dropout}.")
        self.d_model, self.n_head, self.d_head, self.dropout = d_model, n_head, d_model // n_head, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, mask=None, is_causal=False, need_weights=True):
        """x: (B, T, d_model) -> (out (B, T, d_model), weights (B, n_head, T, T)).

        ``mask`` as in :func:`scaled_dot_product_attention`, broadcastable to (B, n_head, T, T), e.g. from
        :func:`padding_mask`. With ``need_weights=False`` the weights are not kept (None) and torch's fused kernel
        computes the same output faster and without the (T, T) matrix. On both paths a query with no allowed key gets
        a zero attention output (before ``proj``).
        """
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be shaped (batch, time, d_model={self.d_model}), got {tuple(x.shape)}.")
        B, T, _ = x.shape
        # (B, T, 3 * d_model) -> three (B, n_head, T, d_head)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.d_head).permute(2, 0, 3, 1, 4)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask, is_causal, dropout_p=dropout_p)
        else:
            attn_mask = None
            if mask is not None:  # torch's SDPA refuses a mask together with is_causal: fold both into one mask
                allowed, bias = _allowed_and_bias(mask, is_causal, (B, self.n_head, T, T), x.device)
                attn_mask = allowed if bias is None else torch.where(allowed, bias, float("-inf"))
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal and mask is None, dropout_p=dropout_p
            )
            if mask is not None:  # torch's CUDA kernels give a query with no allowed key a non-zero output
                out = out.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
            weights = None
        return self.proj(out.transpose(1, 2).reshape(B, T, self.d_model)), weights

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy of ``torch.nn.MultiheadAttention`` (self-attention form, same weights, same dtype and device)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"from_torch expects a torch.nn.MultiheadAttention, got {type(mha).__name__}.")
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "from_torch copies self-attention only: build nn.MultiheadAttention without kdim/vdim, "
                "add_bias_kv or add_zero_attn."
            )
        bias = mha.in_proj_bias is not None
        ours = cls(mha.embed_dim, mha.num_heads, bias=bias, dropout=mha.dropout)
        ours.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        with torch.no_grad():
            ours.qkv.weight.copy_(mha.in_proj_weight)
            ours.proj.weight.copy_(mha.out_proj.weight)
            if bias:
                ours.qkv.bias.copy_(mha.in_proj_bias)
                ours.proj.bias.copy_(mha.out_proj.bias)
        return ours

    def to_torch(self) -> nn.MultiheadAttention:
        """A ``torch.nn.MultiheadAttention(batch_first=True)`` with this module's weights, dtype and device."""
        bias = self.qkv.bias is not None
        w = self.qkv.weight
        mha = nn.MultiheadAttention(
            self.d_model, self.n_head, dropout=self.dropout, bias=bias, batch_first=True, device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            mha.in_proj_weight.copy_(self.qkv.weight)
            mha.out_proj.weight.copy_(self.proj.weight)
            if bias:
                mha.in_proj_bias.copy_(self.qkv.bias)
                mha.out_proj.bias.copy_(self.proj.bias)
        return mha


def plot_attention(weights, labels, ax=None, title=None):
    """Draw one (T_q, T_k) weight matrix as a heatmap, queries down the side and keys along the top; returns ax.

    First used in chapter 02, section 2.
    """
    import matplotlib.pyplot as plt

    w = weights.detach().float().cpu()
    if w.ndim != 2 or w.shape[0] != len(labels) or w.shape[1] != len(labels):
        raise ValueError(
            f"plot_attention draws one square (T, T) matrix with T labels, got {tuple(w.shape)} "
            f"and {len(labels)} labels; pick one example and head, e.g. weights[0, h]."
        )
    ax = ax if ax is not None else plt.gca()
    ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)  # NumPy: matplotlib converting a tensor warns under NumPy 2
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title:
        ax.set_title(title, fontsize=9)
    return ax
