"""helpers.metrics must give exactly what sacreBLEU gives when called directly."""

import math

import pytest
import sacrebleu

from helpers import metrics

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
