"""Sinusoidal positions: the formula, and the property that makes them useful (similarity depends on offset only)."""

import math

import pytest
import torch

from helpers.embeddings import sinusoidal_positions


def test_sinusoidal_positions_formula():
    pe = sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16) and pe.dtype == torch.float32
    assert torch.equal(pe[0, 0::2], torch.zeros(8)) and torch.equal(pe[0, 1::2], torch.ones(8))
    p, i, d = 7, 3, 16
    assert pe[p, 2 * i].item() == pytest.approx(math.sin(p / 10_000 ** (2 * i / d)), abs=1e-6)
    assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10_000 ** (2 * i / d)), abs=1e-6)
    assert torch.allclose(pe.norm(dim=1), torch.full((50,), math.sqrt(8)))


def test_similarity_depends_only_on_offset():
    pe = sinusoidal_positions(64, 32)
    for k in (1, 5, 20):
        dots = (pe[:-k] * pe[k:]).sum(dim=1)
        assert torch.allclose(dots, dots[0].expand_as(dots), atol=1e-4)
    assert len({tuple(row.tolist()) for row in pe}) == 64  # every position is distinct


@pytest.mark.parametrize("args", [(10, 7), (10, 0), (-1, 8), (2.5, 8)])
def test_bad_sizes_raise(args):
    with pytest.raises(ValueError, match="even dim"):
        sinusoidal_positions(*args)
