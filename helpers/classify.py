"""Text classification with a pretrained encoder or decoder: a linear head on one vector per text (chapter 08).

- :class:`GPTClassifier`: our GPT with a linear ``score`` head on the final hidden state of the last real token, the
  design of ``transformers``' ``GPT2ForSequenceClassification`` (and of GPT-1's fine-tuning): in a causal model only
  the last position has read the whole text. :func:`to_hf_classifier` exports it weight for weight.
- :class:`MiniLMClassifier`: the MiniLM sentence encoder (:mod:`helpers.sentence_embeddings`) with a linear head on
  its mean-pooled embedding, fine-tuned end to end.
- :func:`encode_texts`, :func:`collate_labelled`, :func:`train_classifier` and
  :func:`predict_proba`: the data path and the training and scoring loops both models share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.batches import ShuffledBatches, length_buckets, pad
from helpers.env import eval_mode
from helpers.model import GPT
from helpers.sentence_embeddings import mean_pool
from helpers.train import TrainConfig, Trainer


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """For each row of a (B, T) mask (1 = token), the position of its last token: (B,). Right padding puts it before
    the padding, left padding at T - 1; an all-padding row gives 0. Taught in chapter 08, section 3."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be shaped (batch, time), got {tuple(attention_mask.shape)}.")
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (positions * attention_mask.to(torch.long)).argmax(dim=-1)


def _check_labels(labels, batch: int, num_labels: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.shape != (batch,) or labels.is_floating_point():
        raise ValueError(f"labels must be a (batch,) = ({batch},) tensor of class ids, got {getattr(labels, 'shape', labels)}.")
    if batch and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels}), got values from {int(labels.min())} to {int(labels.max())}.")
    return labels


class GPTClassifier(nn.Module):
    """``gpt`` (its language-model head unused) and ``score``, a bias-free Linear from its width to ``num_labels``.

    ``forward(idx, attention_mask=None, labels=None)`` returns ``(logits (B, num_labels), loss or None)``: the head
    reads the hidden state of each row's last real token, so padding on either side gives the same result.
    Taught in chapter 08, section 3.
    """

    def __init__(self, gpt: GPT, num_labels: int = 2):
        super().__init__()
        if not isinstance(gpt, GPT):
            raise TypeError(f"GPTClassifier wraps a helpers.model.GPT, got {type(gpt).__name__}.")
        if not gpt.config.causal:
            raise ValueError("GPTClassifier reads the last token of a causal GPT; for an encoder pool over all tokens.")
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an integer >= 2, got {num_labels!r}.")
        self.gpt = gpt
        self.num_labels = num_labels
        # GPT2ForSequenceClassification's head: no bias, initialised like the GPT's other Linear layers.
        self.score = nn.Linear(gpt.config.n_embd, num_labels, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)
        self.score.to(next(gpt.parameters()).device)

    def forward(self, idx, attention_mask=None, labels=None):
        hidden = self.gpt.hidden_states(idx, attention_mask=attention_mask)
        rows = torch.arange(idx.size(0), device=idx.device)
        last = torch.full_like(rows, idx.size(1) - 1) if attention_mask is None else last_token_index(attention_mask)
        logits = self.score(hidden[rows, last])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), _check_labels(labels, idx.size(0), self.num_labels))
        return logits, loss


def to_hf_classifier(model: GPTClassifier, pad_token_id: int):
    """A ``transformers.GPT2ForSequenceClassification`` with ``model``'s weights (copied), device and mode.

    ``transformers`` finds each row's last real token as the last one that is not ``pad_token_id``, so that id must
    be one no text contains (the course tokenizer's ``pad_id``); left-padded rows also need ``position_ids`` counted
    over the real tokens, as our GPT counts them. Taught in chapter 08, section 3.
    """
    from transformers import GPT2ForSequenceClassification

    from helpers.hf import to_hf

    if not isinstance(model, GPTClassifier):
        raise TypeError(f"to_hf_classifier converts a GPTClassifier, got {type(model).__name__}.")
    body = to_hf(model.gpt).transformer
    config = body.config
    config.num_labels, config.pad_token_id = model.num_labels, pad_token_id
    param = model.score.weight
    hf = GPT2ForSequenceClassification(config).to(device=param.device, dtype=param.dtype)
    hf.transformer.load_state_dict(body.state_dict())
    with torch.no_grad():
        hf.score.weight.copy_(model.score.weight)
    return hf.train(model.training)


