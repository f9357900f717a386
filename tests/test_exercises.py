"""Every exercise check passes on its solution (run from notebooks/solutions/), fails on a plausible wrong answer,
says "not attempted" to the untouched stub, and never prints the expected answer."""

import math
from functools import cache
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from helpers.exercises import FAILED, NOT_ATTEMPTED, PASSED, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, check
from helpers.model import GPT, GPTConfig

SOLUTIONS = Path(__file__).resolve().parent.parent / "notebooks" / "solutions"


@cache
def solved(name: str) -> dict:
    """The namespace of a solutions notebook run up to its checks: every code cell but the setup and the asserts."""
    nb = nbformat.read(SOLUTIONS / name, as_version=4)
    namespace = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and "setup" not in cell.metadata.get("tags", []) and not cell.source.startswith("assert"):
            exec(compile(cell.source, f"solutions/{name}", "exec"), namespace)
    return namespace


def stub(*args):
    """A function whose body is still ``...``."""


def test_check_reports_three_states_and_survives_errors(capsys):
    assert check("t", lambda: 3, lambda got: got == 3, "hint") == PASSED
    assert check("t", lambda: 4, lambda got: got == 3, "think again") == FAILED
    assert "think again" in capsys.readouterr().out
    assert check("t", lambda: None, lambda got: True, "hint") == NOT_ATTEMPTED
    assert check("t", lambda: ..., lambda got: True, "hint") == NOT_ATTEMPTED
    assert check("t", lambda: 1 / 0, lambda got: True, "hint") == FAILED
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert check("t", lambda: "x", lambda got: got + 1 > 0, "hint") == FAILED  # an answer that cannot be judged


CH01, CH02, CH03 = "01_tokens_and_embeddings.ipynb", "02_self_attention.ipynb", "03_gpt_model.ipynb"
CH04, CH05, CH06 = "04_pretraining.ipynb", "05_masked_lm.ipynb", "06_translation_finetuning.ipynb"
CH07, CH08 = "07_peft.ipynb", "08_classification_and_recommendation.ipynb"
CH09 = "09_prompting_and_chat.ipynb"
TEXT = lambda ns: "\n".join(ns["train_lines"][:300])  # noqa: E731


def _unweighted_merge_step(word_counts, new_id):  # counts each distinct word once, forgetting how often it occurs
    ns = solved(CH01)
    return ns["merge_step"](dict.fromkeys(word_counts, 1), new_id)[0], ns["merge_step"](word_counts, new_id)[1]


def _swapped_positions(n, dim):  # cos in the even columns, sin in the odd ones
    return solved(CH01)["my_positions"](n, dim)[:, [i ^ 1 for i in range(dim)]]


def _unscaled_query(ns):  # the scores not divided by sqrt(d)
    import math

    exps = [math.exp(sum(a * b for a, b in zip(ns["q_ex"], k))) for k in ns["keys_ex"]]
    w = [e / sum(exps) for e in exps]
    return w, [sum(wj * v[i] for wj, v in zip(w, ns["values_ex"])) for i in range(2)]


def _bert_masking(ns):  # BERT's 80/10/10 rule: not every selected token becomes the mask
    tok = ns["tok"]
    return lambda ids, p, g: ns["mask_tokens"](ids, tok.mask_id, tok.vocab_size, p, g, tok.special_ids)


def _least_similar(ns):
    return lambda q, emb, k: torch.topk(-(emb @ ns["minilm_embed"]([q])[0]), k).indices.tolist()


@torch.no_grad()
def _left_side_only(model, blanks, n_candidates=5):
    device = next(model.parameters()).device
    return [int(model(torch.tensor([b.ids[: b.pos]], device=device))[0][0, -1].argmax()) for b in blanks]


def _entropy_in_bits(logits, temperature):
    p = torch.softmax(logits / temperature, -1)
    return -(p * torch.log2(p.clamp_min(1e-30))).sum()


def _nucleus_one_short(probs, p):  # stops before the token that reaches p
    sorted_probs, order = torch.sort(probs, descending=True)
    return set(order[: max(int((sorted_probs.cumsum(0) < p).sum()), 1)].tolist())


