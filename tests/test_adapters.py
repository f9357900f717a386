"""helpers.adapters: LoRA, bottleneck adapters, prompt and prefix tuning; the same functions as peft's where the
definitions match (logits, gradients, a few training steps), and adapter files that round-trip."""

import copy

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

from helpers.adapters import (
    LoRALinear,
    PrefixTuning,
    PromptTuning,
    adalora_ranks,
    adalora_to_gpt,
    add_adalora,
    add_bottleneck_adapters,
    add_lora,
    count_parameters,
    load_adapter,
    lora_disabled,
    lora_layers,
    merge_lora,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from helpers.hf import to_hf
from helpers.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = dict(vocab_size=101, block_size=32, n_layer=2, n_head=4, n_embd=32)
P = 5  # virtual tokens


def base_model(seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**CONFIG)).eval()


def tokens(B=3, T=10, seed=1):
    return torch.randint(0, CONFIG["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def randomise_lora(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ---- LoRA ---------------------------------------------------------------------------------------------------


def test_lora_disabled_gives_the_base_model_back_for_the_block():
    base = base_model()
    tuned = copy.deepcopy(base)
    add_lora(tuned)
    randomise_lora(tuned)
    x = tokens()
    with torch.no_grad():
        with_lora = tuned(x)[0]
        with lora_disabled(tuned):
            assert torch.equal(tuned(x)[0], base(x)[0])
        assert torch.equal(tuned(x)[0], with_lora) and not torch.equal(with_lora, base(x)[0])
    merge_lora(tuned)
    with pytest.raises(ValueError, match="unmerge"):
        with lora_disabled(tuned):
            pass
    with pytest.raises(ValueError, match="no LoRA"):
        with lora_disabled(base):
            pass


def test_lora_starts_as_the_base_model_and_trains_only_its_matrices():
    base = base_model()
    model = copy.deepcopy(base)
    names = add_lora(model, r=4, alpha=8)
    assert len(names) == 4 * CONFIG["n_layer"]  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    idx = tokens()
    assert torch.equal(model(idx)[0], base(idx)[0])  # B = 0: exactly the base model's outputs
    assert all(n.endswith(("lora_A", "lora_B")) for n in trainable_names(model))
    _, loss = model.train()(idx, tokens(seed=2))
    loss.backward()
    moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == {n for n in trainable_names(model) if n.endswith("lora_B")}  # A's gradient goes through B = 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_lora_names_every_linear_it_wraps():
    model = base_model()
    names = add_lora(model)
    assert sorted(names) == sorted(
        f"transformer.h.{i}.{part}"
        for i in range(CONFIG["n_layer"])
        for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    only_first = base_model()
    assert add_lora(only_first, targets=r"transformer\.h\.0\.attn\.c_attn") == ["transformer.h.0.attn.c_attn"]
    with pytest.raises(ValueError, match="named \\['c_attn', 'c_fc', 'c_proj', 'lm_head'\\]"):
        add_lora(base_model(), targets=("q_proj",))
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model)
    with pytest.raises(ValueError, match="r must be"):
        LoRALinear(torch.nn.Linear(4, 4), r=0)


def test_merge_and_unmerge_round_trip():
    model = base_model()
    add_lora(model, r=4, alpha=8)
    randomise_lora(model)
    idx = tokens()
    before = model(idx)[0]
    weights = {n: layer.base.weight.clone() for n, layer in lora_layers(model).items()}
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(model(idx)[0], before, atol=1e-6, rtol=0)
    unmerge_lora(model)
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.base.weight, weights[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(idx)[0], before, atol=1e-6, rtol=0)
    remove_lora(model, merge=True)
    assert not lora_layers(model) and "transformer.h.0.attn.c_attn.weight" in dict(model.named_parameters())
    torch.testing.assert_close(model(idx)[0], before, atol=1e-6, rtol=0)


def test_lora_works_on_a_transformers_model_by_name():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    llama = LlamaForCausalLM(cfg).eval()
    idx = tokens(2, 6) % 64
    before = llama(input_ids=idx).logits
    assert len(add_lora(llama, targets=("q_proj", "v_proj"), r=2)) == 4
    torch.testing.assert_close(llama(input_ids=idx).logits, before, atol=0, rtol=0)


def _peft_lora(base, ours, r, alpha):
    """peft's LoRA on the exported ``base``, holding the same A and B as ``ours``."""
    hf = to_hf(base)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.0, fan_in_fan_out=True)
    theirs = get_peft_model(hf, config)
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            params[f"base_model.model.{name}.lora_A.default.weight"].copy_(layer.lora_A)
            params[f"base_model.model.{name}.lora_B.default.weight"].copy_(layer.lora_B)
    return theirs


def test_lora_equals_peft_in_logits_gradients_training_and_counts():
    base = base_model()
    ours = copy.deepcopy(base)
    add_lora(ours, r=4, alpha=8)
    randomise_lora(ours)
    theirs = _peft_lora(base, ours, r=4, alpha=8)
    assert count_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())
    idx, targets = tokens(), tokens(seed=2)
    ours_logits, ours_loss = ours(idx, targets)
    out = theirs(input_ids=idx)
    torch.testing.assert_close(ours_logits, out.logits, atol=1e-5, rtol=1e-5)
    theirs_loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), targets.flatten())
    ours_loss.backward()
    theirs_loss.backward()
    their_params = dict(theirs.named_parameters())
    for name, layer in lora_layers(ours).items():
        for m in ("A", "B"):
            theirs_grad = their_params[f"base_model.model.{name}.lora_{m}.default.weight"].grad
            torch.testing.assert_close(getattr(layer, f"lora_{m}").grad, theirs_grad, atol=1e-5, rtol=1e-4)

    # A few AdamW steps on the same batch give the same losses (one batch, so the loss must fall).
    def train(model, step_loss):
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-2)
        losses = []
        for _ in range(4):
            opt.zero_grad()
            loss = step_loss(tokens(seed=10), tokens(seed=20))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    ours_losses = train(ours, lambda x, y: ours(x, y)[1])
    theirs_losses = train(
        theirs, lambda x, y: torch.nn.functional.cross_entropy(theirs(input_ids=x).logits.flatten(0, 1), y.flatten())
    )
    assert ours_losses == pytest.approx(theirs_losses, abs=1e-5)
    assert ours_losses[-1] < ours_losses[0]


