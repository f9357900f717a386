"""Decoding: turn next-token logits into tokens (greedy, temperature, top-k, top-p), the key/value cache that makes
each generated token cost one position of work (:class:`KVCache`), both used by ``GPT.generate``, and beam search over
a whole model (:func:`beam_search`, chapter 06).

The sampling functions work on a (B, V) batch of logits, one row per sequence, and never change their input in place.

Sampling and the cache first appear in chapter 03, section 8; chapter 04 compares the decoding rules (section 7) and
times the cache (section 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from helpers.batches import pad
from helpers.env import eval_mode


def _check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"Expected logits shaped (batch, vocab_size), got {shape}; take logits[:, -1] of the model output.")


def check_token_id(value, vocab_size: int, name: str = "eos_id") -> None:
    """Refuse anything but an int in ``[0, vocab_size)`` or None (``True`` and ``2.0`` are not token ids).

    Not shown in a notebook: ``GPT.generate`` (chapter 03) and :func:`beam_search` (chapter 06) check ``eos_id`` with it.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size):
        raise ValueError(f"{name} must be a token id in [0, {vocab_size}) or None, got {value!r}.")


def _check_finite(logits: torch.Tensor) -> None:
    # -inf is a legitimate masked logit, so only a row whose max is not finite is wrong: it holds a NaN or a +inf,
    # or nothing but -inf. One reduction, where argmax would quietly pick token 0 and multinomial raise an obscure error.
    if not bool(torch.isfinite(logits.amax(dim=-1)).all()):
        raise ValueError(
            "the model produced non-finite logits (NaN, +inf, or -inf for every token); check for non-finite weights "
            "(a NaN in a checkpoint) or a diverged training run."
        )


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row and set the others to -inf (ties with the k-th value are kept).

    Taught in chapter 04, section 7.
    """
    _check_logits(logits)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be a positive integer (or None for no filtering), got {k!r}.")
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities add up to at least ``p``.

    The most likely token is always kept, so ``p`` close to 0 gives greedy decoding and ``p = 1`` keeps everything.

    Taught in chapter 04, section 7.
    """
    _check_logits(logits)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be a probability in (0, 1] (or None for no filtering), got {p!r}.")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    # A token is dropped when the tokens ranked above it already reach p on their own.
    drop_sorted = probs.cumsum(dim=-1) - probs >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row, shape (B,): greedy when ``temperature == 0``, else sampled from the filtered softmax.

    ``temperature`` divides the logits (below 1 sharpens, above 1 flattens); ``top_k`` and ``top_p`` then drop
    unlikely tokens. Pass a seeded ``torch.Generator`` to draw the same tokens on every run.
    Raises ValueError on logits with a NaN or +inf, or a row of nothing but -inf.

    Not called in a notebook: ``GPT.generate`` draws with it (chapter 03, section 8; chapter 04, section 7).
    """
    _check_logits(logits)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}.")
    _check_finite(logits)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# --------------------------------------------------------------------------------------------- the KV cache
class KVCache:
    """Keys and values of every layer for the positions processed so far, in buffers preallocated to ``max_len``.

    ``GPT.forward(..., cache=cache)`` computes keys and values only for the new positions, appends them here and
    lets the new queries attend over everything cached, so decoding one token costs one position of work instead
    of the whole prefix. ``length`` counts the positions seen so far (prefix embeddings included). ``config`` is the
    model's :class:`helpers.model.GPTConfig` (its ``n_layer`` and ``block_size`` size the cache).

    Taught in chapter 03, section 8 (timed again in chapter 04, section 8).
    """

    def __init__(self, config, batch_size: int, max_len: int | None = None):
        max_len = config.block_size if max_len is None else max_len
        if not 1 <= max_len <= config.block_size:
            raise ValueError(f"A KVCache holds 1 to block_size={config.block_size} positions, got max_len={max_len}.")
        self.batch_size, self.max_len, self.length = batch_size, max_len, 0
        self.keys: list[torch.Tensor | None] = [None] * config.n_layer
        self.values: list[torch.Tensor | None] = [None] * config.n_layer
        self.keep: torch.Tensor | None = None  # (B, max_len) bool, allocated once any input has padding

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the (B, H, T, hd) keys/values of the new positions; return those of all positions so far."""
        start, end = self.length, self.length + k.size(2)
        if self.keys[layer] is None:
            shape = (k.size(0), k.size(1), self.max_len, k.size(3))
            self.keys[layer], self.values[layer] = k.new_empty(shape), v.new_empty(shape)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def key_mask(self, keep: torch.Tensor | None, new: int) -> torch.Tensor | None:
        """Record which of the ``new`` positions are real tokens; the (B, length + new) mask, or None if none is padding."""
        if keep is None and self.keep is None:
            return None
        if self.keep is None:
            self.keep = torch.ones(self.batch_size, self.max_len, dtype=torch.bool, device=keep.device)
        self.keep[:, self.length : self.length + new] = True if keep is None else keep
        return self.keep[:, : self.length + new]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows ``index`` (in that order), e.g. the surviving hypotheses of a beam search.

        Beam search relies on it (chapter 06, section 5).
        """
        self.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, index) for v in self.values]
        if self.keep is not None:
            self.keep = self.keep.index_select(0, index)
        self.batch_size = index.numel()


# ------------------------------------------------------------------------------------------------- beam search
@dataclass(frozen=True)
class Hypothesis:
    """One decoded continuation: its new ``tokens`` (the final EOS left out), the length-normalised ``score``
    (see :func:`beam_search`), and whether it ended with EOS (``finished``) or ran into ``max_new_tokens``.
    First used in chapter 06, section 5."""

    tokens: list[int]
    score: float
    finished: bool


def normalised_score(log_prob: float, length: int, length_penalty: float) -> float:
    """Total log-probability divided by ``length ** length_penalty`` (``length`` counts new tokens, EOS included).

    ``length_penalty=0`` ranks by total log-probability, which favours short outputs (every token costs log-prob);
    ``1`` ranks by mean log-probability per token; above 1 favours long outputs further.
    :func:`beam_search` ranks with it (chapter 06, section 5); chapter 06's exercises call it."""
    return log_prob / max(length, 1) ** length_penalty


