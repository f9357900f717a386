"""helpers.decode.beam_search: greedy at width 1, never worse than greedy, exact when nothing is pruned, k live beams
when EOS crowds the candidates, the same tokens as transformers, EOS and length normalisation, the KV cache reordered
correctly on a real GPT, and clear errors for bad arguments and non-finite model outputs."""

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from helpers.decode import Hypothesis, beam_search, normalised_score
from helpers.hf import to_hf
from helpers.model import GPT, GPTConfig

EOS = 0


pytestmark = pytest.mark.usefixtures("one_thread")


class Bigram(nn.Module):
    """A toy language model whose next-token distribution depends only on the last token: ``table[a, b]`` is
    log p(b | a). Log-probabilities of whole sequences are then easy to compute by hand."""

    def __init__(self, probs):
        super().__init__()
        probs = torch.as_tensor(probs, dtype=torch.float32)
        self.table = nn.Parameter(probs.log(), requires_grad=False)
        self.config = GPTConfig(vocab_size=probs.shape[0], block_size=64, n_layer=1, n_head=1, n_embd=1)

    def forward(self, idx, targets=None, attention_mask=None, cache=None):
        return self.table[idx], None


def log_prob(model, prompt, tokens, finished):
    """Total log-probability of ``tokens`` (+ EOS if finished) after ``prompt``, recomputed without any cache."""
    seq = list(prompt) + list(tokens) + ([EOS] if finished else [])
    logits, _ = model(torch.tensor([seq]))
    logp = torch.log_softmax(logits[0].float(), dim=-1)
    return sum(logp[t - 1, seq[t]].item() for t in range(len(prompt), len(seq)))


def greedy(model, prompt, max_new_tokens):
    """Greedy decoding written out: (tokens without EOS, finished)."""
    seq = list(prompt)
    for _ in range(max_new_tokens):
        logits, _ = model(torch.tensor([seq]))
        nxt = int(logits[0, -1].argmax())
        if nxt == EOS:
            return seq[len(prompt) :], True
        seq.append(nxt)
    return seq[len(prompt) :], False


def score(model, prompt, tokens, finished, length_penalty):
    return normalised_score(log_prob(model, prompt, tokens, finished), len(tokens) + finished, length_penalty)


def random_bigram(V, seed):
    g = torch.Generator().manual_seed(seed)
    return Bigram(torch.softmax(2.0 * torch.randn(V, V, generator=g), dim=-1))


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=48, n_layer=2, n_head=2, n_embd=32)).eval()


def test_width_one_is_greedy_token_for_token(gpt):
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    hyps = beam_search(gpt, prompts, beam_width=1, max_new_tokens=12, eos_id=EOS)
    for p, h in zip(prompts, hyps):
        out = gpt.generate(torch.tensor([p]), 12, temperature=0.0, eos_id=EOS)[0, len(p) :].tolist()
        assert h.tokens == (out[: out.index(EOS)] if EOS in out else out)
        assert h.finished == (EOS in out)
    for seed in range(5):
        toy = random_bigram(6, seed)
        h = beam_search(toy, [[3]], beam_width=1, max_new_tokens=8, eos_id=EOS, length_penalty=1.0)[0]
        assert (h.tokens, h.finished) == greedy(toy, [3], 8)


