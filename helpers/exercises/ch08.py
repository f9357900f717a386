"""The checks of chapter 08's exercises (classification, monitoring, recommendation); solutions in
``notebooks/solutions/08_classification_and_recommendation.ipynb``."""

from __future__ import annotations

import math

import numpy as np

from helpers.exercises import check, choice, each
from helpers.monitoring import cusum


def majority_f1(answer) -> str:
    """Exercise 1 (easy, predict then run): a classifier that always answers the majority class (65% of the
    reviews) has accuracy 0.65 but macro-F1 about 0.40: the F1 of the majority class is 0.79 and that of the
    other class 0 (chapter 08, section 2)."""
    return choice(
        "Exercise 1 (macro-F1 of the majority class)",
        answer,
        "b",
        "macro-F1 is the plain mean of one F1 per class; what are precision and recall of the class it never predicts?",
    )


def _ece(y, p, n_bins):
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    return sum(abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).mean() for b in range(n_bins) if (bins == b).any())


def _calibration_cases():
    rng = np.random.default_rng(8)
    cases = []
    for n, n_bins, squash in ((500, 10, 1.0), (300, 5, 3.0), (1000, 15, 0.4), (50, 10, 2.0)):
        p = 1 / (1 + np.exp(-squash * rng.normal(size=n)))
        cases.append((rng.random(n) < p**1.5, p, n_bins))  # labels from a different curve: miscalibrated on purpose
    cases.append((np.array([1, 1, 0, 0]), np.array([1.0, 0.95, 0.05, 0.0]), 10))  # p = 1.0 belongs to the last bin
    return cases


def calibration_error(expected_calibration_error) -> str:
    """Exercise 2 (medium): ``expected_calibration_error(y, p, n_bins)``: the probabilities cut into ``n_bins``
    equal-width bins of [0, 1] (p = 1 in the last), and the mean over bins of |share of positives - mean p|,
    weighted by the share of examples in the bin (chapter 08, section 6)."""
    cases = _calibration_cases()
    return check(
        "Exercise 2 (expected calibration error)",
        lambda: each([expected_calibration_error(y.astype(int), p, n_bins) for y, p, n_bins in cases]),
        lambda got: all(math.isclose(float(g), _ece(y, p, n_bins), abs_tol=1e-9) for g, (y, p, n_bins) in zip(got, cases)),
        "bin b holds the p with b / n_bins <= p < (b + 1) / n_bins; skip empty bins and weight each by its share of examples.",
    )


PERIOD_CASES = ((2.0, 0.5, 5.0), (1.0, 0.5, 4.0), (3.0, 0.0, 6.0), (0.8, 0.3, 5.0), (1.25, 0.25, 3.0))


def periods_to_alarm(periods) -> str:
    """Exercise 3 (medium): ``periods(d, k, h)``: after a rise of ``d`` scales (d > k) that lasts, how many periods
    the CUSUM of :func:`helpers.monitoring.cusum` takes to alarm, the surge's own first period counted as 1
    (chapter 08, section 7)."""

    def counted(d, k, h):
        return cusum(np.full(1000, float(d)), target=0.0, scale=1.0, k=k, h=h).first_alarm() + 1

    return check(
        "Exercise 3 (periods until the alarm)",
        lambda: each([periods(*case) for case in PERIOD_CASES]),
        lambda got: [float(g) for g in got] == [counted(*case) for case in PERIOD_CASES],
        "S grows by the same amount every period; the alarm needs S strictly above h. What happens when h is a whole "
        "number of steps?",
    )


def _graded_cases():
    rng = np.random.default_rng(3)
    cases = []
    for users, items, k in ((5, 30, 10), (8, 12, 5), (3, 50, 20), (6, 15, 15)):
        gains = np.where(rng.random((users, items)) < 0.3, rng.integers(1, 6, (users, items)), 0).astype(float)
        gains[0, :] = 0
        gains[0, 3] = 4  # one user with a single relevant item
        cases.append((gains, rng.random((users, items)), k))
    return cases


def graded_ndcg(ndcg_graded) -> str:
    """Exercise 4 (hard): ``ndcg_graded(gains, scores, k)``: NDCG@k with graded relevance (a rating as the gain of
    an item, 0 for unseen ones), averaged over users, equal to scikit-learn's ``ndcg_score`` (chapter 08,
    section 8)."""
    from sklearn.metrics import ndcg_score

    cases = _graded_cases()
    return check(
        "Exercise 4 (NDCG with graded relevance)",
        lambda: each([ndcg_graded(g, s, k) for g, s, k in cases]),
        lambda got: all(math.isclose(float(v), ndcg_score(g, s, k=k), rel_tol=1e-9) for v, (g, s, k) in zip(got, cases)),
        "DCG sums gain / log2(rank + 1) over the top k by score; the ideal DCG sorts the gains themselves.",
    )