@torch.no_grad()
def beam_search(
    model,
    prompt_ids,
    beam_width: int = 4,
    max_new_tokens: int = 64,
    eos_id: int | None = None,
    length_penalty: float = 1.0,
    attention_mask: torch.Tensor | None = None,
    pad_id: int = 0,
) -> list[Hypothesis]:
    """The best continuation of each prompt found by beam search (chapter 06, section 5); one :class:`Hypothesis` per prompt.

    ``prompt_ids``: a (B, T) tensor (with ``attention_mask`` when prompts are left-padded) or a list of token-id
    lists (left-padded here with ``pad_id``, which is then never attended to). ``model`` is a
    :class:`helpers.model.GPT`: its KV cache is filled once per prompt, copied to the beams, and reordered with the
    surviving beams at every step, so each step feeds one token per beam.

    Each step extends every live beam by every token and keeps the ``2 * beam_width`` candidates of highest
    **total log-probability**. Per prompt, an EOS candidate among the ``beam_width`` best becomes a *finished*
    hypothesis (one ranked lower is dropped); the ``beam_width`` best non-EOS candidates stay live. Finished
    hypotheses are compared by :func:`normalised_score` (``length_penalty``; the length counts new tokens, EOS
    included) and the best ``beam_width`` are kept. A prompt is done once it holds ``beam_width`` finished hypotheses
    and its best live beam's total log-prob divided by (its current length) ** ``length_penalty`` is not above the
    worst of them. That is ``transformers``' rule for ``early_stopping=False``, its default, and a heuristic: with
    ``length_penalty > 0`` a longer continuation could still have scored better. After ``max_new_tokens`` the live
    beams compete unfinished. With ``beam_width=1`` this is exactly greedy decoding; ``max_new_tokens=0`` gives an
    empty, unfinished hypothesis (score 0) per prompt. A model output with NaN or +inf raises a ValueError.

    These are the choices of ``generate(num_beams=beam_width, do_sample=False, early_stopping=False,
    length_penalty=..., num_return_sequences=1)`` in transformers 5, whose tokens and scores ours match
    (tests/test_decode_beam.py); older releases also counted the prompt in the length, which changes the scores
    when ``length_penalty`` is not 0.
    """
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be a positive integer, got {beam_width!r}.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise ValueError(f"length_penalty must be a number (0: total log-prob, 1: mean per token), got {length_penalty!r}.")
    device = next(model.parameters()).device
    if not isinstance(prompt_ids, torch.Tensor):
        prompts = list(prompt_ids)
        if not prompts or any(not isinstance(p, (list, tuple)) or not p for p in prompts):
            raise ValueError("prompt_ids must be a (B, T) tensor or a non-empty list of non-empty lists of token ids.")
        prompt_ids, attention_mask = pad(prompts, pad_id, side="left")
    if prompt_ids.ndim != 2:
        raise ValueError(f"prompt_ids must be shaped (batch, time), got {tuple(prompt_ids.shape)}; for one prompt use ids[None].")
    prompt_ids = prompt_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    B, T = prompt_ids.shape
    k = beam_width
    V = model.config.vocab_size
    check_token_id(eos_id, V)
    if T + max_new_tokens > model.config.block_size:
        raise ValueError(
            f"Prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) is more than block_size={model.config.block_size}; "
            "lower max_new_tokens or shorten the prompts."
        )
    if max_new_tokens == 0:
        return [Hypothesis([], 0.0, False) for _ in range(B)]
    with eval_mode(model):
        cache = KVCache(model.config, B, T + max_new_tokens)
        logits, _ = model(prompt_ids, attention_mask=attention_mask, cache=cache)
        _check_finite(logits[:, -1])
        cache.reorder(torch.arange(B, device=device).repeat_interleave(k))  # every beam starts from its prompt's cache
        log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1).repeat_interleave(k, dim=0)  # (B*k, V)
        # Only beam 0 of each prompt is live at first; the others start at -inf so the k first beams differ.
        beam_scores = torch.full((B, k), float("-inf"), device=device)
        beam_scores[:, 0] = 0.0
        tokens = torch.empty(B, k, 0, dtype=torch.long, device=device)
        finished: list[list[Hypothesis]] = [[] for _ in range(B)]
        done = [False] * B
        for step in range(1, max_new_tokens + 1):
            cand = (beam_scores[:, :, None] + log_probs.view(B, k, V)).view(B, k * V)
            # Each beam has one EOS candidate, so at most k of the 2k best are EOS and k live beams always remain.
            n_cand = min(2 * k, k * V)
            top_scores, top_flat = cand.topk(n_cand, dim=-1)
            top_beam, top_tok = top_flat // V, top_flat % V
            next_scores = torch.full((B, k), float("-inf"), device=device)
            next_beam = torch.zeros(B, k, dtype=torch.long, device=device)
            next_tok = torch.zeros(B, k, dtype=torch.long, device=device)
            for b in range(B):
                if done[b]:
                    continue
                slot = 0
                for rank, (score, beam, tok) in enumerate(zip(top_scores[b].tolist(), top_beam[b].tolist(), top_tok[b].tolist())):
                    if score == float("-inf"):
                        break
                    if tok == eos_id:
                        if rank < k:
                            hyp = Hypothesis(tokens[b, beam].tolist(), normalised_score(score, step, length_penalty), True)
                            finished[b] = sorted([*finished[b], hyp], key=lambda h: -h.score)[:k]
                        continue
                    if slot < k:
                        next_scores[b, slot], next_beam[b, slot], next_tok[b, slot] = score, beam, tok
                        slot += 1
                if len(finished[b]) == k:
                    best_live = normalised_score(next_scores[b, 0].item(), step, length_penalty)
                    done[b] = best_live <= finished[b][-1].score
            if all(done) or step == max_new_tokens:
                break
            beam_scores = next_scores
            kept = tokens.gather(1, next_beam[:, :, None].expand(-1, -1, tokens.size(2)))
            tokens = torch.cat([kept, next_tok[:, :, None]], dim=2)
            cache.reorder((next_beam + torch.arange(B, device=device)[:, None] * k).view(-1))
            logits, _ = model(next_tok.view(B * k, 1), cache=cache)
            _check_finite(logits[:, -1])
            log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1)
    results = []
    for b in range(B):
        pool = list(finished[b])
        if not done[b]:  # out of steps: the live beams (with their last token) compete unfinished
            for j in range(k):
                score = next_scores[b, j].item()
                if score > float("-inf"):
                    seq = tokens[b, next_beam[b, j]].tolist() + [next_tok[b, j].item()]
                    pool.append(Hypothesis(seq, normalised_score(score, len(seq), length_penalty), False))
        results.append(max(pool, key=lambda h: h.score))
    return results
