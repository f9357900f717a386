"""A real pretrained encoder, offline: MiniLM-L6 sentence embeddings (chapter 05; the classification chapter reuses them).

``all-MiniLM-L6-v2`` is a 6-layer BERT (384 dimensions, 22M parameters) trained by the sentence-transformers project
to map sentences with similar meaning to nearby vectors. A sentence's embedding is the mean of its last hidden
states over the real tokens (padding left out), scaled to unit length, as sentence-transformers computes it; the
cosine similarity of two sentences is then the dot product of their embeddings. The model comes from a PyPI package
(:func:`helpers.data.minilm_path`), so nothing is downloaded.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers.data import minilm_path
from helpers.env import get_device

MINILM_DIM = 384
MINILM_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model: longer texts are cut


@cache
def _load(device: str):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = minilm_path()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for loading 103 tensors from disk only clutters the output
    try:
        model = AutoModel.from_pretrained(path).to(device).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model, AutoTokenizer.from_pretrained(path)


def minilm(device=None):
    """The MiniLM ``(model, tokenizer)`` (a ``transformers`` ``BertModel`` in eval mode and its tokenizer), loaded once
    per device. ``device`` defaults to :func:`helpers.env.get_device`'s choice. Taught in chapter 05, section 7."""
    device = torch.device(device) if device is not None else get_device(verbose=False)
    return _load(str(device))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` (B, T, C) over the positions where ``attention_mask`` (B, T) is 1: (B, C).

    Taught in chapter 05, section 7.
    """
    if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"mean_pool needs hidden states (B, T, C) and a mask (B, T), got {tuple(hidden.shape)} and "
            f"{tuple(attention_mask.shape)}."
        )
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def minilm_embed(
    texts, batch_size: int = 32, device=None, max_length: int = MINILM_MAX_TOKENS, progress: bool = False
) -> torch.Tensor:
    """MiniLM sentence embeddings of ``texts`` (a list of strings): a float32 CPU tensor (N, 384) of unit vectors.

    Texts longer than ``max_length`` tokens (default 256, as sentence-transformers) are cut there. Batches hold
    texts of similar length, so that little compute goes to padding; the rows come back in the order of ``texts``.
    ``embed @ embed.T`` holds the cosine similarities of every pair. ``progress`` shows a tqdm bar.
    Taught in chapter 05, section 7."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings; for one text write minilm_embed([text]).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 2 <= max_length <= MINILM_MAX_TOKENS:
        raise ValueError(f"max_length must be an integer from 2 to {MINILM_MAX_TOKENS}, got {max_length!r}.")
    texts = list(texts)
    if not texts:
        return torch.zeros(0, MINILM_DIM)
    model, tokenizer = minilm(device)
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    out = torch.zeros(len(texts), MINILM_DIM)
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc="MiniLM embeddings", disable=not progress):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            hidden = model(**batch).last_hidden_state
            out[rows] = F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1).float().cpu()
    return out
