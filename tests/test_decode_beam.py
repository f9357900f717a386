"""helpers.decode.beam_search: greedy at width 1, never worse than greedy, exact when nothing is pruned, EOS and
length normalisation, and the KV cache reordered correctly on a real GPT."""

import itertools
import math

import pytest
import torch
from torch import nn

from helpers.decode import beam_search, normalised_score
from helpers.model import GPT, GPTConfig

EOS = 0


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
            return seq[len(prompt):], True
        seq.append(nxt)
    return seq[len(prompt):], False


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
        out = gpt.generate(torch.tensor([p]), 12, temperature=0.0, eos_id=EOS)[0, len(p):].tolist()
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


def test_wide_enough_beam_is_exhaustive_search():
    V, n_new, prompt = 4, 4, [2]
    toy = random_bigram(V, seed=3)
    candidates = [(list(seq[:n]), True) for n in range(n_new) for seq in itertools.product(range(1, V), repeat=n)]
    candidates += [(list(seq), False) for seq in itertools.product(range(1, V), repeat=n_new)]
    for lp in (0.0, 1.0):
        best = max(score(toy, prompt, t, f, lp) for t, f in candidates)
        h = beam_search(toy, [prompt], beam_width=V**n_new, max_new_tokens=n_new, eos_id=EOS, length_penalty=lp)[0]
        assert h.score == pytest.approx(best, abs=1e-5)


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