def test_greedy_trap_is_escaped():
    # From token 1: greedy takes 2 (p=0.6), after which EOS has p=0.3; token 3 (p=0.4) ends with EOS at p=0.95.
    probs = torch.full((4, 4), 0.05)
    probs[1] = torch.tensor([0.0, 0.0, 0.6, 0.4])
    probs[2] = torch.tensor([0.3, 0.25, 0.2, 0.25])
    probs[3] = torch.tensor([0.95, 0.0, 0.05, 0.0])
    probs = probs / probs.sum(-1, keepdim=True)
    toy = Bigram(probs)
    g_tokens, g_fin = greedy(toy, [1], 6)
    h = beam_search(toy, [[1]], beam_width=2, max_new_tokens=6, eos_id=EOS, length_penalty=1.0)[0]
    assert g_tokens == [2] and g_fin
    assert h.tokens == [3] and h.finished
    assert h.score > score(toy, [1], g_tokens, g_fin, 1.0)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_never_scores_worse_than_greedy(length_penalty, gpt):
    models = [(random_bigram(8, s), [s % 7 + 1]) for s in range(8)] + [(gpt, [5, 9, 2, 17])]
    for model, prompt in models:
        g = score(model, prompt, *greedy(model, prompt, 10), length_penalty)
        for width in (2, 4):
            h = beam_search(model, [prompt], beam_width=width, max_new_tokens=10, eos_id=EOS, length_penalty=length_penalty)[0]
            assert h.score == pytest.approx(score(model, prompt, h.tokens, h.finished, length_penalty), abs=1e-4)
            assert h.score >= g - 1e-5


def exhaustive_best(model, prompt, n_new, penalties):
    """For each length penalty, the best (tokens, finished) over every continuation of at most ``n_new`` tokens."""
    words = range(1, model.config.vocab_size)  # every token but EOS
    candidates = [(list(seq), True) for n in range(n_new) for seq in itertools.product(words, repeat=n)]
    candidates += [(list(seq), False) for seq in itertools.product(words, repeat=n_new)]
    scored = [(t, f, log_prob(model, prompt, t, f)) for t, f in candidates]
    return [max(scored, key=lambda c: normalised_score(c[2], len(c[0]) + c[1], lp))[:2] for lp in penalties]


def test_eos_crowding_still_leaves_k_live_beams():
    # Width 2 from token 1: beams [2] and [3]. The next step ranks [2] EOS (0.25), [2, 1] (0.225), [3] EOS (0.216),
    # [3, 4] (0.2115): two of the three best are EOS, so keeping k + 1 = 3 candidates left [2, 1] as the only live
    # beam, while [3, 4] EOS (4 -> EOS has p=0.97) is the best continuation by mean log-prob (-0.53; k + 1: -0.69).
    probs = torch.tensor(
        [
            [0.2, 0.2, 0.2, 0.2, 0.2],
            [0.02, 0.015, 0.5, 0.45, 0.015],
            [0.5, 0.45, 0.02, 0.02, 0.01],
            [0.48, 0.01, 0.02, 0.02, 0.47],
            [0.97, 0.01, 0.01, 0.005, 0.005],
        ]
    )
    toy = Bigram(probs)
    penalties = (1.0, 2.0)
    for lp, best in zip(penalties, exhaustive_best(toy, [1], 4, penalties)):
        h = beam_search(toy, [[1]], beam_width=2, max_new_tokens=4, eos_id=EOS, length_penalty=lp)[0]
        assert (h.tokens, h.finished) == ([3, 4], True) == best
        assert h.score == pytest.approx(math.log(0.45 * 0.47 * 0.97) / 3**lp, abs=1e-5)


def eos_heavy_bigram(V, seed):
    probs = random_bigram(V, seed).table.exp()
    probs[:, EOS] += 0.5  # EOS is a likely candidate after every token
    return Bigram(probs / probs.sum(-1, keepdim=True))


@pytest.mark.parametrize("V, n_new", [(3, 4), (4, 4), (5, 3)])
def test_wide_enough_beam_is_exhaustive_search(V, n_new):
    # Width V * (V-1)^(n_new-1) holds every candidate of every step, and more than there are EOS-ended sequences, so
    # nothing is pruned and the early-stopping rule never fires: beam search must find the exhaustive optimum.
    width = V * (V - 1) ** (n_new - 1)
    prompt = [1]
    penalties = (0.0, 1.0, 2.0)
    for toy in (random_bigram(V, seed=3), random_bigram(V, seed=4), eos_heavy_bigram(V, seed=5)):
        for lp, best in zip(penalties, exhaustive_best(toy, prompt, n_new, penalties)):
            h = beam_search(toy, [prompt], beam_width=width, max_new_tokens=n_new, eos_id=EOS, length_penalty=lp)[0]
            assert (h.tokens, h.finished) == best
            assert h.score == pytest.approx(score(toy, prompt, *best, lp), abs=1e-5)


