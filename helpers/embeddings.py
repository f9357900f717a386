"""Positions for a Transformer: the fixed sinusoidal encoding of "Attention Is All You Need" (chapter 01, section 5)."""

from __future__ import annotations

import math


def sinusoidal_positions(n_positions: int, dim: int, base: float = 10_000.0):
    """A ``(n_positions, dim)`` float tensor: ``PE[p, 2i] = sin(p / base**(2i/dim))``, ``PE[p, 2i+1] = cos(...)``.

    Each pair of columns turns at its own speed, from one turn every 2π positions to very slowly, so every
    position gets a distinct pattern and ``PE[p + k]`` is a fixed rotation of ``PE[p]`` for every ``p``.

    Taught in chapter 01, section 5.2.
    """
    import torch

    if not isinstance(n_positions, int) or not isinstance(dim, int) or n_positions < 0 or dim <= 0 or dim % 2:
        raise ValueError(f"sinusoidal_positions needs n_positions >= 0 and an even dim > 0, got ({n_positions!r}, {dim!r}).")
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))
    pe = torch.zeros(n_positions, dim)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe
