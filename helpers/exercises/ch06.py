"""The checks of chapter 06's exercises (fine-tuning to translate); solutions in
``notebooks/solutions/06_translation_finetuning.ipynb``."""

from __future__ import annotations

from sacrebleu.metrics import BLEU

from helpers.decode import normalised_score
from helpers.exercises import check, choice
from helpers.recipes.translation import collate


def label_mask(next_is_target, examples, pad_id: int) -> str:
    """Exercise 1 (easy): ``next_is_target(ids, target_start)``, the positions whose label is not -100 in
    :func:`helpers.recipes.translation.collate` (chapter 06, section 2)."""
    ref = [(collate([ex], pad_id)["targets"][0] != -100).tolist() for ex in examples]
    return check(
        "Exercise 1 (the label mask by hand)",
        lambda: (
            None
            if next_is_target(examples[0].ids, examples[0].target_start) is None
            else [list(next_is_target(ex.ids, ex.target_start)) for ex in examples]
        ),
        lambda got: [[bool(b) for b in g] for g in got] == ref,
        "position t is labelled with ids[t + 1]; the labels count from the first target token on, end of text included.",
    )


def half_empty(answer) -> str:
    """Exercise 2 (easy, predict then run): a system that returns the reference for half the sentences and nothing
    for the other half keeps every n-gram precision at 100 but is half as long: BLEU = exp(1 - 2) x 100, about 37
    (chapter 06, section 6)."""
    return choice(
        "Exercise 2 (half the sentences missing)",
        answer,
        "b",
        "are the words it does write right? Then look at what the brevity penalty does when the output is half as long.",
    )


SHORT_LP = [-0.2, -0.9, -0.4]
LONG_LP = [-0.3, -0.4, -0.25, -0.3, -0.35, -0.2]


def length_penalty(choose) -> str:
    """Exercise 3 (medium): ``choose(short, long, length_penalty)`` returns the hypothesis with the higher normalised
    score, as :func:`helpers.decode.normalised_score` ranks them (chapter 06, section 5)."""
    penalties = (0.0, 0.5, 1.0, 2.0)

    def better(alpha):
        short = normalised_score(sum(SHORT_LP), len(SHORT_LP), alpha)
        return "short" if short > normalised_score(sum(LONG_LP), len(LONG_LP), alpha) else "long"

    return check(
        "Exercise 3 (length normalisation)",
        lambda: None if choose(SHORT_LP, LONG_LP, 0.0) is None else [choose(SHORT_LP, LONG_LP, a) for a in penalties],
        lambda got: list(got) == [better(a) for a in penalties],
        "divide each hypothesis's total log-probability by its length ** length_penalty, then compare.",
    )


def corpus_bleu(my_bleu, references: list[str], hypotheses: list[str] | None = None) -> str:
    """Exercise 4 (hard): ``my_bleu(hypotheses, references)``, corpus BLEU from its formula on whitespace tokens,
    equal to sacreBLEU's with ``tokenize="none"`` and no smoothing (chapter 06, section 6). Checked on the model's
    ``hypotheses`` and on made-up ones: the first half of every reference (the brevity penalty), and the references
    with every third word replaced (clipped precisions)."""
    halves = [" ".join(r.split()[: max(1, len(r.split()) // 2)]) for r in references]
    replaced = [" ".join("le" if i % 3 == 2 else w for i, w in enumerate(r.split())) for r in references]
    cases = [(halves, references), (replaced, references)] + ([(hypotheses, references)] if hypotheses else [])
    bleu = BLEU(tokenize="none", smooth_method="none")
    return check(
        "Exercise 4 (BLEU from its formula)",
        lambda: None if my_bleu(*cases[0]) is None else [float(my_bleu(h, r)) for h, r in cases],
        lambda got: all(abs(g - bleu.corpus_score(h, [r]).score) < 1e-6 for g, (h, r) in zip(got, cases)),
        "count clipped n-gram matches and n-grams over the whole corpus for n = 1..4, take the geometric mean of the four "
        "precisions (0 if one is 0), multiply by the brevity penalty exp(1 - ref_len / hyp_len) when the output is "
        "shorter, times 100.",
    )