# ---- bottleneck adapters ------------------------------------------------------------------------------------


def test_bottleneck_adapters_start_as_identity_and_train_alone():
    base = base_model()
    model = copy.deepcopy(base)
    names = add_bottleneck_adapters(model, bottleneck=8)
    assert names == [f"transformer.h.{i}.{p}" for i in range(CONFIG["n_layer"]) for p in ("attn", "mlp")]
    idx = tokens()
    assert torch.equal(model(idx)[0], base(idx)[0])
    assert all(".adapter." in n for n in trainable_names(model))
    trainable, total = count_parameters(model)
    assert trainable == 2 * CONFIG["n_layer"] * (2 * 32 * 8 + 8 + 32)
    _, loss = model(idx, tokens(seed=2))
    loss.backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="already"):
        add_bottleneck_adapters(model)


# ---- prompt and prefix tuning -------------------------------------------------------------------------------


def _peft_twin(wrapper, config_class, values):
    """Our ``wrapper`` of a fresh base model and peft's ``config_class`` on its export, holding the same ``values``."""
    base = base_model()
    ours = wrapper(copy.deepcopy(base), n_virtual=P)
    theirs = get_peft_model(to_hf(base), config_class(task_type="CAUSAL_LM", num_virtual_tokens=P))
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(values(ours))
    return ours, theirs


def test_prompt_tuning_equals_peft():
    ours, theirs = _peft_twin(PromptTuning, PromptTuningConfig, lambda m: m.prompt)
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == P * 32
    idx, mask = tokens(), torch.ones(3, 10, dtype=torch.long)
    mask[0, 7:] = 0  # right padding
    ours_logits, _ = ours(idx, attention_mask=mask)
    theirs_logits = theirs(input_ids=idx, attention_mask=mask).logits[:, P:]
    keep = mask.bool()
    torch.testing.assert_close(ours_logits[keep], theirs_logits[keep], atol=1e-5, rtol=1e-5)
    _, loss = ours(idx, tokens(seed=2))
    loss.backward()
    assert trainable_names(ours) == {"prompt"} and ours.prompt.grad.abs().sum() > 0
    out = ours.generate(idx[:1, :4], 3, temperature=0)
    assert out.shape == (1, 7)


def test_prefix_tuning_equals_peft():
    ours, theirs = _peft_twin(PrefixTuning, PrefixTuningConfig, lambda m: m.prefix)
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == P * 2 * 2 * 32
    idx, targets = tokens(), tokens(seed=2)
    ours_logits, ours_loss = ours(idx, targets)
    theirs_logits = theirs(input_ids=idx).logits
    torch.testing.assert_close(ours_logits, theirs_logits, atol=1e-5, rtol=1e-5)
    theirs_loss = torch.nn.functional.cross_entropy(theirs_logits.flatten(0, 1), targets.flatten())
    ours_loss.backward()
    theirs_loss.backward()
    torch.testing.assert_close(ours.prefix.grad, theirs.prompt_encoder["default"].embedding.weight.grad, atol=1e-5, rtol=1e-4)
    assert trainable_names(ours) == {"prefix"}
    with pytest.raises(ValueError, match="block_size"):
        ours(tokens(1, CONFIG["block_size"]))


