"""helpers.memory: the parts of a training step's memory, each measured, each as theory says."""

import pytest
import torch

from helpers.adapters import add_lora, count_parameters
from helpers.memory import training_memory
from helpers.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32))


def batch(B, T=16):
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 97, (B, T), generator=g)
    return {"idx": idx, "targets": torch.randint(0, 97, (B, T), generator=g)}


def test_full_training_holds_a_gradient_and_two_adamw_averages_per_weight():
    m = model()
    mem = training_memory(m, batch(2))
    n_bytes = 4 * m.num_params(non_embedding=False)
    assert mem.parameters == n_bytes and mem.gradients == n_bytes and mem.optimizer == 2 * n_bytes
    assert mem.activations > 0 and mem.total == n_bytes * 4 + mem.activations
    assert all(p.grad is None for p in m.parameters())  # measured on a copy


def test_lora_holds_gradients_and_state_for_its_matrices_only_and_activations_grow_with_the_batch():
    m = model()
    add_lora(m, r=2)
    trainable, total = count_parameters(m)
    small, large = training_memory(m, batch(2)), training_memory(m, batch(8))
    assert small.parameters == 4 * total and small.gradients == 4 * trainable and small.optimizer == 8 * trainable
    assert 3.5 < large.activations / small.activations < 4.5  # four times the batch, about four times the activations
    with pytest.raises(TypeError, match="targets"):
        training_memory(m, {"idx": batch(2)["idx"]})
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        training_memory(m, batch(2))
