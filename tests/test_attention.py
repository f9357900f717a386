"""helpers.attention: masks, the hand-written attention against torch's SDPA and nn.MultiheadAttention."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.attention import MultiHeadAttention, causal_mask, padding_mask, plot_attention, scaled_dot_product_attention

# (atol, rtol) against torch: float32/float64 agree to rounding; bfloat16 keeps 8 significant bits (steps of
# 2**-7 near 1), so a few steps of difference are expected.
TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12), torch.bfloat16: (3e-2, 3e-2)}

# (q shape, T_k): heads and no heads, T_q != T_k, one batch dimension or two.
SHAPES = [((2, 3, 5, 8), 5), ((4, 7, 16), 7), ((1, 2, 6, 4), 9), ((2, 4, 33, 32), 33)]


def _qkv(shape, t_k, dtype, d_v=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    *batch, _, d = shape
    q = torch.randn(shape, generator=g, dtype=torch.float64)
    k = torch.randn(*batch, t_k, d, generator=g, dtype=torch.float64)
    v = torch.randn(*batch, t_k, d_v or d, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _mask(kind, t_q, t_k, dtype, seed=1):
    """(our mask, our is_causal, torch's attn_mask, torch's is_causal)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(t_q, t_k, generator=g) > 0.3
    keep[:, 0] = True  # every query keeps one key here; fully blocked rows have their own test
    if kind == "none":
        return None, False, None, False
    if kind == "causal":
        return None, True, None, True
    if kind == "bool":
        return keep, False, keep, False
    if kind == "float":
        additive = torch.zeros(t_q, t_k, dtype=dtype).masked_fill(~keep, float("-inf"))
        return additive, False, additive, False
    raise AssertionError(kind)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("kind", ["none", "causal", "bool", "float"])
@pytest.mark.parametrize("shape,t_k", SHAPES)
def test_equals_torch_sdpa(shape, t_k, kind, dtype):
    q, k, v = _qkv(shape, t_k, dtype)
    mask, is_causal, attn_mask, torch_causal = _mask(kind, shape[-2], t_k, dtype)
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=torch_causal)
    assert out.shape == ref.shape and out.dtype == dtype
    assert weights.shape == (*shape[:-1], t_k)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


def test_value_dim_may_differ_from_key_dim():
    q, k, _ = _qkv((2, 5, 8), 6, torch.float64)
    v = torch.randn(2, 6, 3, dtype=torch.float64)
    out, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-12, rtol=1e-12)


def test_rows_sum_to_one_and_blocked_keys_get_exactly_zero():
    q, k, v = _qkv((3, 2, 7, 8), 7, torch.float32)
    lengths = torch.tensor([7, 4, 1])
    attn = (torch.arange(7) < lengths[:, None]).long()
    keep = padding_mask(attn) & causal_mask(7)
    for mask, is_causal in [(keep, False), (padding_mask(attn), True)]:
        _, w = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
        blocked = ~keep.expand_as(w)
        assert (w[blocked] == 0).all()
        assert (w[~blocked] > 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 7), atol=1e-6, rtol=0)
    additive = torch.zeros(7, 7).masked_fill(~causal_mask(7), float("-inf"))
    _, w = scaled_dot_product_attention(q, k, v, mask=additive)
    assert (w[..., ~causal_mask(7)] == 0).all()


def test_fully_blocked_rows_give_zeros_not_nan_also_in_backward():
    q, k, v = (t.requires_grad_() for t in _qkv((2, 4, 8), 4, torch.float32))
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False
    out, w = scaled_dot_product_attention(q, k, v, mask=mask)
    assert (w[:, 1] == 0).all() and (out[:, 1] == 0).all()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(w[:, [0, 2, 3]].sum(-1), torch.ones(2, 3))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    # torch's SDPA defines the same: a query with nothing to attend to outputs zeros.
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    additive = torch.zeros(4, 4).masked_fill(~mask, float("-inf"))
    out_add, _ = scaled_dot_product_attention(q, k, v, mask=additive)
    torch.testing.assert_close(out_add, out)


def test_module_gives_zeros_to_queries_with_nothing_to_attend_on_both_paths():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])  # left padding: with causal, rows 0 and 1 of verse 0 see nothing
    for need_weights in (True, False):
        out, _ = mha(x, mask=padding_mask(left), is_causal=True, need_weights=need_weights)
        torch.testing.assert_close(out[0, :2], mha.proj.bias.expand(2, 16))  # zero attention, then the output bias
        assert torch.isfinite(out).all()


