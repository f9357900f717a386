"""Scores, always from the reference implementations: BLEU and chrF from sacreBLEU (with their signatures),
perplexity from a mean cross-entropy."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    name: str
    score: float
    signature: str
    detail: str

    def __str__(self) -> str:
        return f"{self.detail}  [{self.signature}]"


def _check(hypotheses, references) -> list[list[str]]:
    hypotheses = list(hypotheses)
    if references and isinstance(references[0], str):
        references = [list(references)]
    for refs in references:
        if len(refs) != len(hypotheses):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(refs)} references: score aligned lists of equal length.")
    if not hypotheses:
        raise ValueError("No hypotheses to score: pass at least one translation.")
    return references


def bleu(hypotheses, references, tokenize: str = "13a") -> Score:
    """Corpus BLEU by sacreBLEU. ``references`` is a list of strings, or a list of reference streams."""
    from sacrebleu.metrics import BLEU

    refs = _check(hypotheses, references)
    metric = BLEU(tokenize=tokenize)
    result = metric.corpus_score(list(hypotheses), refs)
    return Score("BLEU", result.score, str(metric.get_signature()), str(result))


def chrf(hypotheses, references) -> Score:
    """Corpus chrF (character n-gram F-score, beta=2) by sacreBLEU."""
    from sacrebleu.metrics import CHRF

    refs = _check(hypotheses, references)
    metric = CHRF()
    result = metric.corpus_score(list(hypotheses), refs)
    return Score("chrF", result.score, str(metric.get_signature()), str(result))


def perplexity(mean_cross_entropy: float) -> float:
    """exp of a mean per-token cross-entropy in nats."""
    return math.exp(mean_cross_entropy)
