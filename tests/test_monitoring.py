"""helpers.monitoring: the CUSUM alarm fires on an injected surge and not on a normal stream; streams are what
they say."""

import numpy as np
import pytest

from helpers.monitoring import cusum, simulate_stream


def by_hand(x, target, scale, k, h):
    s, stat, alarms = 0.0, [], []
    for t, v in enumerate(x):
        s = max(0.0, s + (v - target) / scale - k)
        stat.append(s)
        if s > h:
            alarms.append(t)
            s = 0.0
    return np.array(stat), alarms


def test_cusum_is_pages_recursion():
    x = np.random.default_rng(0).normal(0.3, 0.1, 300)
    x[150:] += 0.1
    got = cusum(x, target=0.3, scale=0.1, k=0.5, h=4.0)
    stat, alarms = by_hand(x, 0.3, 0.1, 0.5, 4.0)
    assert np.allclose(got.statistic, stat) and got.alarms.tolist() == alarms


def test_no_alarm_on_a_constant_stream_and_one_soon_after_a_surge():
    assert len(cusum(np.full(1000, 0.34), target=0.34, scale=0.05).alarms) == 0
    x = np.full(200, 0.34)
    x[120:] = 0.44  # two scales up
    result = cusum(x, target=0.34, scale=0.05, k=0.5, h=5.0)
    assert result.first_alarm() == result.first_alarm(120) == 123  # S grows by 1.5 per period: 1.5, 3, 4.5, 6 > 5


def test_a_simulated_surge_is_detected_and_a_normal_stream_rarely_alarms():
    rng = np.random.default_rng(1)
    truth = rng.random(1000) < 0.35
    pred = np.where(rng.random(1000) < 0.9, truth, ~truth)  # a classifier right 90% of the time
    normal = simulate_stream(truth, pred, n_periods=500, per_period=50, base_rate=0.35, seed=2)
    assert normal.surge_start is None and abs(normal.true_share.mean() - 0.35) < 0.01
    target, scale = normal.predicted_share[:100].mean(), normal.predicted_share[:100].std()
    assert len(cusum(normal.predicted_share, target, scale, h=8.0).alarms) <= 2
    surged = simulate_stream(truth, pred, n_periods=300, per_period=50, base_rate=0.35, surge_rate=0.5, surge_start=200, seed=2)
    assert abs(surged.true_share[200:].mean() - 0.5) < 0.02
    first = cusum(surged.predicted_share, target, scale, h=8.0).first_alarm(200)
    assert first is not None and first - 200 <= 10


def test_same_seed_same_stream_and_clear_errors():
    truth = np.arange(100) % 3 == 0
    a = simulate_stream(truth, truth, 20, 10, 0.3, seed=5)
    b = simulate_stream(truth, truth, 20, 10, 0.3, seed=5)
    assert np.array_equal(a.predicted_share, b.predicted_share)
    with pytest.raises(ValueError, match="both surge_rate and surge_start"):
        simulate_stream(truth, truth, 20, 10, 0.3, surge_rate=0.5)
    with pytest.raises(ValueError, match="both classes"):
        simulate_stream(np.zeros(10, bool), np.zeros(10, bool), 20, 10, 0.3)
    with pytest.raises(ValueError, match="scale > 0"):
        cusum([0.1, 0.2], target=0.1, scale=0.0)
