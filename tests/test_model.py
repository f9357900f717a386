"""helpers.model and helpers.decode: shapes, loss at init, causality, padding, KV cache, sampling filters, saving."""

import dataclasses
import json
import math

import pytest
import torch

from helpers.decode import KVCache, sample_next, top_k_filter, top_p_filter
from helpers.model import GPT, GPTConfig

V, BLOCK = 97, 48


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(**{**dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32), **overrides})
    return GPT(config).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def model64():
    """float64, so that paths that differ only in rounding (cache vs no cache, padding) agree exactly on argmax."""
    return tiny().double()


def tokens(B, T, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_loss(model):
    idx = tokens(3, 11)
    logits, loss = model(idx)
    assert logits.shape == (3, 11, V)
    assert loss is None
    assert model.hidden_states(idx).shape == (3, 11, 32)
    _, loss = model(idx, targets=tokens(3, 11, seed=2))
    assert loss.ndim == 0


def test_untrained_loss_is_log_vocab():
    # Small init makes every logit near 0, so the prediction is near uniform: loss ~ ln V.
    m = tiny(vocab_size=1000)
    idx = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(1))
    _, loss = m(idx, targets)
    assert abs(loss.item() - math.log(1000)) < 0.1


def test_loss_ignores_minus_100(model):
    idx, targets = tokens(2, 10), tokens(2, 10, seed=3)
    masked = targets.clone()
    masked[:, 6:] = -100
    _, loss_masked = model(idx, masked)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, :6].reshape(-1, V), targets[:, :6].reshape(-1))
    assert torch.allclose(loss_masked, expected, atol=1e-6)


def test_causal_future_does_not_leak(model):
    idx = tokens(2, 16)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3


def test_non_causal_attends_both_ways():
    m = tiny(causal=False)
    idx = tokens(1, 12)
    changed = idx.clone()
    changed[0, -1] = (changed[0, -1] + 1) % V
    a, _ = m(idx)
    b, _ = m(changed)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # the first position sees the last token


def test_right_padding_invariance(model):
    short, long = tokens(1, 7, seed=4), tokens(1, 12, seed=5)
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0, :7], batch[1] = short[0], long[0]
    mask = torch.zeros(2, 12, dtype=torch.long)
    mask[0, :7], mask[1] = 1, 1
    logits, _ = model(batch, attention_mask=mask)
    assert torch.allclose(logits[0, :7], model(short)[0][0], atol=1e-5)
    assert torch.allclose(logits[1], model(long)[0][0], atol=1e-5)
    assert torch.isfinite(logits).all()


def test_left_padding_invariance(model):
    short = tokens(1, 7, seed=4)
    batch = torch.cat([torch.zeros(1, 5, dtype=torch.long), short], dim=1)
    mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 7)], dim=1).long()
    expected = model(short)[0][0]
    by_mask, _ = model(batch, attention_mask=mask)  # positions counted over real tokens
    assert torch.allclose(by_mask[0, 5:], expected, atol=1e-5)
    explicit = torch.tensor([[0] * 5 + list(range(7))])
    by_ids, _ = model(batch, attention_mask=mask, position_ids=explicit)
    assert torch.allclose(by_ids[0, 5:], expected, atol=1e-5)
    no_mask, _ = model(batch)  # without the mask the padding is read as text
    assert (no_mask[0, 5:] - expected).abs().max() > 1e-3


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_k=20), dict(temperature=0.8, top_p=0.9)])
def test_kv_cache_matches_recompute(model64, sampling):
    prompt = tokens(3, 5)
    runs = [
        model64.generate(prompt, 30, use_cache=use_cache, generator=torch.Generator().manual_seed(7), **sampling)
        for use_cache in (True, False)
    ]
    assert runs[0].shape == (3, 35)
    assert torch.equal(runs[0][:, :5], prompt)
    assert torch.equal(runs[0], runs[1])


def test_cached_logits_match_full_forward(model):
    idx = tokens(2, 20)
    cache = KVCache(model.config, batch_size=2)
    first, _ = model(idx[:, :12], cache=cache)
    rest = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(12, 20)]
    full, _ = model(idx)
    assert cache.length == 20
    assert torch.allclose(torch.cat([first, *rest], dim=1), full, atol=1e-5)


def test_cache_reorder_selects_rows(model):
    idx = tokens(3, 9)
    cache = KVCache(model.config, batch_size=3)
    model(idx[:, :8], cache=cache)
    cache.reorder(torch.tensor([2, 2, 0]))
    step, _ = model(idx[[2, 2, 0], 8:], cache=cache)
    full, _ = model(idx[[2, 2, 0]])
    assert torch.allclose(step[:, 0], full[:, 8], atol=1e-5)


