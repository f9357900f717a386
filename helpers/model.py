"""The GPT of chapter 03: configuration, Transformer block, model and generation (its key/value cache is in
:mod:`helpers.decode`).

Parameter names follow GPT-2's (``transformer.wte``, ``transformer.h.0.attn.c_attn``, ``lm_head``...) so that
weights map one to one onto Hugging Face's ``GPT2LMHeadModel`` (see :mod:`helpers.hf`), and so that later chapters
can wrap layers by name (LoRA replaces the ``nn.Linear`` modules ``c_attn``, ``c_proj``, ``c_fc``).

Conventions used throughout:

- ``idx``: (B, T) token ids. ``attention_mask``: (B, T), 1 = real token, 0 = padding; padding may sit on either
  side, and positions are counted over real tokens only, so left and right padding give the same logits on the
  real tokens. ``targets``: (B, T) next-token ids; positions set to ``-100`` are left out of the loss.
- ``prefix_embeds``: (B, P, C) vectors placed before the token embeddings (image patches, soft prompts). They take
  positions 0..P-1, are always attended to, and produce no logits: ``forward`` returns logits for the T tokens.
- ``config.causal = False`` turns the same blocks into a bidirectional encoder (chapter 05).

Saving: ``lm_head.weight`` and ``transformer.wte.weight`` are one tensor (weight tying), which safetensors'
``save_file`` refuses; :func:`helpers.checkpoint.save_model` stores it once and loading restores the tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from helpers.decode import KVCache, check_token_id, sample_next
from helpers.env import eval_mode


def _shape(x) -> str:
    """How to describe ``x`` in an error message: its shape if it is a tensor, else its type."""
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_attention_mask(attention_mask, idx: torch.Tensor) -> None:
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != idx.shape:
        raise ValueError(
            f"attention_mask must have the shape of idx {tuple(idx.shape)} (1 = token, 0 = pad), got {_shape(attention_mask)}."
        )


def _readable(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s values is free: a CPU tensor, outside torch.compile (where it would break the graph)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


#: Targets equal to this are ignored by the loss (PyTorch's default ``ignore_index``): padding, prompt tokens.
IGNORE_INDEX = -100


@dataclass
class GPTConfig:
    """The sizes of a GPT. The defaults are GPT-2 small (124M parameters), apart from dropout.

    A plain dataclass: ``dataclasses.asdict(config)`` is JSON-ready and ``GPTConfig(**d)`` rebuilds it.
    Taught in chapter 03, section 2; ``causal=False`` in chapter 05, section 1.
    """

    vocab_size: int = 50257
    block_size: int = 1024  # the longest sequence the model reads (number of learned positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in the Linear layers and LayerNorms, as in GPT-2
    causal: bool = True  # False: every position attends to every other one (an encoder, chapter 05)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; every head gets n_embd // n_head "
                "dimensions, so pick sizes where that is a whole number."
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"GPTConfig.dropout must be a probability in [0, 1), got {self.dropout!r}.")
        for name in ("bias", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}.")


class SelfAttention(nn.Module):
    """Multi-head self-attention: one fused Linear makes queries, keys and values; torch's fused SDPA mixes them.

    Part of :class:`Block` (chapter 03, section 3); chapter 06, section 7 recomputes its attention weights by hand.
    """

    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.n_head, self.layer_idx, self.dropout = config.n_head, layer_idx, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask=None, is_causal=False, cache: KVCache | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim): every head attends independently over its slice of the channels.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU (tanh approximation, as GPT-2), project back (chapter 03, section 2)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-norm Transformer block (chapter 03, section 3): x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = SelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask=None, is_causal=False, cache: KVCache | None = None):
        x = x + self.attn(self.ln_1(x), mask, is_causal, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A GPT-2-style decoder (or, with ``config.causal=False``, an encoder) with tied input/output embeddings.

    Taught in chapter 03, section 4 (the encoder in chapter 05, section 1).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}; build one with GPTConfig(vocab_size=...).")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output layer scores token v by the dot product with v's input embedding.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: each block adds two outputs to the residual stream, so scale their projections by 1/sqrt(2 n_layer)
        # to keep the stream's variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------------------------------------ sizes
    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (the tied embedding counted once). ``non_embedding`` leaves out the position
        table, a lookup with no arithmetic; the token table stays in, as it is also the output layer's matrix.
        Taught in chapter 03, section 5."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6N for the weights plus 12 * n_layer * n_embd * T for
        attention's scores and weighted sum over T = ``seq_len`` (default block_size) keys. Forward alone is a third.
        Taught in chapter 03, section 5."""
        c = self.config
        T = c.block_size if seq_len is None else seq_len
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * T

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, idx, targets=None, attention_mask=None, position_ids=None, prefix_embeds=None, cache=None):
        """Logits (B, T, vocab_size) for the T tokens of ``idx`` and, given ``targets`` (B, T), the mean categorical
        cross-entropy over the positions whose target is not -100 (else ``loss`` is None)."""
        h = self._hidden(idx, attention_mask, position_ids, prefix_embeds, cache)
        logits = self.lm_head(h[:, h.size(1) - idx.size(1) :])  # a prefix gives no logits
        loss = None
        if targets is not None:
            targets = self._check_targets(targets, idx)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def hidden_states(self, idx, attention_mask=None, position_ids=None, prefix_embeds=None) -> torch.Tensor:
        """The final hidden states (after ln_f) of the T tokens, (B, T, n_embd): what a classification head reads."""
        h = self._hidden(idx, attention_mask, position_ids, prefix_embeds)
        return h[:, h.size(1) - idx.size(1) :]

    def _hidden(self, idx, attention_mask=None, position_ids=None, prefix_embeds=None, cache=None) -> torch.Tensor:
        """The final hidden states of every position, prefix included: (B, P + T, C). The steps of any GPT: embed
        tokens and positions, build the attention mask, run the blocks, normalise."""
        self._check_inputs(idx, attention_mask, position_ids, prefix_embeds, cache)
        past = 0 if cache is None else cache.length
        keep = self._keep(idx, attention_mask, prefix_embeds, cache)
        x = self._embed(idx, position_ids, prefix_embeds, keep, past)
        mask, is_causal = self._attention_mask(x.size(1), past, keep, x.device)
        for block in self.transformer.h:
            x = block(x, mask, is_causal, cache)
        if cache is not None:
            cache.length += x.size(1)
        return self.transformer.ln_f(x)

    def _keep(self, idx, attention_mask, prefix_embeds, cache: KVCache | None) -> torch.Tensor | None:
        """Which positions are real tokens, (B, past + P + T) bool, or None when nothing is padding."""
        keep = None
        if attention_mask is not None:
            keep = attention_mask.to(device=idx.device, dtype=torch.bool)
            if prefix_embeds is not None:
                keep = torch.cat([keep.new_ones(idx.size(0), prefix_embeds.size(1)), keep], dim=1)
        if cache is not None:
            keep = cache.key_mask(keep, idx.size(1) + (0 if prefix_embeds is None else prefix_embeds.size(1)))
        return keep

    def _embed(self, idx, position_ids, prefix_embeds, keep: torch.Tensor | None, past: int) -> torch.Tensor:
        """Token embeddings (after the prefix, if any) plus position embeddings: (B, P + T, C)."""
        B, T = idx.shape
        x = self.transformer.wte(idx)
        P = 0
        if prefix_embeds is not None:
            P = prefix_embeds.size(1)
            x = torch.cat([prefix_embeds.to(x.dtype), x], dim=1)
        if position_ids is not None:
            pos = position_ids.to(idx.device).long().expand(B, T)
            if P:
                pos = torch.cat([torch.arange(past, past + P, device=idx.device).expand(B, P), pos], dim=1)
        elif keep is None:
            pos = torch.arange(past, past + P + T, device=idx.device)
        else:
            # Count positions over real tokens only, so a left-padded sequence starts at position 0 like an unpadded one.
            pos = (keep.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]
        return self.transformer.drop(x + self.transformer.wpe(pos))

    def _attention_mask(self, L: int, past: int, keep: torch.Tensor | None, device):
        """The SDPA mask for L new queries after ``past`` cached positions: (mask or None, is_causal)."""
        causal = self.config.causal
        if keep is None:
            if not causal or L == 1:  # one new query may see every cached key
                return None, False
            if past == 0:
                return None, True  # SDPA's built-in causal mask: the fastest path
        q_pos = torch.arange(past, past + L, device=device)[:, None]
        k_pos = torch.arange(past + L, device=device)[None, :]
        allowed = k_pos <= q_pos if causal else torch.ones(L, past + L, dtype=torch.bool, device=device)
        if keep is not None:
            # No query attends to padding; a padding query still sees itself, so that no row of scores is empty
            # (an all-masked row gives NaN in some SDPA versions). Outputs at padding positions are never used.
            allowed = (allowed & keep[:, None, None, :]) | (k_pos == q_pos)
        return allowed, False

    # ------------------------------------------------------------------------------------------- input checks
    # Shapes and sizes are checked on every call (free: no tensor is read). Token ids and targets are checked against
    # the vocabulary only where that is free too, on CPU tensors outside torch.compile: on a GPU, reading a tensor's
    # values makes the host wait for the device at every call. generate checks its prompt's ids once, on any device.
    def _check_inputs(self, idx, attention_mask, position_ids, prefix_embeds, cache: KVCache | None) -> None:
        c = self.config
        self._check_idx(idx, values=_readable(idx))
        B, T = idx.shape
        P = 0 if prefix_embeds is None else self._check_prefix(prefix_embeds, B)
        L = P + T
        past = 0 if cache is None else cache.length
        if L == 0:
            raise ValueError("Nothing to read: idx has no tokens and there is no prefix_embeds.")
        if past + L > c.block_size:
            what = f"{L} positions" + (f" ({P} prefix + {T} tokens)" if P else "")
            after = f" after {past} cached ones" if past else ""
            raise ValueError(
                f"The input has {what}{after}, more than block_size={c.block_size}; crop it to the last "
                f"{c.block_size - past - P} tokens or build the model with a larger block_size."
            )
        if cache is not None and (cache.batch_size != B or past + L > cache.max_len):
            raise ValueError(
                f"The KVCache was made for batch {cache.batch_size} and {cache.max_len} positions; this call needs batch "
                f"{B} and {past + L} positions. Make a new KVCache(config, batch_size, max_len)."
            )
        if attention_mask is not None:
            _check_attention_mask(attention_mask, idx)
        if position_ids is not None:
            if not isinstance(position_ids, torch.Tensor) or position_ids.shape not in ((T,), (B, T)):
                raise ValueError(f"position_ids must be shaped ({T},) or ({B}, {T}) like idx, got {_shape(position_ids)}.")
            if T and _readable(position_ids) and (position_ids.min() < 0 or position_ids.max() >= c.block_size):
                raise ValueError(f"position_ids must lie in [0, block_size={c.block_size}).")

    def _check_idx(self, idx, values: bool = True) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a torch.Tensor of token ids shaped (batch, time), got {_shape(idx)}.")
        if idx.ndim != 2:
            hint = " For one sequence use idx[None]." if idx.ndim == 1 else ""
            raise ValueError(f"idx must be shaped (batch, time), got {tuple(idx.shape)}.{hint}")
        if idx.dtype not in (torch.long, torch.int32):
            raise TypeError(f"idx must hold integer token ids (torch.long), got {idx.dtype}.")
        if values and idx.numel():
            lo, hi = torch.aminmax(idx)
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(
                    f"Token ids must lie in [0, {self.config.vocab_size}) (vocab_size), got values from {int(lo)} to "
                    f"{int(hi)}; was the text encoded with another tokenizer?"
                )
        return idx

    def _check_targets(self, targets, idx: torch.Tensor) -> torch.Tensor:
        """``targets`` as torch.long, or a clear error where cross_entropy would fail obscurely or return NaN."""
        if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {_shape(targets)}.")
        if targets.dtype not in (torch.long, torch.int32):
            raise TypeError(f"targets must hold integer token ids (torch.long), got {targets.dtype}.")
        targets = targets.long()
        if not _readable(targets):
            return targets
        n_used = lo = hi = 0
        if targets.numel():
            ignored = targets == IGNORE_INDEX
            lo, hi = torch.aminmax(targets.masked_fill(ignored, 0))
            n_used, lo, hi = torch.stack([(~ignored).sum(), lo, hi]).tolist()
        if n_used == 0:
            raise ValueError(
                f"Every target is {IGNORE_INDEX} (ignored), so there is nothing to learn from and the loss would be NaN; "
                "check the loss mask (a prompt mask covering the whole sequence, or a sequence cut before its answer)."
            )
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"targets must be token ids in [0, {self.config.vocab_size}) (vocab_size) or {IGNORE_INDEX} (ignored), "
                f"got {lo if lo < 0 else hi}; was padding marked with another value, or the text encoded with "
                "another tokenizer?"
            )
        return targets

    def _check_prefix(self, prefix_embeds, B: int) -> int:
        """The length P of a valid (B, P, n_embd) ``prefix_embeds``."""
        ok = isinstance(prefix_embeds, torch.Tensor) and prefix_embeds.ndim == 3
        if not ok or prefix_embeds.shape[::2] != (B, self.config.n_embd):
            raise ValueError(
                f"prefix_embeds must be shaped (batch={B}, P, n_embd={self.config.n_embd}), got {_shape(prefix_embeds)}."
            )
        return prefix_embeds.shape[1]

    # -------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        idx,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        prefix_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Append up to ``max_new_tokens`` tokens to each row of ``idx`` (B, T); returns (B, T + new).

        ``temperature=0`` is greedy; otherwise tokens are sampled (see :func:`helpers.decode.sample_next`), the same
        ones for the same seeded ``generator``. A row that produced ``eos_id`` is padded with ``eos_id`` from then on,
        and generation stops once every row has, so the result can be shorter than ``T + max_new_tokens``.
        ``attention_mask`` (B, T) lets a batch hold left-padded prompts of different lengths.

        With ``use_cache`` (the default) each step feeds only the newest token and reuses the cached keys/values;
        prefix + prompt + new tokens must then fit in block_size, or a ValueError says by how much they do not.
        Without the cache every step reruns the whole sequence, cropped to its last block_size positions.
        ``cache``: a :class:`helpers.decode.KVCache` that already holds positions to continue after (a learned
        prefix, chapter 07), with room for the prompt and the new tokens; by default an empty one is made.
        The model is in eval mode (no dropout) while generating and returns to its previous mode afterwards.

        Chapter 03 first calls it in section 7 and explains it in section 8.
        """
        idx = self._check_idx(idx)  # the ids' values too, once per call on any device
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
        check_token_id(eos_id, self.config.vocab_size)
        B, T = idx.shape
        P = 0 if prefix_embeds is None else self._check_prefix(prefix_embeds, B)
        block = self.config.block_size
        if cache is not None and not use_cache:
            raise ValueError("A cache was given with use_cache=False; pass use_cache=True (the default) to continue it.")
        if cache is None and use_cache and P + T + max_new_tokens > block:
            raise ValueError(
                f"Prompt ({P + T} positions) + max_new_tokens ({max_new_tokens}) = {P + T + max_new_tokens} is more than "
                f"block_size={block}; lower max_new_tokens or shorten the prompt, or pass use_cache=False to slide a "
                f"window over the last {block} positions."
            )
        if cache is not None and cache.length + P + T + max_new_tokens > cache.max_len:
            raise ValueError(
                f"The cache holds {cache.length} positions with room for {cache.max_len}; the prompt ({P + T} positions) "
                f"and max_new_tokens ({max_new_tokens}) need {cache.length + P + T + max_new_tokens}: make a longer cache "
                "or lower max_new_tokens."
            )
        if attention_mask is not None:
            _check_attention_mask(attention_mask, idx)
        keep = None if attention_mask is None else attention_mask.to(device=idx.device, dtype=torch.long)
        if cache is None and use_cache and max_new_tokens:
            cache = KVCache(self.config, B, P + T + max_new_tokens)
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        out, step_idx, step_keep, step_prefix = idx, idx, keep, prefix_embeds
        with eval_mode(self):
            for _ in range(max_new_tokens):
                if cache is None:
                    start = max(0, out.size(1) - (block - P))  # the sliding window keeps the prefix
                    step_idx = out[:, start:]
                    step_keep = None if keep is None else keep[:, start:]
                h = self._hidden(step_idx, step_keep, None, step_prefix, cache)
                nxt = sample_next(self.lm_head(h[:, -1]), temperature, top_k, top_p, generator)
                if eos_id is not None:
                    nxt = torch.where(finished, eos_id, nxt)
                    finished |= nxt == eos_id
                out = torch.cat([out, nxt[:, None]], dim=1)
                if keep is not None:
                    keep = torch.cat([keep, keep.new_ones(B, 1)], dim=1)
                if cache is not None:  # the cache remembers the prefix, the prompt and its padding
                    step_idx, step_keep, step_prefix = nxt[:, None], None, None
                if eos_id is not None and bool(finished.all()):
                    break
        return out