def test_prefix_tuning_generates_after_its_prefix_as_peft_does():
    ours, theirs = _peft_twin(PrefixTuning, PrefixTuningConfig, lambda m: m.prefix)
    assert ours.config.block_size == CONFIG["block_size"] - P  # the positions left for tokens
    idx = tokens(2, 6)
    out = ours.generate(idx, 5, temperature=0)
    # peft's forward pass over the generated text picks the same tokens (teacher forcing, every step at once)
    theirs_next = theirs(input_ids=out[:, :-1]).logits[:, idx.size(1) - 1 :].argmax(-1)
    assert torch.equal(theirs_next, out[:, idx.size(1) :])
    seq = idx  # without the cache: each new token is the argmax of a forward pass over the sequence so far
    for _ in range(5):
        seq = torch.cat([seq, ours(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(seq, out)
    padded = torch.cat([torch.zeros(2, 2, dtype=torch.long), idx], dim=1)  # row 0 left-padded by 2, row 1 a longer prompt
    padded[1, :2] = tokens(1, 2, seed=5)
    mask = torch.ones_like(padded)
    mask[0, :2] = 0
    assert torch.equal(ours.generate(padded, 5, temperature=0, attention_mask=mask)[0, 2:], out[0])
    with pytest.raises(ValueError, match="block_size"):
        ours.generate(tokens(1, CONFIG["block_size"] - P - 2), 5)
    with pytest.raises(ValueError, match="longer cache"):  # GPT.generate checks a cache it is given
        ours.model.generate(idx, 5, cache=ours.cache(2, P + idx.size(1) + 4))
    with pytest.raises(ValueError, match="use_cache=False"):
        ours.model.generate(idx, 5, use_cache=False, cache=ours.cache(2, P + idx.size(1) + 5))


# ---- AdaLoRA, through peft ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Adapter 'default'")  # peft's note on a matrix pruned to rank 0 when it saves
def test_adalora_trains_with_our_trainer_reallocates_ranks_and_merges_back_into_our_gpt(tmp_path):
    from helpers.train import TrainConfig, Trainer

    base = base_model()
    lm, after_step = add_adalora(base, total_step=12, init_r=4, target_r=2, tinit=2, tfinal=3, alpha=8)
    n_matrices = 4 * CONFIG["n_layer"]
    kinds = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert adalora_ranks(lm) == {f"transformer.h.{i}.{m}": 4 for i in range(2) for m in kinds}
    trainable, _ = count_parameters(lm)
    assert trainable == lm.hf_model.get_nb_trainable_parameters()[0]
    batches = [{"idx": tokens(4, 12, seed=s), "targets": tokens(4, 12, seed=s + 100)} for s in range(3)]
    cfg = TrainConfig(max_steps=12, lr=1e-2, warmup_steps=0, eval_every=12, weight_decay=0.0)
    trainer = Trainer(lm, cfg, lambda i: batches[i % 3], batches[:1], progress=False, after_step=after_step)
    trainer.fit()
    ranks = adalora_ranks(lm)
    assert sum(ranks.values()) == 2 * n_matrices and len(set(ranks.values())) > 1  # the budget, unevenly spread
    lm.hf_model.save_pretrained(tmp_path)  # peft renames its record of the ranks when it saves
    assert adalora_ranks(lm) == ranks
    with torch.no_grad():
        expected = lm(batches[0]["idx"])[0]
    merged = adalora_to_gpt(lm).eval()
    torch.testing.assert_close(merged(batches[0]["idx"])[0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="target_r <= init_r"):
        add_adalora(base, total_step=10, init_r=2, target_r=4)


# ---- saving ---------------------------------------------------------------------------------------------------


def test_adapter_files_hold_only_the_adapter_and_round_trip(tmp_path):
    model = base_model()
    add_lora(model, r=4)
    randomise_lora(model)
    path = save_adapter(model, tmp_path / "lora.safetensors")
    assert path.stat().st_size < 20_000 and [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]
    fresh = base_model()
    add_lora(fresh, r=4)
    load_adapter(fresh, path)
    idx = tokens()
    assert torch.equal(fresh(idx)[0], model(idx)[0])
    other_rank = base_model()
    add_lora(other_rank, r=2)
    with pytest.raises(ValueError, match="shapes differ"):
        load_adapter(other_rank, path)
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter(PromptTuning(base_model(), n_virtual=P), path)
    with pytest.raises(FileNotFoundError, match="save_adapter"):
        load_adapter(fresh, tmp_path / "absent.safetensors")
