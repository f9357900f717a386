"""The checks of chapter 09's exercises (prompting, retrieval and chat); solutions in
``notebooks/solutions/09_prompting_and_chat.ipynb``."""

from __future__ import annotations

import copy
import math

import numpy as np

from helpers.exercises import check, choice, each


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=axis, keepdims=True))


def _calibrated(logprobs, content_free) -> np.ndarray:
    return np.argmax(_log_softmax(logprobs, 1) - _log_softmax(content_free[None, :], 1), axis=1)


def _calibration_cases():
    """(logprobs, content_free) pairs: label log-probs out of a whole vocabulary (rows do not sum to 1)."""
    rng = np.random.default_rng(9)
    cases = []
    for n, n_labels, centre, spread in ((20, 2, -4.0, 1.5), (40, 3, -6.0, 2.0), (25, 4, -3.0, 1.0)):
        cases.append((rng.normal(centre, spread, (n, n_labels)), rng.normal(centre, spread, n_labels)))
    # Log-probs of rare label words, around -1000 .. -900: np.exp of them is 0.
    cases.append((rng.uniform(-1000, -900, (30, 4)), rng.uniform(-1000, -900, 4)))
    # A prompt that favours label 0 whatever the input: the content-free row shows it, calibration removes it.
    bias = np.array([3.0, 0.0, -1.0])
    cases.append((rng.normal(-5, 1, (60, 3)) + bias, rng.normal(-5, 0.2, 3) + bias))
    return cases


def calibration(calibrate) -> str:
    """Exercise 1 (medium): ``calibrate(logprobs, content_free)``: contextual calibration (Zhao et al. 2021). With
    ``logprobs`` (N, L), the log-probabilities of L label words after each of N prompts, and ``content_free`` (L,),
    the same after a content-free input ("N/A"), the N label indices argmax over L of log_softmax(row) -
    log_softmax(content_free), both renormalised over the L labels (chapter 09, section 3)."""
    cases = _calibration_cases()

    def right(got):
        for g, (logprobs, content_free) in zip(got, cases):
            g = np.asarray(g)
            if g.shape != (len(logprobs),) or not np.issubdtype(g.dtype, np.integer):
                return False
            if not np.array_equal(g, _calibrated(logprobs, content_free)):
                return False
        return True

    return check(
        "Exercise 1 (contextual calibration)",
        lambda: each([calibrate(logprobs.copy(), content_free.copy()) for logprobs, content_free in cases]),
        right,
        "renormalise each row over the label words in log space (subtract its logsumexp) before subtracting the "
        "content-free row, renormalised the same way; np.exp of a log-prob near -1000 is 0, so stay in log space or "
        "subtract the maximum first. Return an integer array of N label indices.",
    )


def _recall_cases():
    """(ranked, gold, k) triples: string ids and int ids; some gold ids are in no ranking at all."""
    rng = np.random.default_rng(6)
    cases = []
    for n, n_passages, depth, strings in ((30, 20, 8, True), (25, 12, 5, False), (40, 50, 10, True), (15, 6, 6, False)):
        ids = [f"p{i}" for i in range(n_passages)] if strings else list(range(100, 100 + n_passages))
        ranked = [[ids[j] for j in rng.permutation(n_passages)[:depth]] for _ in range(n)]
        gold = []
        for ranking in ranked:
            absent = [i for i in ids if i not in ranking]
            if absent and rng.random() < 0.2:
                gold.append(absent[int(rng.integers(len(absent)))])  # the retriever missed it entirely
            else:
                gold.append(ranking[min(int(rng.geometric(0.4)) - 1, depth - 1)])  # near the top, most often
        cases.extend((ranked, gold, k) for k in (1, 2, 3))
    return cases


def recall_at_k(fn) -> str:
    """Exercise 2 (easy): ``fn(ranked, gold, k)``: recall@k, the share of questions ``i`` whose gold passage id
    ``gold[i]`` is among the first ``k`` ids of ``ranked[i]``, as :func:`helpers.retrieval.recall_at_k` computes it
    (chapter 09, section 6)."""
    from helpers.retrieval import recall_at_k as reference

    cases = _recall_cases()
    return check(
        "Exercise 2 (recall@k)",
        lambda: each([fn(copy.deepcopy(ranked), list(gold), k) for ranked, gold, k in cases]),
        lambda got: all(
            math.isclose(float(g), reference(ranked, gold, k), rel_tol=1e-9, abs_tol=1e-12)
            for g, (ranked, gold, k) in zip(got, cases)
        ),
        "count the questions whose gold id appears in the first k entries of their ranking (a gold id in no ranking "
        "counts as a miss), then divide by the number of questions.",
    )


CHATS = (
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "user", "content": "What is the capital of France?"}], False),
    (
        [
            {"role": "system", "content": "You translate English into French."},
            {"role": "user", "content": "Good morning."},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": "Thank you very much."},
        ],
        True,
    ),
    ([{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "The colour of the sky?"}], False),
    (
        [
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."},
            {"role": "user", "content": "Another one?"},
            {"role": "assistant", "content": "A pear."},
        ],
        False,
    ),
    ([{"role": "user", "content": "Translate these two lines:\nIn the beginning\nGod created"}], True),
)


def chat_template(render_chat, tokenizer) -> str:
    """Exercise 3 (medium): ``render_chat(messages, add_generation_prompt)``: the string SmolLM2's chat template
    renders for ``messages``, equal to ``tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=...)``: ChatML turns, the default system turn when the chat does not begin with one, the
    open assistant turn on request (chapter 09, section 2)."""
    expected = [
        tokenizer.apply_chat_template(copy.deepcopy(chat), tokenize=False, add_generation_prompt=gen) for chat, gen in CHATS
    ]
    return check(
        "Exercise 3 (the chat template by hand)",
        lambda: each([render_chat(copy.deepcopy(chat), gen) for chat, gen in CHATS]),
        lambda got: all(isinstance(g, str) and g == e for g, e in zip(got, expected)),
        "print tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=...) for a short chat, with and "
        "without a system message, and compare it with yours character by character: every line break counts.",
    )


def tiny_top_p(answer) -> str:
    """Exercise 4 (easy, predict then run): sampled at temperature 1.0 with top-p 0.05, five answers to one question
    are the same, the greedy answer: nucleus sampling keeps the smallest set of most likely tokens whose probabilities
    reach 0.05, which is nearly always the most likely token alone (chapter 09, section 7)."""
    return choice(
        "Exercise 4 (a tiny top-p)",
        answer,
        "b",
        "top-p keeps the most likely tokens until their probabilities add up to p; how many tokens does that take when "
        "p is 0.05?",
    )
