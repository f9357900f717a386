"""helpers.metrics must give exactly what sacreBLEU gives when called directly."""

import math
import random

import numpy as np
import pytest
import sacrebleu

from helpers import metrics
from helpers.metrics import classification_scores, compare_classifiers, mean_with_interval

HYP = ["Au commencement, Dieu créa le ciel et la terre.", "La terre était vide.", "Dieu dit: lumière!"]
REF = ["Au commencement, Dieu créa les cieux et la terre.", "La terre était informe et vide.", "Dieu dit: Que la lumière soit!"]


def test_bleu_equals_direct_sacrebleu():
    ours = metrics.bleu(HYP, REF)
    direct = sacrebleu.corpus_bleu(HYP, [REF])
    assert ours.score == direct.score
    assert 0 < ours.score < 100
    assert ours.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert metrics.bleu(REF, REF).score == pytest.approx(100.0)


def test_chrf_equals_direct_sacrebleu():
    ours = metrics.chrf(HYP, REF)
    assert ours.score == sacrebleu.corpus_chrf(HYP, [REF]).score
    assert "chrF2" in ours.detail and "nc:6" in ours.signature


def test_multiple_reference_streams():
    other = ["Au commencement Dieu créa le ciel et la terre.", "La terre était vide.", "Dieu dit: lumière!"]
    assert metrics.bleu(HYP, [REF, other]).score == sacrebleu.corpus_bleu(HYP, [REF, other]).score
    assert metrics.bleu(HYP, [REF, other]).score > metrics.bleu(HYP, REF).score


def test_bad_input():
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        metrics.bleu(HYP, REF[:2])
    with pytest.raises(ValueError, match="No hypotheses"):
        metrics.chrf([], [])


def test_perplexity():
    assert metrics.perplexity(math.log(50.0)) == pytest.approx(50.0)


# ------------------------------------------------------------------------------------------ input shapes
def test_two_strings_are_one_sentence():
    assert metrics.bleu("le chat est noir", "le chat est noir").score == pytest.approx(100.0)
    assert metrics.chrf("le chat est noir", "le chat est noir").score == pytest.approx(100.0)
    assert metrics.bleu(HYP[0], REF[0]).score == sacrebleu.corpus_bleu([HYP[0]], [[REF[0]]]).score
    with pytest.raises(TypeError, match="hypotheses are a single string but the references are not"):
        metrics.bleu("le chat est noir", ["le chat est noir"])
    with pytest.raises(TypeError, match="references are a single string but the hypotheses are not"):
        metrics.chrf(["le chat est noir"], "le chat est noir")


def test_any_sequence_is_read_once():
    import numpy as np
    import pandas as pd

    expected = metrics.bleu(HYP, REF).score
    for hyps, refs in [
        (tuple(HYP), tuple(REF)),
        (np.array(HYP), np.array(REF)),
        (pd.Series(HYP), pd.Series(REF)),
        ((h for h in HYP), (r for r in REF)),
        (iter(HYP), [iter(REF)]),
        (HYP, np.array([REF])),
    ]:
        assert metrics.bleu(hyps, refs).score == expected
    other = ["Au commencement Dieu créa le ciel et la terre.", "La terre était vide.", "Dieu dit: lumière!"]
    streams = (tuple(REF), (o for o in other))
    assert metrics.chrf(iter(HYP), streams).score == sacrebleu.corpus_chrf(HYP, [REF, other]).score


def test_none_and_non_strings_are_named_by_position():
    with pytest.raises(TypeError, match=r"hypotheses\[1\] is None"):
        metrics.bleu([HYP[0], None, HYP[2]], REF)
    with pytest.raises(TypeError, match=r"references\[2\] is 3 \(int\)"):
        metrics.chrf(HYP, [REF[0], REF[1], 3])
    with pytest.raises(TypeError, match=r"references\[1\]\[0\] is None"):
        metrics.bleu(HYP, [REF, [None, "a", "b"]])
    with pytest.raises(ValueError, match="3 hypotheses but 2 references in reference stream 1"):
        metrics.bleu(HYP, [REF, REF[:2]])
    with pytest.raises(TypeError, match="sequence of strings, got int"):
        metrics.bleu(HYP, 3)


# -------------------------------------------------------------------------- bootstrap: intervals, tests
def _test_set():
    """50 reference sentences and two systems: one changes about 1 word in 10, the other 1 in 2."""
    rng = random.Random(0)
    words = (
        "le la les un une de du et est dans sur avec pour par qui que chat chien maison terre ciel dieu "
        "homme femme jour nuit eau feu pain vin roi peuple"
    ).split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 15))) for _ in range(50)]

    def system(p):
        return [" ".join(w if rng.random() > p else rng.choice(words) for w in r.split()) for r in refs]

    return refs, system(0.1), system(0.5)


@pytest.fixture
def bench_set(monkeypatch):
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)  # sacreBLEU's fixed default seed, 12345
    return _test_set()


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_score_with_ci_is_sacrebleus_bootstrap(bench_set, metric):
    refs, good, _ = bench_set
    ours = metrics.score_with_ci(good, refs, metric=metric, n_bootstrap=200)
    scorer = sacrebleu.BLEU() if metric == "bleu" else sacrebleu.CHRF()
    direct = scorer.corpus_score(good, [refs], n_bootstrap=200)
    assert (ours.score, ours.mean, ours.ci) == (direct.score, direct._mean, direct._ci)
    assert ours.low < ours.score < ours.high
    assert "bs:200|seed:12345" in ours.signature
    assert str(ours) == f"{ours.name} {ours.score:.2f} (95% CI {ours.low:.2f}–{ours.high:.2f})"
    assert metrics.score_with_ci(good, refs, metric=metric, n_bootstrap=200) == ours  # same seed, same resamples


