"""The checks of chapter 05's exercises (masked language modelling); solutions in
``notebooks/solutions/05_masked_lm.ipynb``."""

from __future__ import annotations

import torch

from helpers.exercises import check, choice
from helpers.model import GPT, IGNORE_INDEX, GPTConfig
from helpers.sentence_embeddings import minilm_embed


def masked_share(answer) -> str:
    """Exercise 1 (easy, predict then run): with p = 0.15 and BERT's 80/10/10 rule, 12% of all tokens become
    ``<|mask|>`` (chapter 05, section 2)."""
    return choice(
        "Exercise 1 (how much is masked)",
        answer,
        "b",
        "of the tokens selected for prediction, which share is replaced by the mask token? Multiply.",
    )


def mask_only(mask_only_fn, ids: torch.Tensor, tokenizer, p: float = 0.15) -> str:
    """Exercise 2 (medium): ``mask_only(ids, p, generator)`` selects each non-special token with probability ``p``
    and replaces every selected one by the mask token; targets are -100 elsewhere (chapter 05, section 2)."""
    special = torch.isin(ids, torch.tensor(sorted(tokenizer.special_ids)))

    def right(got):
        x, y = got
        selected = y != IGNORE_INDEX
        return (
            abs(selected.float().mean().item() - p) < 0.01
            and bool((x[selected] == tokenizer.mask_id).all())
            and torch.equal(x[~selected], ids[~selected])
            and torch.equal(y[selected], ids[selected])
            and not bool(selected[special].any())
        )

    return check(
        "Exercise 2 (masks only)",
        lambda: mask_only_fn(ids, p, torch.Generator().manual_seed(1)),
        right,
        "select with torch.rand(ids.shape, generator=generator) < p, leave out the special ids (torch.isin), put the "
        "mask id at every selected position, and -100 in the targets everywhere else.",
    )


def search(search_fn, texts: list[str], texts_emb: torch.Tensor, device=None) -> str:
    """Exercise 3 (medium): ``search(query, texts_emb, k)`` returns the ``k`` rows most similar to the query, most
    similar first (chapter 05, section 7)."""
    queries = [texts[7], "God made the world, the light and the waters."]

    def expected(query):
        scores = texts_emb @ minilm_embed([query], device=device)[0].to(texts_emb.device)
        return torch.topk(scores, 3).indices.tolist()

    return check(
        "Exercise 3 (semantic search)",
        lambda: None if search_fn(queries[0], texts_emb, 3) is None else [list(search_fn(q, texts_emb, 3)) for q in queries],
        lambda got: [[int(i) for i in g] for g in got] == [expected(q) for q in queries],
        "embed [query] with minilm_embed, take its dot products with every row of texts_emb (the embeddings have length "
        "1, so that is the cosine), then the indices of the k largest, largest first.",
    )


@torch.no_grad()
def _rescored(model, blank, n_candidates: int) -> int:
    device = next(model.parameters()).device
    candidates = model(torch.tensor([blank.ids[: blank.pos]], device=device))[0][0, -1].topk(n_candidates).indices.tolist()
    scores = []
    for c in candidates:
        verse = torch.tensor([[*blank.ids[: blank.pos], c, *blank.ids[blank.pos + 1 :]]], device=device)
        scores.append(-model(verse[:, :-1], verse[:, 1:])[1].item() * (verse.size(1) - 1))
    return candidates[max(range(len(candidates)), key=scores.__getitem__)]


def rescore(rescore_fn, model, blanks, n_candidates: int = 5) -> str:
    """Exercise 4 (hard): ``rescore_choices(model, blanks, n_candidates)`` picks, for each blank, the candidate of the
    left side's ``n_candidates`` likeliest tokens that makes the whole verse likeliest (chapter 05, section 6)."""
    # Also on an untrained model, where the right side changes the choice often: a trained one may agree with its
    # left side on every blank, and then could not tell rescoring from reading the left side only.
    c = model.config
    with torch.random.fork_rng(devices=[]):  # the learner's random state is left as it was
        torch.manual_seed(0)
        untrained = GPT(GPTConfig(vocab_size=c.vocab_size, block_size=c.block_size, n_layer=1, n_head=2, n_embd=16)).eval()
    models = (model, untrained.to(next(model.parameters()).device))

    def attempt():
        first = rescore_fn(models[0], blanks, n_candidates)
        return None if first is None else [first, rescore_fn(models[1], blanks, n_candidates)]

    return check(
        "Exercise 4 (a decoder reads the right side, at a price)",
        attempt,
        lambda got: all([int(x) for x in g] == [_rescored(m, b, n_candidates) for b in blanks] for g, m in zip(got, models)),
        "the candidates are model(left)[0][0, -1].topk(n).indices; build one verse per candidate and sum log_softmax of "
        "the logits at the tokens that follow, over the whole verse after its first token.",
    )
