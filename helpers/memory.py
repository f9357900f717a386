"""What one training step holds in memory, measured part by part on any device (chapter 07; chapter 13 builds on it).

A training step keeps four kinds of tensors alive at its peak: the **parameters**, their **gradients** (trainable
ones only), the **optimizer state** (AdamW: two running averages per trainable parameter) and the **activations**
that the forward pass saves for the backward pass. :func:`training_memory` measures each on a copy of the model:
the activations through ``torch.autograd.graph.saved_tensors_hooks`` (every tensor autograd keeps, counted once per
storage, the model's own weights left out as they are counted already), the optimizer state from a real AdamW
step. The numbers are the same on a CPU and a GPU, and unlike a process's peak memory they do not depend on what
ran before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

MB = 2**20


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes held by one training step, by kind (see the module's description). First used in chapter 07."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    def __str__(self) -> str:
        kinds = ("parameters", "gradients", "optimizer", "activations")
        parts = ", ".join(f"{name} {getattr(self, name) / MB:.1f}" for name in kinds)
        return f"{self.total / MB:.1f} MB ({parts})"


def _storages(tensors) -> dict[int, int]:
    """Bytes per distinct storage (views of one tensor share it)."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def training_memory(model: torch.nn.Module, batch: dict) -> TrainingMemory:
    """Measure what one AdamW training step of ``model`` on ``batch`` (the keyword arguments of its forward, targets
    included) holds, on a deep copy: ``model`` itself is left untouched. The model must return ``(logits, loss)``.

    Chapter 07 compares fine-tuning methods with it.
    """
    twin = copy.deepcopy(model).train()
    own = _storages([*twin.parameters(), *twin.buffers()])
    trainable = [p for p in twin.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("The model has no trainable parameters, so there is no training step to measure.")
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = twin(**batch)
    loss = out[1] if isinstance(out, (tuple, list)) else getattr(out, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise TypeError("training_memory needs a batch with targets, so that the model returns a loss.")
    loss.backward()
    gradients = sum(_storages([p.grad for p in trainable if p.grad is not None]).values())
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    optimizer.step()
    state = [t for s in optimizer.state.values() for name, t in s.items() if name != "step"]  # a counter, not state
    return TrainingMemory(
        parameters=sum(own.values()),
        gradients=gradients,
        optimizer=sum(_storages(state).values()),
        activations=sum(saved.values()),
    )