def tiny_gpt(seed, eos_heavy):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(10.0)  # peaked next-token distributions: no near-ties to break by rounding
        if eos_heavy:  # a large context-free part in the EOS logit: the final LayerNorm's bias along EOS's (tied) row
            u = nn.functional.normalize(torch.randn(16), dim=0)
            model.transformer.ln_f.bias.copy_(u)
            model.transformer.wte.weight[EOS] = 2.0 * u
    return model


def test_matches_transformers_beam_search():
    """Same tokens and score as ``GPT2LMHeadModel.generate(num_beams=k, do_sample=False, early_stopping=False,
    length_penalty=lp, num_return_sequences=1)`` on the exported model, for length penalties 0, 1 and 2.

    Both rank candidates by total log-prob, keep 2k of them, finish EOS candidates among the k best, divide a
    finished score by (new tokens incl. EOS) ** lp (the installed transformers subtracts the prompt length; older
    releases did not, which only matters for lp != 0), and stop once k are finished and the best live beam, divided
    by its current length ** lp, does not beat the worst of them. In the EOS-heavy models EOS crowds the top
    candidates: there keeping only k + 1 of them lost live beams and returned other tokens than transformers."""
    cases = [(tiny_gpt(0, eos_heavy=False), (2, 4), (0.0, 1.0))]  # (model, beam widths, length penalties)
    cases += [(tiny_gpt(seed, eos_heavy=True), (2, 3), (0.0, 1.0, 2.0)) for seed in (0, 3)]
    n_new, n_finished = 12, 0
    for model, widths, penalties in cases:
        hf = to_hf(model).eval()
        for prompt, k, lp in itertools.product(([1], [39, 4, 5]), widths, penalties):
            ids = torch.tensor([prompt])
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                num_beams=k,
                do_sample=False,
                length_penalty=lp,
                early_stopping=False,
                num_return_sequences=1,
                eos_token_id=EOS,
                pad_token_id=EOS,
                max_new_tokens=n_new,
                output_scores=True,
                return_dict_in_generate=True,
            )
            new = out.sequences[0, len(prompt) :].tolist()
            theirs = (new[: new.index(EOS)], True) if EOS in new else (new, False)
            h = beam_search(model, [prompt], beam_width=k, max_new_tokens=n_new, eos_id=EOS, length_penalty=lp)[0]
            assert (h.tokens, h.finished) == theirs, (prompt, k, lp)
            assert h.score == pytest.approx(out.sequences_scores[0].item(), abs=1e-4)
            n_finished += h.finished
    assert n_finished >= 5  # the EOS-heavy models do end searches with EOS


def test_eos_stops_a_beam_and_none_runs_to_the_limit():
    probs = torch.full((5, 5), 0.1)
    probs[1] = torch.tensor([0.1, 0.0, 0.8, 0.05, 0.05])  # 1 -> 2 -> EOS
    probs[2] = torch.tensor([0.9, 0.0, 0.0, 0.05, 0.05])
    toy = Bigram(probs / probs.sum(-1, keepdim=True))
    h = beam_search(toy, [[1]], beam_width=3, max_new_tokens=20, eos_id=EOS)[0]
    assert h.finished and h.tokens == [2]
    h = beam_search(toy, [[1]], beam_width=3, max_new_tokens=20, eos_id=None)[0]
    assert not h.finished and len(h.tokens) == 20