def test_left_padded_batch_generates_like_single_prompts(model64):
    a, b = tokens(1, 4, seed=8), tokens(1, 9, seed=9)
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), a], dim=1), b])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :5] = 0
    for use_cache in (True, False):
        out = model64.generate(batch, 12, temperature=0, attention_mask=mask, use_cache=use_cache)
        assert torch.equal(out[0, 5:], model64.generate(a, 12, temperature=0)[0])
        assert torch.equal(out[1], model64.generate(b, 12, temperature=0)[0])


def test_eos_stops_rows_and_pads(model64):
    prompt = tokens(2, 3)
    free = model64.generate(prompt, 20, temperature=0)
    eos = int(free[0, 6])  # the 4th generated token of row 0 becomes the end-of-sequence token
    out = model64.generate(prompt, 20, temperature=0, eos_id=eos)
    assert eos in out[0, 3:].tolist()
    for row in range(2):
        new = out[row, 3:].tolist()
        if eos in new:
            first = new.index(eos)
            assert all(t == eos for t in new[first:])
            assert new[:first] == free[row, 3 : 3 + first].tolist()
    assert out.shape[1] <= free.shape[1]


def test_too_long_sequence_names_both_lengths(model):
    with pytest.raises(ValueError, match=rf"{BLOCK + 1}.*block_size={BLOCK}"):
        model(tokens(1, BLOCK + 1))
    with pytest.raises(ValueError, match=rf"{BLOCK + 10}.*block_size={BLOCK}"):
        model.generate(tokens(1, 20), BLOCK - 10, use_cache=True)
    out = model.generate(tokens(1, 20), BLOCK - 10, temperature=0, use_cache=False)  # crops to the last BLOCK tokens
    assert out.shape == (1, BLOCK + 10)


def test_bad_inputs_have_clear_errors(model):
    with pytest.raises(ValueError, match="idx\\[None\\]"):
        model(tokens(1, 5)[0])
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[V]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(tokens(2, 5), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def _explain(model, *args, **kwargs):
    torch._dynamo.reset()
    try:
        return torch._dynamo.explain(model)(*args, **kwargs)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("padded", [False, True])
def test_a_training_forward_compiles_to_one_graph(padded):
    model = tiny(dropout=0.1).train()
    mask = torch.ones(2, 12, dtype=torch.long)
    if padded:
        mask[0, :4] = 0
    out = _explain(model, tokens(2, 12), tokens(2, 12, seed=2), attention_mask=mask if padded else None)
    assert (out.graph_count, out.graph_break_count) == (1, 0), out.break_reasons


def test_a_cached_decoding_step_compiles_to_one_graph(model):
    cache = KVCache(model.config, 2, 20)
    with torch.no_grad():
        model(tokens(2, 8), cache=cache)
        out = _explain(model, tokens(2, 1, seed=3), cache=cache)
    assert (out.graph_count, out.graph_break_count) == (1, 0), out.break_reasons
    assert cache.length == 9  # the traced step updated the cache like an eager one


def test_token_values_are_checked_where_free_and_once_per_generate(model, monkeypatch):
    import helpers.model as model_module

    bad = torch.tensor([[1, V]])
    monkeypatch.setattr(model_module, "_readable", lambda t: False)  # as for a GPU tensor: forward reads no values
    with pytest.raises(IndexError):  # our check is skipped, so the embedding lookup is what fails
        model(bad)
    with pytest.raises(ValueError, match="idx\\[None\\]"):
        model(tokens(1, 5)[0])
    with pytest.raises(ValueError, match="vocab_size"):
        model.generate(bad, 2)  # generate checks its prompt on any device


def test_bad_targets_have_clear_errors(model):
    idx = tokens(2, 5)
    for bad in (V, -1, -101):
        targets = tokens(2, 5, seed=2)
        targets[1, 3] = bad
        targets[0, :2] = -100  # ignored positions are fine and do not hide the bad one
        with pytest.raises(ValueError, match=rf"targets must be token ids in \[0, {V}\).* got {bad};"):
            model(idx, targets)
    with pytest.raises(ValueError, match="nothing to learn from"):
        model(idx, torch.full((2, 5), -100))
    with pytest.raises(TypeError, match="integer token ids"):
        model(idx, tokens(2, 5).float())
    targets = tokens(2, 5, seed=2)
    assert torch.equal(model(idx, targets.int())[1], model(idx, targets)[1])


def test_prefix_embeds(model):
    B, P, T = 2, 3, 6
    prefix = torch.randn(B, P, 32, generator=torch.Generator().manual_seed(0))
    idx = tokens(B, T)
    logits, loss = model(idx, targets=idx, prefix_embeds=prefix)
    assert logits.shape == (B, T, V) and loss.ndim == 0
    assert model.hidden_states(idx, prefix_embeds=prefix).shape == (B, T, 32)
    assert (logits - model(idx)[0]).abs().max() > 1e-4  # the tokens see the prefix
    cached = model.generate(idx, 5, temperature=0, prefix_embeds=prefix)
    assert cached.shape == (B, T + 5)
    assert torch.equal(cached, model.generate(idx, 5, temperature=0, prefix_embeds=prefix, use_cache=False))
    only_prefix = model.generate(idx[:, :0], 4, temperature=0, prefix_embeds=prefix)  # captioning starts from nothing
    assert only_prefix.shape == (B, 4)
    with pytest.raises(ValueError, match="prefix_embeds"):
        model(idx, prefix_embeds=torch.randn(B, P, 16))


def test_tied_weights_and_init(model):
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(2 * model.config.n_layer)) < 0.003
    assert abs(model.transformer.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.003


def test_param_count_formula(model):
    c = model.config
    C = c.n_embd
    per_block = 12 * C * C + 13 * C
    total = c.vocab_size * C + c.block_size * C + c.n_layer * per_block + 2 * C
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - c.block_size * C
    assert model.flops_per_token(seq_len=10) == 6 * model.num_params() + 12 * c.n_layer * C * 10


def test_config_roundtrips_through_json():
    config = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=4, causal=False)
    assert GPTConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config