class MiniLMClassifier(nn.Module):
    """A ``transformers`` BERT encoder (MiniLM) and a Linear ``head`` on its mean-pooled, unit-length sentence
    embedding: ``forward(input_ids, attention_mask, labels=None, token_type_ids=None)`` returns
    ``(logits, loss or None)``. The head starts at zero (undecided) or, with :meth:`start_from_probe`, at a
    logistic regression fitted on the frozen embeddings, so that fine-tuning starts where the probe ended.
    Taught in chapter 08, section 4."""

    def __init__(self, encoder: nn.Module, num_labels: int = 2):
        super().__init__()
        self.encoder = encoder
        self.num_labels = num_labels
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.head.to(next(encoder.parameters()).device)

    @torch.no_grad()
    def start_from_probe(self, coef, intercept) -> MiniLMClassifier:
        """Set the head to a binary logistic regression's ``coef`` (1, hidden) and ``intercept`` (1,) (scikit-learn's
        ``coef_`` and ``intercept_``): class 0 scores 0 and class 1 scores ``coef . e + intercept``, whose softmax is
        the regression's sigmoid."""
        coef = torch.as_tensor(coef, dtype=self.head.weight.dtype).reshape(-1)
        if self.num_labels != 2 or coef.numel() != self.head.in_features:
            raise ValueError(f"start_from_probe needs a 2-class head and {self.head.in_features} weights, not {coef.numel()}.")
        self.head.weight.zero_()
        self.head.bias.zero_()
        self.head.weight[1] = coef.to(self.head.weight.device)
        self.head.bias[1] = float(torch.as_tensor(intercept).reshape(-1)[0])
        return self

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        logits = self.head(F.normalize(mean_pool(hidden, attention_mask), dim=-1))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), _check_labels(labels, input_ids.size(0), self.num_labels))
        return logits, loss


@dataclass(frozen=True)
class LabelledText:
    """One text as token ids and its class id (``label``); ``None`` as label for texts to score only.
    Taught in chapter 08, section 3."""

    ids: tuple[int, ...]
    label: int | None


def encode_texts(tokenizer, texts, labels=None, max_len: int = 128, end_id: int | None = None) -> list[LabelledText]:
    """``texts`` as :class:`LabelledText`, each cut to its first ``max_len`` tokens. ``tokenizer`` is a course
    tokenizer (``encode`` gives a list of ids) or a ``transformers`` tokenizer (called, with its special tokens and
    truncation). ``end_id`` (e.g. the course tokenizer's ``eot_id``) is put last, after a cut, so that the last
    token, which a GPT head reads, is the same one for every text. Taught in chapter 08, section 3."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings; for one text write encode_texts(tokenizer, [text]).")
    texts = list(texts)
    labels = [None] * len(texts) if labels is None else [int(y) for y in labels]
    if len(labels) != len(texts):
        raise ValueError(f"Got {len(texts)} texts and {len(labels)} labels; give one label per text.")
    if not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"max_len must be an integer >= 2, got {max_len!r}.")
    if hasattr(tokenizer, "pad_id"):  # the course tokenizer
        keep = max_len - (end_id is not None)
        ids = [tokenizer.encode(t)[:keep] + ([end_id] if end_id is not None else []) for t in texts]
    else:
        ids = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
    return [LabelledText(tuple(i), y) for i, y in zip(ids, labels)]


def collate_labelled(examples: list[LabelledText], pad_id: int, side: str = "right", names=("idx", "attention_mask")) -> dict:
    """A batch dict: padded ids and mask under ``names`` (``("input_ids", "attention_mask")`` for ``transformers``
    models) and, when every example has one, ``labels``. Taught in chapter 08, section 3."""
    if not examples:
        raise ValueError("collate_labelled needs at least one example.")
    ids, mask = pad([e.ids for e in examples], pad_id, side=side)
    batch = {names[0]: ids, names[1]: mask}
    if all(e.label is not None for e in examples):
        batch["labels"] = torch.tensor([e.label for e in examples])
    return batch


def train_classifier(
    model: nn.Module,
    train: list[LabelledText],
    val: list[LabelledText],
    cfg: TrainConfig,
    collate,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[Trainer, float]:
    """Train ``model`` (a classifier returning ``(logits, loss)``) with :class:`helpers.train.Trainer` on batches of
    similar length (:func:`helpers.batches.length_buckets`) in a new order every epoch, watching the loss on
    ``val``. ``collate`` turns a list of examples into a batch dict. Returns the trainer and the training time in
    seconds. Taught in chapter 08, section 3."""
    if not train or not val:
        raise ValueError("train_classifier needs training and validation examples.")
    if batch_size > len(train):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(train)} training examples.")
    buckets = length_buckets(train, batch_size, seed=cfg.seed)
    train_batches = ShuffledBatches(buckets, 1, lambda chosen: collate(chosen[0]), seed=cfg.seed)
    by_length = sorted(val, key=lambda e: len(e.ids))
    val_batches = [collate(by_length[i : i + 64]) for i in range(0, len(by_length), 64)]
    trainer = Trainer(model, cfg, train_batches, val_batches, progress=progress)
    start = time.perf_counter()
    trainer.fit()
    return trainer, time.perf_counter() - start


@torch.no_grad()
def predict_proba(model: nn.Module, examples: list[LabelledText], collate, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, num_labels) of ``examples``, in their order, with ``model`` in eval mode (scored in
    length order, so little padding). Taught in chapter 08, section 3."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    probs = np.zeros((len(examples), model.num_labels), dtype=np.float64)
    with eval_mode(model):
        for j in range(0, len(order), batch_size):
            rows = order[j : j + batch_size]
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in rows]).items() if k != "labels"}
            logits, _ = model(**batch)
            probs[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return probs
