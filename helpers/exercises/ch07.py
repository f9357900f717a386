"""The checks of chapter 07's exercises (parameter-efficient fine-tuning); solutions in
``notebooks/solutions/07_peft.ipynb``."""

from __future__ import annotations

import torch
from torch import nn

from helpers.adapters import LoRALinear, PrefixTuning
from helpers.exercises import check, choice, each
from helpers.model import GPT, GPTConfig

SHAPES = ((256, 768, 8), (256, 256, 1), (1024, 256, 32), (7, 3, 2))


def lora_count(lora_parameters) -> str:
    """Exercise 1 (easy): ``lora_parameters(in_features, out_features, r)``, the number of parameters LoRA trains
    in one wrapped Linear layer, counted on :class:`helpers.adapters.LoRALinear` (chapter 07, section 2)."""

    def counted(n_in, n_out, r):
        with torch.random.fork_rng(devices=[]):  # the layer's random init leaves the learner's random state alone
            layer = LoRALinear(nn.Linear(n_in, n_out), r=r)
        return sum(p.numel() for p in layer.parameters() if p.requires_grad)

    return check(
        "Exercise 1 (what LoRA trains in one layer)",
        lambda: each([lora_parameters(*shape) for shape in SHAPES]),
        lambda got: [int(n) for n in got] == [counted(*shape) for shape in SHAPES],
        "LoRA trains two thin matrices, A and B; write down the shape of each from in_features, out_features and r.",
    )


def both_zero(answer) -> str:
    """Exercise 2 (easy, predict then run): with ``A`` and ``B`` both zero, the gradient of each is a product with
    the other, so both are zero and the layer never changes; LoRA starts only ``B`` at zero (chapter 07, section 2)."""
    return choice(
        "Exercise 2 (both matrices at zero)",
        answer,
        "b",
        "write the gradient of the loss with respect to B and with respect to A for y = W x + s B A x; what is each "
        "when the other matrix is zero?",
    )


def merged_weight(merge) -> str:
    """Exercise 3 (medium): ``merge(weight, lora_A, lora_B, alpha, r)``, the weight of the plain Linear layer that
    computes what the LoRA layer computes, as :meth:`helpers.adapters.LoRALinear.merge` makes it (chapter 07,
    section 2)."""
    cases = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(7)
        for n_in, n_out, r in SHAPES:
            layer = LoRALinear(nn.Linear(n_in, n_out), r=r, alpha=2.5 * r + 1)
            layer.lora_B.normal_()
            cases.append(layer)

    def attempt():
        with torch.no_grad():
            return each([merge(c.base.weight.clone(), c.lora_A.clone(), c.lora_B.clone(), c.alpha, c.r) for c in cases])

    return check(
        "Exercise 3 (merging LoRA into the weight)",
        attempt,
        lambda got: all(
            torch.allclose(torch.as_tensor(w), (c.base.weight + c.delta_weight()).detach(), atol=1e-5) for w, c in zip(got, cases)
        ),
        "the merged layer must give W x + (alpha / r) B A x for every x; what single matrix does that?",
    )


def prefix_layout(layer_keys_values) -> str:
    """Exercise 4 (hard): ``layer_keys_values(prefix, config, layer)``, the keys and values that prefix tuning's
    parameter ``prefix`` (P, n_layer * 2 * n_embd) gives one layer, each (n_head, P, head_dim), as
    :meth:`helpers.adapters.PrefixTuning.cache` lays them out (chapter 07, section 4)."""
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a fixed model, so that the check is the same on every run
        tuned = PrefixTuning(GPT(config), n_virtual=4, seed=3)
    cache = tuned.cache(1, 4)
    expected = [(cache.keys[i][0, :, :4], cache.values[i][0, :, :4]) for i in range(config.n_layer)]

    def attempt():
        with torch.no_grad():
            return each([layer_keys_values(tuned.prefix.detach().clone(), config, i) for i in range(config.n_layer)])

    return check(
        "Exercise 4 (prefix tuning's keys and values)",
        attempt,
        lambda got: all(
            torch.equal(torch.as_tensor(k), ek) and torch.equal(torch.as_tensor(v), ev) for (k, v), (ek, ev) in zip(got, expected)
        ),
        "read the docstring of PrefixTuning for the order of the parts in each row of the prefix (layer, keys or "
        "values, head), then view the row that way and move the position axis where the cache wants it.",
    )