def _unclipped_bleu(hypotheses, references):  # counts a repeated n-gram every time, however often the reference has it
    import math
    from collections import Counter

    matches, totals, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for hyp, ref in zip(hypotheses, references):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            r_grams = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(1 for i in range(len(h) - n + 1) if tuple(h[i : i + n]) in r_grams)
            totals[n - 1] += max(len(h) - n + 1, 0)
    if min(matches) == 0:
        return 0.0
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


def _prefix_without_permute(prefix, config, layer):  # the right shape, read in the wrong order
    P, hd = prefix.size(0), config.n_embd // config.n_head
    keys, values = prefix.view(P, config.n_layer, 2, config.n_embd)[:, layer].unbind(1)
    return keys.reshape(config.n_head, P, hd), values.reshape(config.n_head, P, hd)


def _naive_calibrate(logprobs, content_free):  # softmax by np.exp without subtracting the maximum: 0 / 0 near -1000
    p, free = np.exp(logprobs), np.exp(content_free)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.argmax(np.log(p / p.sum(1, keepdims=True)) - np.log(free / free.sum()), axis=1)


def _calibrated_probabilities(logprobs, content_free):  # the right scores, but not reduced to label indices
    scores = logprobs - content_free
    p = np.exp(scores - scores.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _chatml_without_default_system(messages, add_generation_prompt=True):  # ChatML, but no default system turn
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _one_query(ns, weights, output):
    return ch02.one_query(weights, output, ns["q_ex"], ns["keys_ex"], ns["values_ex"])


def _prediction(notebook, judge, wrong):
    """The cases of a "predict, then run" question: the solution's letter, a wrong one, none yet."""
    return notebook, lambda ns: judge(ns["prediction"]), lambda ns: judge(wrong), lambda ns: judge(...)


#: exercise -> (solutions notebook, the check on the solution, on a wrong answer, on the stub)
CASES = {
    "01.1 token counts": (
        CH01,
        lambda ns: ch01.token_counts(ns["counts"], ns["en"], ns["fr"]),
        lambda ns: ch01.token_counts({k: v[::-1] for k, v in ns["counts"].items()}, ns["en"], ns["fr"]),  # FR, EN
        lambda ns: ch01.token_counts(..., ns["en"], ns["fr"]),
    ),
    "01.2 longest encoding": _prediction(CH01, ch01.bytes_bound, "c"),
    "01.3 merge step": (
        CH01,
        lambda ns: ch01.merge_step(ns["merge_step"], TEXT(ns)),
        lambda ns: ch01.merge_step(_unweighted_merge_step, TEXT(ns)),
        lambda ns: ch01.merge_step(stub, TEXT(ns)),
    ),
    "01.4 positions": (
        CH01,
        lambda ns: ch01.positions(ns["my_positions"]),
        lambda ns: ch01.positions(_swapped_positions),
        lambda ns: ch01.positions(stub),
    ),
    "02.1 causal mask": (
        CH02,
        lambda ns: ch02.causal(ns["my_causal_mask"]),
        lambda ns: ch02.causal(lambda T: torch.arange(T)[:, None] <= torch.arange(T)[None, :]),  # the upper triangle
        lambda ns: ch02.causal(stub),
    ),
    "02.2 sharper keys": _prediction(CH02, ch02.sharper_keys, "b"),
    "02.3 one query": (
        CH02,
        lambda ns: _one_query(ns, ns["my_weights"], ns["my_output"]),
        lambda ns: _one_query(ns, *_unscaled_query(ns)),
        lambda ns: _one_query(ns, ..., ...),
    ),
    "02.4 one head": (
        CH02,
        lambda ns: ch02.one_head(ns["my_head_weights"], ns["mha"], ns["xh"], ns["head"]),
        lambda ns: ch02.one_head(torch.softmax(ns["scores"], -1).detach(), ns["mha"], ns["xh"], ns["head"]),  # no mask
        lambda ns: ch02.one_head(..., ns["mha"], ns["xh"], ns["head"]),
    ),
    "03.1 parameters without biases": (
        CH03,
        lambda ns: ch03.params_no_bias(ns["n_params_no_bias"]),
        # With the biases still counted (section 5's formula).
        lambda ns: ch03.params_no_bias(
            lambda c: (
                c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * (12 * c.n_embd**2 + 13 * c.n_embd) + 2 * c.n_embd
            )
        ),
        lambda ns: ch03.params_no_bias(stub),
    ),
    "03.2 longer context": _prediction(CH03, ch03.longer_context, "a"),
    "03.3 leak": (
        CH03,
        lambda ns: ch03.leak(ns["leak"]),
        # Comparing every position, the changed one included: a causal model then seems to leak.
        lambda ns: ch03.leak(lambda model, idx, t: (model(idx)[0] - model(idx.roll(1, dims=1))[0]).abs().max().item()),
        lambda ns: ch03.leak(stub),
    ),
    "03.4 left padding": (
        CH03,
        lambda ns: ch03.left_pad(ns["left_pad"]),
        lambda ns: ch03.left_pad(  # right padding with an all-ones mask
            lambda seqs, pad_id: (
                torch.tensor([s + [pad_id] * (max(map(len, seqs)) - len(s)) for s in seqs]),
                torch.ones(len(seqs), max(map(len, seqs)), dtype=torch.long),
            )
        ),
        lambda ns: ch03.left_pad(stub),
    ),
    "05.1 masked share": _prediction(CH05, ch05.masked_share, "a"),
    "05.2 masks only": (
        CH05,
        lambda ns: ch05.mask_only(ns["mask_only"], ns["train_ids"][:50_000], ns["tok"]),
        lambda ns: ch05.mask_only(_bert_masking(ns), ns["train_ids"][:50_000], ns["tok"]),
        lambda ns: ch05.mask_only(stub, ns["train_ids"][:50_000], ns["tok"]),
    ),
    "05.3 search": (
        CH05,
        lambda ns: ch05.search(ns["search"], ns["en_verses"], ns["en_emb"]),
        lambda ns: ch05.search(_least_similar(ns), ns["en_verses"], ns["en_emb"]),
        lambda ns: ch05.search(stub, ns["en_verses"], ns["en_emb"]),
    ),
    "05.4 rescoring": (
        CH05,
        lambda ns: ch05.rescore(ns["rescore_choices"], ns["gpt04"], ns["blanks"]["en"][:12]),
        lambda ns: ch05.rescore(_left_side_only, ns["gpt04"], ns["blanks"]["en"][:12]),
        lambda ns: ch05.rescore(stub, ns["gpt04"], ns["blanks"]["en"][:12]),
    ),
    "04.1 perplexity": _prediction(CH04, ch04.perplexity, "b"),
    "04.2 entropy": (
        CH04,
        lambda ns: ch04.entropy(ns["entropy_at"], ns["logits"][0]),
        lambda ns: ch04.entropy(_entropy_in_bits, ns["logits"][0]),
        lambda ns: ch04.entropy(stub, ns["logits"][0]),
    ),
    "04.3 nucleus": (
        CH04,
        lambda ns: ch04.nucleus(ns["nucleus"], ns["logits"][0]),
        lambda ns: ch04.nucleus(_nucleus_one_short, ns["logits"][0]),
        lambda ns: ch04.nucleus(stub, ns["logits"][0]),
    ),
    "04.4 surprising verse": (
        CH04,
        lambda ns: ch04.surprising(ns["surprising"], ns["model"], ns["tok"], ns["candidates"]),
        # The verse of the largest total loss: long verses win, whatever their loss per token.
        lambda ns: ch04.surprising(
            max(ns["candidates"][:60], key=lambda t: ns["verse_loss"](t) * len(ns["tok"].encode(t))),
            ns["model"],
            ns["tok"],
            ns["candidates"][:60],
        ),
        lambda ns: ch04.surprising(..., ns["model"], ns["tok"], ns["candidates"]),
    ),
    "06.1 label mask": (
        CH06,
        lambda ns: ch06.label_mask(ns["next_is_target"], ns["train"].examples[:20], ns["tok"].pad_id),
        # One position late: the label of the target token itself instead of the position before it.
        lambda ns: ch06.label_mask(
            lambda ids, start: [t >= start for t in range(len(ids) - 1)], ns["train"].examples[:20], ns["tok"].pad_id
        ),
        lambda ns: ch06.label_mask(stub, ns["train"].examples[:20], ns["tok"].pad_id),
    ),
    "06.2 half empty": _prediction(CH06, ch06.half_empty, "a"),
    "06.3 length penalty": (
        CH06,
        lambda ns: ch06.length_penalty(ns["choose"]),
        lambda ns: ch06.length_penalty(lambda short, long, lp: "short" if sum(short) > sum(long) else "long"),  # penalty ignored
        lambda ns: ch06.length_penalty(stub),
    ),
    "06.4 BLEU": (
        CH06,
        lambda ns: ch06.corpus_bleu(ns["my_bleu"], ns["refs"]),
        lambda ns: ch06.corpus_bleu(_unclipped_bleu, ns["refs"]),
        lambda ns: ch06.corpus_bleu(stub, ns["refs"]),
    ),
    "07.1 LoRA count": (
        CH07,
        lambda ns: ch07.lora_count(ns["lora_parameters"]),
        lambda ns: ch07.lora_count(lambda n_in, n_out, r: r * n_in * n_out),  # a full matrix of rank r
        lambda ns: ch07.lora_count(stub),
    ),
    "07.2 both zero": _prediction(CH07, ch07.both_zero, "a"),
    "07.3 merge": (
        CH07,
        lambda ns: ch07.merged_weight(ns["merge"]),
        lambda ns: ch07.merged_weight(lambda w, a, b, alpha, r: w + b @ a),  # the scaling alpha / r forgotten
        lambda ns: ch07.merged_weight(stub),
    ),
    "07.4 prefix layout": (
        CH07,
        lambda ns: ch07.prefix_layout(ns["layer_keys_values"]),
        lambda ns: ch07.prefix_layout(_prefix_without_permute),
        lambda ns: ch07.prefix_layout(stub),
    ),
    "08.1 majority F1": _prediction(CH08, ch08.majority_f1, "a"),
    "08.2 calibration error": (
        CH08,
        lambda ns: ch08.calibration_error(ns["expected_calibration_error"]),
        lambda ns: ch08.calibration_error(lambda y, p, n_bins: float(np.mean(np.abs(np.asarray(y) - p)))),  # no bins
        lambda ns: ch08.calibration_error(stub),
    ),
    "08.3 periods to alarm": (
        CH08,
        lambda ns: ch08.periods_to_alarm(ns["periods"]),
        lambda ns: ch08.periods_to_alarm(lambda d, k, h: math.ceil(h / (d - k))),  # S = h taken for an alarm
        lambda ns: ch08.periods_to_alarm(stub),
    ),
    "08.4 graded NDCG": (
        CH08,
        lambda ns: ch08.graded_ndcg(ns["ndcg_graded"]),
        lambda ns: ch08.graded_ndcg(lambda g, s, k: ns["ndcg_graded"]((np.asarray(g) > 0).astype(float), s, k)),  # binary
        lambda ns: ch08.graded_ndcg(stub),
    ),
    "09.1 calibration": (
        CH09,
        lambda ns: ch09.calibration(ns["calibrate"]),
        lambda ns: ch09.calibration(lambda logprobs, content_free: np.argmax(logprobs, axis=1)),  # not calibrated
        lambda ns: ch09.calibration(stub),
    ),
    "09.2 recall@k": (
        CH09,
        lambda ns: ch09.recall_at_k(ns["recall_at_k_mine"]),
        lambda ns: ch09.recall_at_k(lambda ranked, gold, k: sum(g in r[: k + 1] for r, g in zip(ranked, gold)) / len(gold)),
        lambda ns: ch09.recall_at_k(stub),
    ),
    "09.3 chat template": (
        CH09,
        lambda ns: ch09.chat_template(ns["render_chat"], ns["tok"]),
        lambda ns: ch09.chat_template(_chatml_without_default_system, ns["tok"]),
        lambda ns: ch09.chat_template(stub, ns["tok"]),
    ),
    "09.4 tiny top-p": _prediction(CH09, ch09.tiny_top_p, "a"),
}

#: chapter 09: more wrong answers that must fail -> the check on one, given the solutions' namespace
MORE_WRONG_09 = {
    "09.1 naive exp": lambda ns: ch09.calibration(_naive_calibrate),
    "09.1 probabilities": lambda ns: ch09.calibration(_calibrated_probabilities),
    "09.2 count": lambda ns: ch09.recall_at_k(lambda ranked, gold, k: sum(g in r[:k] for r, g in zip(ranked, gold))),
    "09.3 no generation prompt": lambda ns: ch09.chat_template(lambda m, g=True: ns["render_chat"](m, False), ns["tok"]),
    "09.3 no last line break": lambda ns: ch09.chat_template(lambda m, g=True: ns["render_chat"](m, g)[:-1], ns["tok"]),
}


@pytest.mark.parametrize("exercise", sorted(CASES))
def test_check_passes_on_the_solution_fails_on_a_wrong_answer_and_waits_for_an_attempt(exercise, capsys):
    notebook, on_solution, on_wrong, on_stub = CASES[exercise]
    ns = solved(notebook)
    capsys.readouterr()
    assert on_solution(ns) == PASSED
    assert on_wrong(ns) == FAILED
    assert on_stub(ns) == NOT_ATTEMPTED
    printed = capsys.readouterr().out
    assert printed.count("✓") == 1 and printed.count("✗") == 1 and "not attempted" in printed


@pytest.mark.parametrize("wrong", sorted(MORE_WRONG_09))
def test_chapter_09_checks_fail_on_more_wrong_answers(wrong, capsys):
    ns = solved(CH09)
    capsys.readouterr()
    assert MORE_WRONG_09[wrong](ns) == FAILED
    assert "✗" in capsys.readouterr().out


def test_every_check_of_a_converted_chapter_is_tested():
    tested = {(exercise[:2], int(exercise[3])) for exercise in CASES}
    modules = (ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09)
    for chapter, module in ((m.__name__[-2:], m) for m in modules):
        checks = [f for name, f in vars(module).items() if callable(f) and getattr(f, "__module__", "") == module.__name__]
        numbers = {int(f.__doc__.split("Exercise ")[1].split()[0]) for f in checks if not f.__name__.startswith("_")}
        assert {(chapter, n) for n in numbers} <= tested, f"chapter {chapter}: untested checks"


def test_failures_do_not_print_the_answer(capsys):
    for exercise in (
        "03.1 parameters without biases",
        "03.2 longer context",
        "01.2 longest encoding",
        "02.2 sharper keys",
        "04.1 perplexity",
        "06.2 half empty",
        "06.3 length penalty",
        "07.1 LoRA count",
        "07.2 both zero",
        "07.3 merge",
        "08.1 majority F1",
        "08.2 calibration error",
        "08.3 periods to alarm",
        "09.4 tiny top-p",
        "09.1 calibration",
        "09.2 recall@k",
    ):
        assert CASES[exercise][2]({}) == FAILED  # these wrong answers need nothing from the solutions
    printed = capsys.readouterr().out
    counted = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=1, n_head=2, n_embd=8, bias=False)).num_params(False)
    assert str(counted) not in printed and f"{counted:,}" not in printed
    assert not any(f"({letter})" in printed or f'"{letter}"' in printed for letter in "abcd")


def test_checks_leave_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ch03.leak(stub)
    ch03.left_pad(stub)
    ch07.lora_count(lambda n_in, n_out, r: 0)
    ch07.merged_weight(lambda w, a, b, alpha, r: w)
    ch07.prefix_layout(_prefix_without_permute)
    np.random.seed(123)
    expected_np = np.random.rand(3)
    np.random.seed(123)
    ch09.calibration(stub)
    ch09.calibration(_naive_calibrate)
    ch09.recall_at_k(stub)
    assert torch.equal(torch.rand(3), expected)
    assert np.array_equal(np.random.rand(3), expected_np)
