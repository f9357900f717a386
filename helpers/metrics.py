"""Scores, always from the reference implementations: BLEU and chrF from sacreBLEU (with their signatures),
their confidence intervals and significance tests from sacreBLEU's bootstrap resampling, perplexity from a mean
cross-entropy.

- :func:`bleu`, :func:`chrf` -> :class:`Score`: corpus BLEU / chrF, e.g. ``bleu(hyps, refs).score``.
- :func:`score_with_ci` -> :class:`ScoreCI`: the score with a 95% confidence interval,
  ``print(score_with_ci(hyps, refs, metric="bleu"))`` shows ``BLEU 12.35 (95% CI 10.90–13.80)``.
- :func:`compare_systems` -> :class:`Comparison`: is system B really better than system A on this test set?
  Paired bootstrap resampling gives both scores with their intervals, the difference and its p-value.
- :func:`perplexity`: exp of a mean cross-entropy.
- :func:`classification_scores`, :func:`compare_classifiers`: accuracy, macro-F1 and ROC-AUC by scikit-learn with
  SciPy's bootstrap intervals, and two classifiers compared on the same test set (chapter 08);
  :func:`mean_with_interval`: any per-case mean (a recommender's per-user NDCG) with its interval.

Chapter 06 scores its translations with these from section 3 on; chapter 04, section 5 computes perplexities.

Inputs. ``hypotheses`` is a sequence of strings, one per test sentence: a list, tuple, NumPy array, pandas Series
or an iterator (read once). ``references`` is one such sequence aligned with it, or a sequence of them when every
sentence has several references. A string hypothesis with a string reference is scored as a one-sentence corpus.

Bootstrap. sacreBLEU scores ``n_bootstrap`` test sets of the same size, each drawn from the sentences with
replacement, and reports their mean μ and a half-width: half the distance between the 2.5th and 97.5th
percentiles of the resampled scores. The interval ``low``-``high`` of :class:`ScoreCI` is exactly that μ ± half-width
(sacreBLEU prints it as ``μ = 12.31 ± 1.45``); it is centred on μ, not on the score of the full test set, which
usually lies close to μ. sacreBLEU seeds its generator afresh on every call with the environment variable
``SACREBLEU_SEED`` (default 12345), so reruns give identical intervals and p-values; the seed is in the signature
(``seed:12345``), and ``SACREBLEU_SEED=none`` draws fresh resamples each time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_METRICS = {"bleu": "BLEU", "chrf": "chrF"}


@dataclass(frozen=True)
class Score:
    """A corpus score by sacreBLEU: ``name``, ``score``, its ``signature`` and sacreBLEU's one-line ``detail``, which
    ``print`` shows (chapter 06, section 3)."""

    name: str
    score: float
    signature: str
    detail: str

    def __str__(self) -> str:
        return f"{self.detail}  [{self.signature}]"


@dataclass(frozen=True)
class ScoreCI:
    """A corpus score with sacreBLEU's 95% bootstrap interval ``mean ± ci`` (see the module docstring).

    ``score``: the metric on the whole test set; ``mean``: the mean over the bootstrap resamples; ``ci``: the
    interval's half-width; ``low``/``high``: ``mean - ci`` and ``mean + ci``.
    Chapter 06, section 6 prints them; section 8 draws ``low``-``high`` as error bars."""

    name: str
    score: float
    mean: float
    ci: float
    n_bootstrap: int
    signature: str

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci

    def __str__(self) -> str:
        return f"{self.name} {self.score:.2f} (95% CI {self.low:.2f}–{self.high:.2f})"


@dataclass(frozen=True)
class Comparison:
    """Two systems scored on the same test set by sacreBLEU's paired bootstrap resampling.

    ``difference`` is ``system.score - baseline.score``; ``p_value`` is the probability of a difference at least
    this large if the two systems were equally good (small = the difference is unlikely to be luck of the test set).
    First used in chapter 06, section 5."""

    names: tuple[str, str]
    baseline: ScoreCI
    system: ScoreCI
    difference: float
    p_value: float
    signature: str

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def __str__(self) -> str:
        width = max(map(len, self.names))
        verdict = "significant" if self.significant() else "not significant"
        return (
            f"{self.names[0]:<{width}}  {self.baseline}\n"
            f"{self.names[1]:<{width}}  {self.system}\n"
            f"difference {self.difference:+.2f}, p = {self.p_value:.4f}: {verdict} at 0.05 "
            f"(paired bootstrap, {self.system.n_bootstrap} resamples)"
        )


def _texts(values, what: str) -> list[str]:
    """``values`` read once into a list, every entry checked to be a string."""
    if isinstance(values, bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a sequence of strings, got {type(values).__name__}.")
    texts = list(values)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"{what}[{i}] is {text!r:.40} ({type(text).__name__}), not a string; every sentence must be a str "
                "(an empty translation is '')."
            )
    return [str(t) for t in texts]


def _prepare(hypotheses, references, what: str = "hypotheses") -> tuple[list[str], list[list[str]]]:
    """The hypotheses and the reference streams (one list per reference, aligned with the hypotheses)."""
    if isinstance(hypotheses, str) != isinstance(references, str):
        one, other = ("hypotheses", "references") if isinstance(hypotheses, str) else ("references", "hypotheses")
        raise TypeError(
            f"The {one} are a single string but the {other} are not: pass two strings to score one sentence, "
            "or a sequence of hypotheses and a sequence of references."
        )
    if isinstance(hypotheses, str):
        hypotheses, references = [hypotheses], [references]
    hyps = _texts(hypotheses, what)
    if not hyps:
        raise ValueError(f"No {what} to score: pass at least one translation.")
    if isinstance(references, bytes) or not isinstance(references, Iterable):
        raise TypeError(f"references must be a sequence of strings, got {type(references).__name__}.")
    refs = list(references)
    several = bool(refs) and isinstance(refs[0], Iterable) and not isinstance(refs[0], (str, bytes))
    streams = [_texts(s, f"references[{k}]") for k, s in enumerate(refs)] if several else [_texts(refs, "references")]
    for k, stream in enumerate(streams):
        if len(stream) != len(hyps):
            where = f" in reference stream {k}" if several else ""
            raise ValueError(f"{len(hyps)} {what} but {len(stream)} references{where}: score aligned lists of equal length.")
    return hyps, streams


def _metric(metric: str):
    from sacrebleu.metrics import BLEU, CHRF

    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}.")
    return BLEU() if metric == "bleu" else CHRF()


def _check_n_bootstrap(n_bootstrap) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 2:
        raise ValueError(
            f"n_bootstrap is the number of resampled test sets, an integer >= 2 (1000 is usual), got {n_bootstrap!r}."
        )


def bleu(hypotheses, references, tokenize: str = "13a") -> Score:
    """Corpus BLEU by sacreBLEU. ``references`` is a sequence of strings, or a sequence of reference streams.

    Chapter 06, section 3 prints it through :func:`helpers.recipes.translation.evaluate`; section 6 calls it.
    """
    from sacrebleu.metrics import BLEU

    hyps, refs = _prepare(hypotheses, references)
    metric = BLEU(tokenize=tokenize)
    result = metric.corpus_score(hyps, refs)
    return Score("BLEU", result.score, str(metric.get_signature()), str(result))


def chrf(hypotheses, references) -> Score:
    """Corpus chrF (character n-gram F-score, beta=2) by sacreBLEU.

    Chapter 06, section 3 prints it through :func:`helpers.recipes.translation.evaluate`; section 6 calls it.
    """
    from sacrebleu.metrics import CHRF

    hyps, refs = _prepare(hypotheses, references)
    metric = CHRF()
    result = metric.corpus_score(hyps, refs)
    return Score("chrF", result.score, str(metric.get_signature()), str(result))


def score_with_ci(hypotheses, references, metric: str = "bleu", n_bootstrap: int = 1000) -> ScoreCI:
    """Corpus BLEU or chrF (``metric="bleu"`` or ``"chrf"``) with sacreBLEU's 95% bootstrap confidence interval
    over ``n_bootstrap`` resampled test sets: ``corpus_score(..., n_bootstrap=n_bootstrap)``.
    Taught in chapter 06, section 6."""
    _check_n_bootstrap(n_bootstrap)
    hyps, refs = _prepare(hypotheses, references)
    scorer = _metric(metric)
    result = scorer.corpus_score(hyps, refs, n_bootstrap=n_bootstrap)
    return ScoreCI(
        _METRICS[metric], result.score, float(result._mean), float(result._ci), n_bootstrap, str(scorer.get_signature())
    )


def compare_systems(
    baseline, system, references, metric: str = "bleu", n_bootstrap: int = 1000, names: tuple[str, str] = ("baseline", "system")
) -> Comparison:
    """Paired bootstrap resampling (sacreBLEU's ``PairedTest`` with ``test_type="bs"``, after Koehn 2004): both
    systems are scored on the same ``n_bootstrap`` resampled test sets, which gives each score's 95% interval and
    the p-value of their difference. ``baseline`` and ``system`` are the two systems' translations of the same
    sources, aligned with ``references``. Taught in chapter 06, section 5.

    Two outputs the metric cannot tell apart (identical, or differing only in spacing it ignores) get
    ``p_value = 1``: their difference is 0 on every resample. (sacreBLEU itself reports its smallest p-value,
    1 / (n_bootstrap + 1), there, as it counts resampled differences strictly larger than the observed one and
    none is.)"""
    from sacrebleu.significance import PairedTest

    _check_n_bootstrap(n_bootstrap)
    if isinstance(baseline, str) or isinstance(system, str):
        raise TypeError("compare_systems compares two systems on a test set: pass sequences of sentences, not single strings.")
    names = tuple(names)
    if len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise ValueError(f"names must be two strings (baseline, system), got {names!r}.")
    base, refs = _prepare(baseline, references, "baseline hypotheses")
    other = _texts(system, "system hypotheses")
    if len(other) != len(base):
        raise ValueError(
            f"{len(base)} baseline hypotheses but {len(other)} system hypotheses: compare two systems on the same test set."
        )
    scorer = _metric(metric)
    test = PairedTest([(names[0], base), (names[1], other)], {metric: scorer}, refs, test_type="bs", n_samples=n_bootstrap)
    signatures, results = test()
    (key,) = signatures  # sacreBLEU's own name for the metric, e.g. "chrF2"
    signature = str(signatures[key])
    scores = [ScoreCI(_METRICS[metric], r.score, float(r.mean), float(r.ci), n_bootstrap, signature) for r in results[key]]
    # The per-sentence statistics are all the resampling sees: equal statistics, equal scores on every resample.
    same = scorer._extract_corpus_statistics(base, refs) == scorer._extract_corpus_statistics(other, refs)
    p_value = 1.0 if same else float(results[key][1].p_value)
    return Comparison(names, scores[0], scores[1], scores[1].score - scores[0].score, p_value, signature)


def perplexity(mean_cross_entropy: float) -> float:
    """exp of a mean per-token cross-entropy in nats (chapter 04, section 5)."""
    return math.exp(mean_cross_entropy)


# ------------------------------------------------------------------------------------------------ classification
#: The scores of :func:`classification_scores`, each by scikit-learn.
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "roc_auc")


@dataclass(frozen=True)
class Estimate:
    """A value with a ``confidence`` interval ``low``-``high`` (SciPy's percentile bootstrap). Chapter 08, section 5."""

    value: float
    low: float
    high: float
    confidence: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _check_binary(y_true, *probs) -> tuple:
    y = np.asarray(y_true)
    if y.ndim != 1 or not len(y) or not set(np.unique(y)) <= {0, 1}:
        raise ValueError("y_true must be a non-empty 1-D array of 0/1 labels (1 = the positive class).")
    out = []
    for p in probs:
        p = np.asarray(p, dtype=float)
        if p.shape != y.shape or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
            raise ValueError(
                f"Each probability array must hold P(class 1) in [0, 1] for each of the {len(y)} examples, got shape "
                f"{p.shape}; for (N, 2) probabilities pass probs[:, 1]."
            )
        out.append(p)
    return (y, *out)


def _scores(y, p, threshold: float):
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = (p >= threshold).astype(int)
    # A resample holding one class only has no ROC-AUC: NaN, which makes the interval NaN rather than wrong.
    auc = roc_auc_score(y, p) if len(np.unique(y)) == 2 else float("nan")
    return np.array([accuracy_score(y, pred), f1_score(y, pred, average="macro", zero_division=0), auc])


def _with_intervals(data: tuple, statistic, n_resamples: int, seed: int, confidence: float = 0.95) -> dict[str, Estimate]:
    """:data:`CLASSIFICATION_METRICS` by ``statistic(*data)``, each with SciPy's paired percentile bootstrap interval."""
    from scipy.stats import bootstrap

    _check_n_bootstrap(n_resamples)
    value = statistic(*data)
    res = bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = res.confidence_interval
    return {m: Estimate(float(value[i]), float(low[i]), float(high[i]), confidence) for i, m in enumerate(CLASSIFICATION_METRICS)}


def mean_with_interval(values, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> Estimate:
    """The mean of ``values`` (one number per test case, e.g. per user) with SciPy's percentile bootstrap interval.
    For two systems scored on the same cases, pass the differences case by case: a paired interval of the difference.
    Taught in chapter 08, section 8."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError("values must be a 1-D array of at least 2 finite numbers, one per test case.")
    _check_n_bootstrap(n_resamples)
    res = bootstrap(
        (x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed)
    )
    return Estimate(float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high), confidence)


def classification_scores(
    y_true, prob, threshold: float = 0.5, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Estimate]:
    """Accuracy, macro-F1 (both at ``threshold`` on ``prob``) and ROC-AUC (of ``prob`` itself), each from
    scikit-learn, with a percentile bootstrap interval from ``scipy.stats.bootstrap`` over the test examples
    (``n_resamples`` resampled test sets, generator seeded with ``seed``). ``prob`` is P(class 1) per example.
    Taught in chapter 08, section 5."""
    y, p = _check_binary(y_true, prob)
    return _with_intervals((y, p), lambda yy, pp: _scores(yy, pp, threshold), n_resamples, seed, confidence)


def compare_classifiers(
    y_true, prob_a, prob_b, threshold: float = 0.5, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Estimate | float]:
    """Classifier B against A on the same test set: for each of :data:`CLASSIFICATION_METRICS`, B's score minus A's
    with a paired bootstrap interval (both scored on the same resampled test sets), and ``"mcnemar_p"``, the exact
    McNemar test of their accuracies (SciPy's binomial test on the examples exactly one of them gets right).
    Taught in chapter 08, section 5."""
    from scipy.stats import binomtest

    y, a, b = _check_binary(y_true, prob_a, prob_b)
    difference = lambda yy, aa, bb: _scores(yy, bb, threshold) - _scores(yy, aa, threshold)
    out: dict[str, Estimate | float] = dict(_with_intervals((y, a, b), difference, n_resamples, seed))
    right_a, right_b = (a >= threshold) == y, (b >= threshold) == y
    only_b, only_a = int((right_b & ~right_a).sum()), int((right_a & ~right_b).sum())
    out["mcnemar_p"] = 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return out
