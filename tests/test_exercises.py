"""Every exercise check passes on its solution (from notebooks/solutions/), fails on a plausible wrong answer, says
"not attempted" to the untouched stub, and never prints the expected answer."""

from pathlib import Path

import nbformat
import pytest
import torch

from helpers.exercises import FAILED, NOT_ATTEMPTED, PASSED, ch03, check
from helpers.model import GPT, GPTConfig

SOLUTIONS = Path(__file__).resolve().parent.parent / "notebooks" / "solutions"


def solutions(name: str) -> dict:
    """The names defined by the cells tagged 'solution' of a solutions notebook."""
    nb = nbformat.read(SOLUTIONS / name, as_version=4)
    namespace = {"torch": torch, "GPT": GPT, "GPTConfig": GPTConfig}
    for cell in nb.cells:
        if "solution" in cell.metadata.get("tags", []):
            exec(compile(cell.source, f"{name} (solution cell)", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def ch03_solutions():
    return solutions("03_gpt_model.ipynb")


def test_check_reports_three_states_and_survives_errors(capsys):
    assert check("t", lambda: 3, lambda got: got == 3, "hint") == PASSED
    assert check("t", lambda: 4, lambda got: got == 3, "think again") == FAILED
    assert "think again" in capsys.readouterr().out
    assert check("t", lambda: None, lambda got: True, "hint") == NOT_ATTEMPTED
    assert check("t", lambda: ..., lambda got: True, "hint") == NOT_ATTEMPTED
    assert check("t", lambda: 1 / 0, lambda got: True, "hint") == FAILED
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert check("t", lambda: "x", lambda got: got + 1 > 0, "hint") == FAILED  # an answer that cannot be judged


def _stub(*args):
    return None


CH03 = {
    "params_no_bias": (
        "n_params_no_bias",
        # With the biases still counted (section 5's formula): the plausible slip.
        lambda c: (
            c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * (12 * c.n_embd**2 + 13 * c.n_embd) + 2 * c.n_embd
        ),
    ),
    "longer_context": ("prediction", "a"),
    # Comparing every position, the changed one included: a causal model then seems to leak.
    "leak": ("leak", lambda model, idx, t: (model(idx)[0] - model(idx.roll(1, dims=1))[0]).abs().max().item()),
    # Right padding with an all-ones mask: the chapter's original stub.
    "left_pad": (
        "left_pad",
        lambda seqs, pad_id: (
            torch.tensor([s + [pad_id] * (max(map(len, seqs)) - len(s)) for s in seqs]),
            torch.ones(len(seqs), max(map(len, seqs)), dtype=torch.long),
        ),
    ),
}


@pytest.mark.parametrize("exercise", sorted(CH03))
def test_ch03_checks_pass_on_the_solution_and_fail_on_a_wrong_answer(exercise, ch03_solutions, capsys):
    judge = getattr(ch03, exercise)
    name, wrong = CH03[exercise]
    assert judge(ch03_solutions[name]) == PASSED
    assert judge(wrong) == FAILED
    assert judge(... if name == "prediction" else _stub) == NOT_ATTEMPTED
    printed = capsys.readouterr().out
    assert printed.count("✓") == 1 and printed.count("✗") == 1 and "not attempted" in printed


def test_ch03_failures_do_not_print_the_answer(ch03_solutions, capsys):
    ch03.params_no_bias(CH03["params_no_bias"][1])
    ch03.longer_context("a")
    printed = capsys.readouterr().out
    counted = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=1, n_head=2, n_embd=8, bias=False)).num_params(False)
    assert str(counted) not in printed and f"{counted:,}" not in printed
    assert '"b"' not in printed and "(b)" not in printed
