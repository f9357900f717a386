"""Exercise checks: each prints one line, a ✓, a ✗ with a hint, or "not attempted", and never the expected answer.

A check runs the learner's code on cases it builds itself and judges the result with the course's own code. It never
raises: an error in the learner's code is reported as a ✗ with the error, so "Run All" goes through a notebook whose
exercises are unfinished. Each chapter's checks live in ``helpers.exercises.chNN``; the solutions are in
``notebooks/solutions/``, and ``tests/test_exercises.py`` proves that every check passes on its solution and fails
on a plausible wrong answer. Used from chapter 03 on (its exercises).
"""

from __future__ import annotations

from collections.abc import Callable

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"


def check(title: str, attempt: Callable[[], object], is_right: Callable[[object], bool], hint: str) -> str:
    """Judge one exercise and print one line; returns ``PASSED``, ``FAILED`` or ``NOT_ATTEMPTED``.

    ``attempt()`` runs the learner's code and returns its answer: None (what a function whose body is still ``...``
    returns), ``...`` itself (``answer = ...``) or a ``NotImplementedError`` means not attempted.
    ``is_right(answer)`` says whether the answer is right; an answer it cannot even judge (wrong type or shape) is
    wrong. ``hint`` is printed with a ✗ and must not hold the answer.
    Chapter 03 on (the exercises of each chapter).
    """
    try:
        answer = attempt()
    except NotImplementedError:
        answer = None
    except Exception as error:  # the learner's code failed: say how, and go on
        print(f"✗ {title}: your code raised {type(error).__name__}: {error}. Hint: {hint}")
        return FAILED
    if answer is None or answer is Ellipsis:
        print(f"· {title}: not attempted yet (replace the `...` with your code, then run this cell again).")
        return NOT_ATTEMPTED
    try:
        right = bool(is_right(answer))
    except Exception:
        right = False
    print(f"✓ {title}" if right else f"✗ {title}: not yet. Hint: {hint}")
    return PASSED if right else FAILED


def choice(title: str, answer, right: str, hint: str) -> str:
    """Judge a multiple-choice answer (a "predict, then run" question): the letter ``right``, in any case or spacing.
    Chapter 01 on (one such question per chapter)."""
    return check(title, lambda: answer, lambda got: str(got).strip().lower() == right, hint)


def each(values: list):
    """``values``, or None if any of them is None or ``...`` (one case not attempted means the exercise is not).
    Chapter 03 on (the exercises of each chapter)."""
    return None if any(v is None or v is Ellipsis for v in values) else values
