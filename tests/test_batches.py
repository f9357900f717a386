"""helpers.batches: windows are (x, next tokens), batches depend only on (seed, step), validation is fixed."""

import pytest
import torch

from helpers.batches import RandomWindows, ShuffledBatches, eval_batches, pad, seeded_generator

TOKENS = torch.arange(1000) % 97  # every window is recognisable: y = (x + 1) mod 97


def test_random_windows_are_inputs_and_next_tokens():
    x, y = RandomWindows(TOKENS, block_size=8, batch_size=5, seed=0)(3)
    assert x.shape == y.shape == (5, 8)
    assert x.dtype == y.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y, (x + 1) % 97)


def test_random_windows_depend_only_on_seed_and_step():
    a = RandomWindows(TOKENS, 8, 4, seed=1)
    b = RandomWindows(TOKENS, 8, 4, seed=1)
    for step in (5, 0, 5):  # order of calls does not matter
        assert all(torch.equal(u, v) for u, v in zip(a(step), b(step)))
    assert not torch.equal(a(0)[0], a(1)[0])
    assert not torch.equal(a(0)[0], RandomWindows(TOKENS, 8, 4, seed=2)(0)[0])


def test_random_windows_reach_the_last_token():
    tokens = torch.arange(10)
    seen = torch.cat([RandomWindows(tokens, 4, 8, seed=0)(s)[1].flatten() for s in range(20)])
    assert seen.max() == 9 and seen.min() == 1


def test_random_windows_reject_bad_input():
    with pytest.raises(ValueError, match="block_size \\+ 1"):
        RandomWindows(torch.arange(8), block_size=8, batch_size=2)
    with pytest.raises(TypeError, match="1-D"):
        RandomWindows(torch.zeros(2, 50, dtype=torch.long), 8, 2)
    with pytest.raises(TypeError, match="integer"):
        RandomWindows(torch.rand(50), 8, 2)
    with pytest.raises(ValueError, match="step"):
        RandomWindows(TOKENS, 8, 2)(-1)


def test_eval_batches_cover_the_stream_without_overlap():
    batches = eval_batches(torch.arange(101), block_size=10, batch_size=4)
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    assert torch.equal(x.flatten(), torch.arange(100))
    assert torch.equal(y, x + 1)
    again = eval_batches(torch.arange(101), 10, 4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


def test_eval_batches_spread_a_capped_number_over_the_stream():
    batches = eval_batches(torch.arange(1001), block_size=10, batch_size=2, n_batches=3)
    x = torch.cat([x for x, _ in batches])
    assert x.shape == (6, 10)
    assert x[0, 0] == 0 and x[-1, -1] == 999  # first and last windows sit at the two ends
    assert (x[1:, 0] - x[:-1, 0] >= 10).all()  # no overlap
    with pytest.raises(ValueError, match="at most 5 batches"):
        eval_batches(torch.arange(101), block_size=10, batch_size=2, n_batches=6)


def test_shuffled_batches_visit_every_example_once_per_epoch():
    examples = list(range(10))
    batches = ShuffledBatches(examples, batch_size=3, collate=torch.tensor, seed=0)
    epoch0 = torch.cat([batches(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 9
    epoch1 = torch.cat([batches(s) for s in range(3, 6)])
    assert not torch.equal(epoch0, epoch1)
    fresh = ShuffledBatches(examples, 3, torch.tensor, seed=0)
    assert torch.equal(fresh(4), batches(4)) and torch.equal(fresh(1), batches(1))
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches(examples, 11, torch.tensor)


def test_pad_right_and_left_with_masks():
    ids, mask = pad([[5, 6, 7], [8]], value=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad([(5, 6, 7), (8,)], value=-100, side="left")
    assert ids.tolist() == [[5, 6, 7], [-100, -100, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="side"):
        pad([[1]], 0, side="middle")
    with pytest.raises(ValueError, match="at least one"):
        pad([], 0)


def test_seeded_generators_differ_by_key_and_repeat():
    draw = lambda *key: torch.randint(1000, (8,), generator=seeded_generator(*key)).tolist()
    assert draw(0, 1) == draw(0, 1)
    assert len({tuple(draw(*key)) for key in [(0, 1), (1, 0), (0, 1, 1), (0, 2)]}) == 4
    with pytest.raises(ValueError, match="integers >= 0"):
        seeded_generator(0, -1)