def test_safetensors_roundtrip_keeps_tie(model, tmp_path):
    from safetensors.torch import load_model, save_model

    save_model(model, str(tmp_path / "model.safetensors"))
    fresh = GPT(dataclasses.replace(model.config)).eval()
    load_model(fresh, str(tmp_path / "model.safetensors"))
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    idx = tokens(1, 8)
    assert torch.equal(fresh(idx)[0], model(idx)[0])


def test_top_k_filter_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0]])
    kept = top_k_filter(logits, 2)
    assert torch.isfinite(kept).sum() == 2
    assert set(torch.nonzero(torch.isfinite(kept[0])).flatten().tolist()) == {1, 4}
    assert torch.equal(top_k_filter(logits, 10), logits)
    with pytest.raises(ValueError):
        top_k_filter(logits, 0)


def test_top_p_filter_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.7))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert torch.isfinite(top_p_filter(probs.log(), 1e-6)).sum() == 1  # at least the top token survives
    assert torch.isfinite(top_p_filter(probs.log(), 1.0)).all()
    shuffled = probs[:, [2, 0, 3, 1]].log()  # the filter follows probabilities, not positions
    assert torch.isfinite(top_p_filter(shuffled, 0.7))[0].tolist() == [False, True, False, True]


def test_sample_next_greedy_and_seeded():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))
    draws = [sample_next(logits, 1.0, top_k=5, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    top5 = logits.topk(5).indices
    assert all(draws[0][i] in top5[i] for i in range(4))
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf row"])
def test_sample_next_refuses_non_finite_logits(bad):
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    if bad == "-inf row":
        logits[1] = float("-inf")
    else:
        logits[1, 4] = float(bad)
    for temperature in (0, 1.0):  # greedy would pick the NaN or inf, sampling would fail inside multinomial
        with pytest.raises(ValueError, match="non-finite logits"):
            sample_next(logits, temperature)


def test_sample_next_accepts_masked_logits_and_refuses_non_finite_temperature():
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    logits[:, :6] = float("-inf")  # masked tokens, as top-k or a grammar would leave them
    assert torch.equal(sample_next(logits, 0), logits.argmax(-1))
    assert (sample_next(logits, 1.0, generator=torch.Generator().manual_seed(0)) >= 6).all()
    for temperature in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            sample_next(logits, temperature)


def test_generate_with_a_nan_weight_says_so():
    broken = tiny()
    with torch.no_grad():
        broken.transformer.h[0].attn.c_proj.weight[3, 5] = float("nan")  # as a corrupted checkpoint would
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match="diverged training run"):
            broken.generate(tokens(2, 5), 4, temperature=temperature)
