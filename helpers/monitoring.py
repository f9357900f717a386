"""Monitoring a stream of classified texts: the share of negative ones per period, and an alarm when it rises.

The pattern of public-opinion monitoring (a bank watching what is written about it): score every new item with a
classifier, count the share predicted negative in each period, and raise an alarm when that share drifts up. The
alarm rule is a one-sided CUSUM (Page 1954): it adds up how far each period lies above the normal level, less a
slack ``k``, and alarms when the sum passes ``h``, so a small rise that lasts is caught as surely as a jump, while
one noisy period is not. :func:`simulate_stream` builds streams from labelled test items with a surge injected at a
known period, so that detection delay and false alarms can be measured. Chapter 08, section 7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cusum:
    """The CUSUM statistic after each period and the periods at which it alarmed. Chapter 08, section 7."""

    statistic: np.ndarray
    alarms: np.ndarray

    def first_alarm(self, start: int = 0) -> int | None:
        """The first period >= ``start`` with an alarm, or None."""
        later = self.alarms[self.alarms >= start]
        return int(later[0]) if len(later) else None


def cusum(values, target: float, scale: float, k: float = 0.5, h: float = 5.0) -> Cusum:
    """One-sided upper CUSUM of ``values`` (one number per period): with ``z = (value - target) / scale``,
    ``S = max(0, S + z - k)``; an alarm where ``S > h``, after which ``S`` starts again from 0. ``target`` and
    ``scale`` are the normal level and its spread (from a period known to be normal); ``k = 0.5`` suits a rise of
    about one ``scale``, and ``h`` trades false alarms (smaller h: more) against delay. Taught in chapter 08, section 7."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or not np.isfinite(x).all():
        raise ValueError("values must be a 1-D sequence of finite numbers, one per period.")
    if not scale > 0 or k < 0 or not h > 0:
        raise ValueError(f"need scale > 0, k >= 0 and h > 0, got scale={scale}, k={k}, h={h}.")
    statistic = np.zeros(len(x))
    alarms = []
    s = 0.0
    for t, z in enumerate((x - target) / scale):
        s = max(0.0, s + z - k)
        statistic[t] = s
        if s > h:
            alarms.append(t)
            s = 0.0
    return Cusum(statistic, np.array(alarms, dtype=int))


@dataclass(frozen=True)
class Stream:
    """A simulated stream: per period, the true share of negative items and the share the classifier predicted
    negative; ``surge_start`` is the period where the surge begins (None: no surge). Chapter 08, section 7."""

    true_share: np.ndarray
    predicted_share: np.ndarray
    surge_start: int | None


def simulate_stream(
    is_negative,
    predicted_negative,
    n_periods: int,
    per_period: int,
    base_rate: float,
    surge_rate: float | None = None,
    surge_start: int | None = None,
    seed: int = 0,
) -> Stream:
    """A stream of ``n_periods`` periods of ``per_period`` items drawn (with replacement) from labelled test items:
    each item is negative with probability ``base_rate``, or ``surge_rate`` from period ``surge_start`` on, and is
    then drawn from the test items of that class, so it carries the classifier's real prediction for a real text.
    ``is_negative`` and ``predicted_negative`` are boolean arrays over the test items. Taught in chapter 08, section 7."""
    truth = np.asarray(is_negative, dtype=bool)
    pred = np.asarray(predicted_negative, dtype=bool)
    if truth.ndim != 1 or truth.shape != pred.shape or not truth.any() or truth.all():
        raise ValueError("is_negative and predicted_negative must be boolean arrays of the same length, with both classes.")
    if (surge_rate is None) != (surge_start is None):
        raise ValueError("Give both surge_rate and surge_start for a surge, or neither for a normal stream.")
    rates = [base_rate] + ([] if surge_rate is None else [surge_rate])
    if not all(0 <= r <= 1 for r in rates) or n_periods < 1 or per_period < 1:
        raise ValueError("Rates must lie in [0, 1] and n_periods, per_period be >= 1.")
    if surge_start is not None and not 0 <= surge_start < n_periods:
        raise ValueError(f"surge_start must be a period in [0, {n_periods}), got {surge_start}.")
    rng = np.random.default_rng(seed)
    negatives, positives = np.flatnonzero(truth), np.flatnonzero(~truth)
    rate = np.full(n_periods, base_rate)
    if surge_start is not None:
        rate[surge_start:] = surge_rate
    negative = rng.random((n_periods, per_period)) < rate[:, None]
    items = np.where(negative, rng.choice(negatives, negative.shape), rng.choice(positives, negative.shape))
    return Stream(truth[items].mean(axis=1), pred[items].mean(axis=1), surge_start)