def test_length_penalty_trades_short_for_long():
    # Short: EOS at once (p=0.5, log -0.69). Long: 2, 3, EOS (p=0.5 * 0.99 * 0.99, total -0.71, mean -0.24).
    probs = torch.full((4, 4), 1e-4)
    probs[1] = torch.tensor([0.5, 0.0, 0.5, 0.0])
    probs[2] = torch.tensor([0.005, 0.005, 0.0, 0.99])
    probs[3] = torch.tensor([0.99, 0.005, 0.005, 0.0])
    toy = Bigram(probs / probs.sum(-1, keepdim=True))
    short = beam_search(toy, [[1]], beam_width=2, max_new_tokens=6, eos_id=EOS, length_penalty=0.0)[0]
    long = beam_search(toy, [[1]], beam_width=2, max_new_tokens=6, eos_id=EOS, length_penalty=1.0)[0]
    assert short.tokens == [] and short.finished
    assert long.tokens == [2, 3] and long.finished
    assert short.score == pytest.approx(math.log(0.5), abs=1e-3)  # total log-prob, one token (EOS)
    assert long.score == pytest.approx(math.log(0.5 * 0.99 * 0.99) / 3, abs=1e-3)  # mean over 3 tokens


def test_batched_left_padded_prompts_match_single_ones(gpt):
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    together = beam_search(gpt, prompts, beam_width=3, max_new_tokens=10, eos_id=EOS)
    for p, h in zip(prompts, together):
        alone = beam_search(gpt, [p], beam_width=3, max_new_tokens=10, eos_id=EOS)[0]
        assert h.tokens == alone.tokens and h.score == pytest.approx(alone.score, abs=1e-5)


def test_bad_arguments_are_explained(gpt):
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(gpt, [[1, 2]], beam_width=0)
    with pytest.raises(ValueError, match="block_size"):
        beam_search(gpt, [[1, 2]], beam_width=2, max_new_tokens=100)
    with pytest.raises(ValueError, match="non-empty"):
        beam_search(gpt, [[]], beam_width=2)


@pytest.mark.parametrize("eos_id", [True, 1.0, "0", -1, 40])
def test_eos_id_outside_the_vocabulary_is_refused(gpt, eos_id):
    with pytest.raises(ValueError, match=r"eos_id must be a token id in \[0, 40\)"):
        beam_search(gpt, [[1, 2]], beam_width=2, max_new_tokens=3, eos_id=eos_id)
    with pytest.raises(ValueError, match=r"eos_id must be a token id in \[0, 40\)"):  # the same check in generate
        gpt.generate(torch.tensor([[1, 2]]), 3, temperature=0, eos_id=eos_id)


def test_zero_new_tokens_returns_empty_hypotheses(gpt):
    # As GPT.generate, which returns the prompts unchanged for max_new_tokens=0.
    assert torch.equal(gpt.generate(torch.tensor([[1, 2]]), 0), torch.tensor([[1, 2]]))
    hyps = beam_search(gpt, [[1, 2], [3]], beam_width=3, max_new_tokens=0, eos_id=EOS)
    assert hyps == [Hypothesis([], 0.0, False)] * 2
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            beam_search(gpt, [[1, 2]], beam_width=2, max_new_tokens=bad)


def test_non_finite_model_output_is_refused(gpt):
    probs = torch.full((4, 4), 0.25)
    probs[2, 3] = float("nan")  # read right after the prompt [2], or one step later from [1] (1 -> 2 surely)
    probs[1] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # whose -inf log-probs are legitimate
    toy = Bigram(probs)
    for prompt in ([2], [1]):
        with pytest.raises(ValueError, match="non-finite logits"):
            beam_search(toy, [prompt], beam_width=2, max_new_tokens=3, eos_id=EOS)
    broken = copy.deepcopy(gpt)
    with torch.no_grad():
        broken.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")  # as a corrupted checkpoint would
    with pytest.raises(ValueError, match="diverged training run"):
        beam_search(broken, [[5, 6]], beam_width=2, max_new_tokens=3, eos_id=EOS)
