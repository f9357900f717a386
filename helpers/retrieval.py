"""Retrieval for retrieval-augmented generation (RAG): find the passages of a knowledge base that answer a question,
by the cosine similarity of MiniLM sentence embeddings (chapter 09).

The passages are embedded once; a question is embedded when asked, and its nearest passages go into the prompt,
so the model can quote facts it never saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from helpers.sentence_embeddings import minilm_embed


class Retriever:
    """The passages ``texts`` (with their ``ids``, default 0, 1, ...) embedded with MiniLM, searchable by question.

    ``search(questions, k)`` gives, for each question, the ids of the ``k`` most similar passages, best first;
    ``passages(question, k)`` the texts themselves. Taught in chapter 09, section 6.
    """

    def __init__(self, texts: Sequence[str], ids: Sequence | None = None, device=None):
        texts = list(texts)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("Retriever needs a non-empty list of non-empty passage texts.")
        self.ids = list(range(len(texts))) if ids is None else list(ids)
        if len(self.ids) != len(texts):
            raise ValueError(f"{len(self.ids)} ids for {len(texts)} passages: give one id per passage.")
        self.texts, self.device = texts, device
        self.embeddings = minilm_embed(texts, device=device)

    def scores(self, questions: Sequence[str]) -> torch.Tensor:
        """Cosine similarities (Q, P) of each question to each passage. Taught in chapter 09, section 6."""
        return minilm_embed(list(questions), device=self.device) @ self.embeddings.T

    def search(self, questions: Sequence[str], k: int = 2) -> list[list]:
        """The ids of the ``k`` passages most similar to each question, best first. Taught in chapter 09, section 6."""
        if not isinstance(k, int) or not 1 <= k <= len(self.texts):
            raise ValueError(f"k must be an integer from 1 to the number of passages ({len(self.texts)}), got {k!r}.")
        top = self.scores(questions).topk(k, dim=1).indices.tolist()
        return [[self.ids[i] for i in row] for row in top]

    def passages(self, question: str, k: int = 2) -> list[str]:
        """The texts of the ``k`` passages most similar to ``question``. Taught in chapter 09, section 6."""
        by_id = dict(zip(self.ids, self.texts))
        return [by_id[i] for i in self.search([question], k)[0]]


def recall_at_k(ranked: Sequence[Sequence], gold: Sequence, k: int) -> float:
    """The share of questions whose right passage ``gold[i]`` is among the first ``k`` of ``ranked[i]``.

    Taught in chapter 09, section 6 (exercise 09.2 asks for it by hand).
    """
    if len(ranked) != len(gold) or not gold:
        raise ValueError(f"recall_at_k needs one ranking per gold id, at least one; got {len(ranked)} and {len(gold)}.")
    return sum(g in list(r)[:k] for r, g in zip(ranked, gold)) / len(gold)