def test_causal_output_ignores_the_future():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 9, 16)
    out, w = mha(x, is_causal=True)
    assert w.shape == (2, 4, 9, 9)
    for t in range(9):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randn(2, 8 - t, 16)
        out_changed, _ = mha(changed, is_causal=True)
        assert torch.equal(out_changed[:, : t + 1], out[:, : t + 1])
        if t < 8:
            assert not torch.allclose(out_changed[:, t + 1 :], out[:, t + 1 :])
    # Without the mask every position sees the changed future.
    out_full, _ = mha(x)
    changed = x.clone()
    changed[:, -1] += 1
    assert not torch.allclose(mha(changed)[0][:, 0], out_full[:, 0])


def test_causal_mask_and_padding_mask():
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    assert m.tolist() == [[True, False, False, False], [True, True, False, False], [True, True, True, False], [True] * 4]
    attn = torch.tensor([[1, 1, 0], [1, 1, 1]])
    p = padding_mask(attn)
    assert p.shape == (2, 1, 1, 3) and p.dtype == torch.bool
    assert p[:, 0, 0].tolist() == [[True, True, False], [True, True, True]]
    assert torch.equal(padding_mask(attn.bool()), p) and torch.equal(padding_mask(attn.float()), p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_nn_multihead_attention(dtype, bias):
    torch.manual_seed(0)
    B, T, d_model, n_head = 3, 6, 24, 4
    ref = nn.MultiheadAttention(d_model, n_head, bias=bias, batch_first=True, dtype=dtype).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    assert ours.qkv.weight.dtype == dtype
    x = torch.randn(B, T, d_model, dtype=dtype)
    attn = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    atol, rtol = TOL[dtype]
    cases = [
        ({}, {}),
        # torch's masks say True = blocked: the opposite of ours.
        ({"mask": padding_mask(attn)}, {"key_padding_mask": attn == 0}),
        ({"is_causal": True}, {"attn_mask": ~causal_mask(T), "is_causal": True}),
        ({"mask": padding_mask(attn), "is_causal": True}, {"key_padding_mask": attn == 0, "attn_mask": ~causal_mask(T)}),
    ]
    for our_kw, torch_kw in cases:
        out, w = ours(x, **our_kw)
        ref_out, ref_w = ref(x, x, x, average_attn_weights=False, **torch_kw)
        torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
        torch.testing.assert_close(w, ref_w, atol=atol, rtol=rtol)
        fused, none = ours(x, need_weights=False, **our_kw)
        assert none is None
        torch.testing.assert_close(fused, out, atol=atol, rtol=rtol)
    back = ours.to_torch()
    for a, b in zip(back.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_bfloat16_module_matches_float32_loosely():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 10, 32)
    out32, _ = mha(x, is_causal=True)
    out16, w16 = mha.to(torch.bfloat16)(x.bfloat16(), is_causal=True)
    assert out16.dtype == w16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, atol=3e-2, rtol=3e-2)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(2, 8, 16)
    mha.eval()
    assert torch.equal(mha(x)[0], mha(x)[0])
    mha.train()
    _, w = mha(x)
    assert (w == 0).any()
    assert not torch.allclose(mha(x)[0], mha(x)[0])


def test_clear_errors():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"\(batch, time, d_model=8\)"):
        mha(torch.randn(2, 5, 6))
    q = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="same last dimension"):
        scaled_dot_product_attention(q, torch.randn(2, 5, 4), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="same length T_k"):
        scaled_dot_product_attention(q, q, torch.randn(2, 6, 8))
    with pytest.raises(TypeError, match="one dtype"):
        scaled_dot_product_attention(q, q.double(), q)
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="padding_mask"):  # a (B, T) mask against (B, T, T) scores
        scaled_dot_product_attention(q, q, q, mask=torch.ones(2, 5, dtype=torch.bool)[:, None, None])
    with pytest.raises(TypeError, match="boolean mask"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        padding_mask(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="batch, time"):
        padding_mask(torch.ones(3))
    with pytest.raises(ValueError, match="positive integer"):
        causal_mask(0)
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        MultiHeadAttention.from_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="self-attention only"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))


def test_plot_attention_draws_one_matrix_and_refuses_a_batch():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, w = scaled_dot_product_attention(*_qkv((1, 2, 3, 4), 3, torch.float32), is_causal=True)
    fig, ax = plt.subplots()
    plot_attention(w[0, 1], ["a", "b", "c"], ax=ax, title="head 1")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"] and ax.get_title() == "head 1"
    assert ax.images[0].get_array().shape == (3, 3)
    with pytest.raises(ValueError, match=r"weights\[0, h\]"):
        plot_attention(w, ["a", "b", "c"], ax=ax)
    plt.close(fig)
