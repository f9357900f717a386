"""The checks of chapter 01's exercises (tokens and embeddings); solutions in
``notebooks/solutions/01_tokens_and_embeddings.ipynb``."""

from __future__ import annotations

import regex
import torch

from helpers.embeddings import sinusoidal_positions
from helpers.exercises import check, choice
from helpers.tokenizers import GPT2_PATTERN, BPETokenizer, course_tokenizer, gpt2_encoding


def token_counts(counts, en: str, fr: str) -> str:
    """Exercise 1 (easy): ``counts = {"gpt2": (n_en, n_fr), "course": (n_en, n_fr)}`` for one verse pair, counted
    with GPT-2's tokenizer and the course tokenizer (chapter 01, sections 3.2 and 4)."""
    enc, course = gpt2_encoding(), course_tokenizer()
    expected = {
        "gpt2": (len(enc.encode_ordinary(en)), len(enc.encode_ordinary(fr))),
        "course": (len(course.encode(en)), len(course.encode(fr))),
    }
    return check(
        "Exercise 1 (what a sentence costs)",
        lambda: counts,
        lambda got: {k: tuple(int(n) for n in v) for k, v in got.items()} == expected,
        "count len(enc.encode_ordinary(...)) and len(course.encode(...)) for each language, as (English, French).",
    )


def bytes_bound(answer) -> str:
    """Exercise 2 (easy, predict then run): the most tokens a byte-level BPE can give a text of n bytes (chapter 01,
    section 2.1): n, since every byte is a token of its own and merges only shorten."""
    return choice(
        "Exercise 2 (the longest encoding)",
        answer,
        "a",
        "what does the tokenizer fall back to for a text none of whose pairs were ever merged? Encode a few emoji to see.",
    )


def merge_step(merge_step_fn, text: str, n_steps: int = 10) -> str:
    """Exercise 3 (hard): ``merge_step(word_counts, new_id) -> (pair, new_word_counts)`` run ``n_steps`` times
    gives the merges of ``BPETokenizer.train`` (chapter 01, sections 2.2 and 2.4)."""
    words = {}
    for w in regex.findall(GPT2_PATTERN, text):
        key = tuple(w.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    expected = list(BPETokenizer.train(text, 256 + n_steps).merges)

    def attempt():
        got, state = [], dict(words)
        for new_id in range(256, 256 + n_steps):
            result = merge_step_fn(state, new_id)
            if result is None:
                return None
            pair, state = result
            got.append(tuple(pair))
        return got

    return check(
        "Exercise 3 (one training step of BPE)",
        attempt,
        lambda got: got == expected,
        "count pairs with zip(word, word[1:]) weighted by the word's count, pick the most frequent (ties: the smallest "
        "pair), then merge it in every word with merge_pair(list(word), pair, new_id).",
    )


def positions(my_positions) -> str:
    """Exercise 4 (medium): ``my_positions(n_positions, dim)`` equals :func:`helpers.embeddings.sinusoidal_positions`
    (chapter 01, section 5.2)."""
    cases = [(20, 8), (7, 16)]
    return check(
        "Exercise 4 (sinusoidal positions)",
        lambda: None if my_positions(*cases[0]) is None else [my_positions(*c) for c in cases],
        lambda got: all(
            tuple(g.shape) == c and torch.allclose(g.float(), sinusoidal_positions(*c), atol=1e-5) for g, c in zip(got, cases)
        ),
        "column 2i holds sin(p / 10000^(2i/dim)) and column 2i + 1 the cos of the same angle; p runs down the rows.",
    )