def test_compare_systems_is_sacrebleus_paired_bootstrap(bench_set):
    from sacrebleu.significance import PairedTest

    refs, good, bad = bench_set
    result = metrics.compare_systems(bad, good, refs, n_bootstrap=200, names=("bad", "good"))
    _, direct = PairedTest([("bad", bad), ("good", good)], {"BLEU": sacrebleu.BLEU()}, [refs], test_type="bs", n_samples=200)()
    for ours, theirs in zip((result.baseline, result.system), direct["BLEU"]):
        assert (ours.score, ours.mean, ours.ci) == (theirs.score, theirs.mean, theirs.ci)
        assert ours.low < ours.score < ours.high
    assert result.p_value == direct["BLEU"][1].p_value < 0.01 and result.significant()
    assert result.difference == pytest.approx(result.system.score - result.baseline.score) and result.difference > 10
    alone = metrics.score_with_ci(good, refs, n_bootstrap=200)  # the same resamples as in the paired test
    assert (result.system.score, result.system.ci) == (alone.score, alone.ci)
    assert result.system.mean == pytest.approx(alone.mean, rel=1e-12)  # numpy's mean vs statistics.mean
    assert metrics.compare_systems(bad, good, refs, n_bootstrap=200, names=("bad", "good")) == result
    assert "significant at 0.05" in str(result) and "p = 0.0050" in str(result)


def test_a_system_against_itself_is_not_significant(bench_set):
    from sacrebleu.significance import PairedTest

    refs, good, _ = bench_set
    result = metrics.compare_systems(good, list(good), refs, metric="chrf", n_bootstrap=200)
    assert result.p_value == 1.0 and result.difference == 0.0 and not result.significant()
    assert result.baseline == result.system
    spaced = metrics.compare_systems(good, [h.replace(" ", "  ") for h in good], refs, n_bootstrap=200)
    assert spaced.p_value == 1.0  # BLEU's tokenizer cannot see the doubled spaces either
    # Why the special case: sacreBLEU counts resampled differences strictly above the observed 0 and finds none.
    _, direct = PairedTest([("a", good), ("b", good)], {"chrF": sacrebleu.CHRF()}, [refs], test_type="bs", n_samples=200)()
    assert direct["chrF2"][1].p_value == pytest.approx(1 / 201)


def test_bootstrap_bad_input(bench_set):
    refs, good, bad = bench_set
    for n in (0, 1, -5, 2.5, True):
        with pytest.raises(ValueError, match="n_bootstrap"):
            metrics.score_with_ci(good, refs, n_bootstrap=n)
        with pytest.raises(ValueError, match="n_bootstrap"):
            metrics.compare_systems(bad, good, refs, n_bootstrap=n)
    with pytest.raises(ValueError, match="50 baseline hypotheses but 49 system hypotheses"):
        metrics.compare_systems(bad, good[:49], refs, n_bootstrap=200)
    with pytest.raises(ValueError, match="50 baseline hypotheses but 49 references"):
        metrics.compare_systems(bad, good, refs[:49], n_bootstrap=200)
    with pytest.raises(ValueError, match="50 hypotheses but 49 references"):
        metrics.score_with_ci(good, refs[:49], n_bootstrap=200)
    with pytest.raises(ValueError, match="metric must be one of"):
        metrics.score_with_ci(good, refs, metric="ter", n_bootstrap=200)
    with pytest.raises(TypeError, match="not single strings"):
        metrics.compare_systems(good[0], bad[0], refs[0], n_bootstrap=200)


# ------------------------------------------------------------------------------------------------ classification
def _classifier_outputs(seed=0, n=400):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    return y, np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)  # right about 80% of the time


def test_classification_scores_are_scikit_learns_with_an_interval_around_them():
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y, p = _classifier_outputs()
    scores = classification_scores(y, p, n_resamples=200)
    assert scores["accuracy"].value == accuracy_score(y, p >= 0.5)
    assert scores["macro_f1"].value == f1_score(y, p >= 0.5, average="macro")
    assert scores["roc_auc"].value == roc_auc_score(y, p)
    for est in scores.values():
        assert est.low < est.value < est.high and est.high - est.low < 0.2
    assert classification_scores(y, p, n_resamples=200) == scores  # seeded: a rerun gives the same intervals


def test_compare_classifiers_sees_a_better_one_and_nothing_between_equals():
    y, p = _classifier_outputs()
    worse = np.where(np.random.default_rng(1).random(len(y)) < 0.3, 1 - p, p)
    better = compare_classifiers(y, worse, p, n_resamples=200)
    assert better["accuracy"].low > 0 and better["mcnemar_p"] < 0.001
    same = compare_classifiers(y, p, p, n_resamples=200)
    assert same["accuracy"].value == 0 and same["mcnemar_p"] == 1.0


def test_classification_scores_reject_what_they_cannot_score():
    y, p = _classifier_outputs()
    with pytest.raises(ValueError, match="0/1 labels"):
        classification_scores(y + 1, p)
    with pytest.raises(ValueError, match=r"probs\[:, 1\]"):
        classification_scores(y, np.stack([1 - p, p], axis=1))


def test_mean_with_interval_brackets_the_mean_and_is_zero_for_a_system_against_itself():
    x = np.random.default_rng(2).random(300)
    est = mean_with_interval(x, n_resamples=500)
    assert est.value == pytest.approx(x.mean()) and est.low < est.value < est.high
    assert abs((est.high - est.low) - 2 * 1.96 * x.std() / np.sqrt(len(x))) < 0.01  # the normal approximation's width
    same = mean_with_interval(x - x, n_resamples=100)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="at least 2 finite numbers"):
        mean_with_interval([1.0])
