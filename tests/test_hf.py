"""helpers.hf: our GPT and transformers' GPT2LMHeadModel are the same function of the same weights."""

import pytest
import torch
import transformers

from helpers.hf import CourseLM, from_hf, hf_config, max_logit_diff, to_hf
from helpers.model import GPT, GPTConfig

CONFIG = dict(vocab_size=211, block_size=40, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def ours():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CONFIG)).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm affine, so that a wrongly mapped one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def idx(B=3, T=17):
    return torch.randint(0, CONFIG["vocab_size"], (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_ours_to_hf_logits_agree(ours, attn):
    hf = to_hf(ours, attn_implementation=attn)
    assert isinstance(hf, transformers.GPT2LMHeadModel)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    assert max_logit_diff(ours, hf, idx()) <= 1e-5


def test_hf_to_ours_logits_agree():
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(hf_config(GPTConfig(**CONFIG))).eval()  # HF's own random init
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model = from_hf(hf)
    assert model.config == GPTConfig(**CONFIG)
    assert max_logit_diff(model, hf, idx()) <= 1e-5


def test_wrong_mapping_would_show(ours):
    hf = to_hf(ours)
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_fc.weight.copy_(ours.transformer.h[0].mlp.c_fc.weight.reshape(32, 128))  # untransposed
    assert max_logit_diff(ours, hf, idx()) > 1e-3


def test_saved_hf_model_generates_our_greedy_tokens(ours, tmp_path):
    to_hf(ours).save_pretrained(tmp_path)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    prompt = idx(2, 6)
    theirs = loaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(theirs, ours.generate(prompt, 20, temperature=0))


def test_unrepresentable_configs_are_refused():
    with pytest.raises(ValueError, match="bias"):
        to_hf(GPT(GPTConfig(**CONFIG, bias=False)))
    with pytest.raises(ValueError, match="causal"):
        to_hf(GPT(GPTConfig(**CONFIG, causal=False)))
    exact_gelu = hf_config(GPTConfig(**CONFIG))
    exact_gelu.activation_function = "gelu"
    with pytest.raises(ValueError, match="activation_function"):
        from_hf(transformers.GPT2LMHeadModel(exact_gelu))


def test_course_lm_gives_a_transformers_model_our_batches_and_our_loss(ours):
    from helpers.recipes.translation import TranslationExample, collate

    g = torch.Generator().manual_seed(3)
    examples = [TranslationExample(torch.randint(3, 200, (n,), generator=g).tolist(), start) for n, start in ((12, 5), (7, 3))]
    batch = collate(examples, pad_id=0)  # right-padded, targets masked before the target and at padding
    wrapped = CourseLM(to_hf(ours).eval(), pad_id=0)
    ours_logits, ours_loss = ours(**batch)
    theirs_logits, theirs_loss = wrapped(**batch)
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(theirs_logits[keep], ours_logits[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs_loss, ours_loss, atol=1e-5, rtol=1e-5)
    assert wrapped(batch["idx"])[1] is None
    wrapped.eval()  # its own cross-entropy (without what a wrapper adds to the library's loss in training)
    torch.testing.assert_close(wrapped(**batch)[1], ours_loss, atol=1e-5, rtol=1e-5)
