"""Translation with a decoder-only GPT (chapter 06): prompt format, batches, fine-tuning, decoding, scores.

One training example is ``source <|sep|> target <|endoftext|>`` as one token sequence. The model reads it left to
right like any text; the loss is taken only where the next token is part of the target (the target's tokens and
the final end of text), so the model learns to translate, not to write English verses. At test time the prompt is
``source <|sep|>`` and the model continues until it writes ``<|endoftext|>``.

The same pairs also train a small encoder-decoder from ``transformers`` (:func:`marian_baseline`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from helpers.batches import ShuffledBatches, length_buckets, pad
from helpers.decode import beam_search
from helpers.env import set_seed
from helpers.metrics import bleu, chrf
from helpers.model import IGNORE_INDEX
from helpers.plots import LiveLossPlot
from helpers.train import TrainConfig, Trainer


@dataclass(frozen=True)
class TranslationExample:
    """The token ids of ``source <|sep|> target <|endoftext|>`` and ``target_start``, the index of the first
    target token in ``ids`` (the token after ``<|sep|>``).
    First used in chapter 06, section 1; section 2 explains the format."""

    ids: list[int]
    target_start: int


def format_example(tokenizer, src: str, tgt: str | None = None) -> tuple[list[int], int]:
    """``(ids, target_start)`` for ``src <|sep|> tgt <|endoftext|>``; without ``tgt``, the prompt ``src <|sep|>``
    (then ``target_start == len(ids)``: the target is what the model writes next). Taught in chapter 06, section 2."""
    if not isinstance(src, str) or (tgt is not None and not isinstance(tgt, str)):
        raise TypeError(f"format_example needs strings, got source {type(src).__name__} and target {type(tgt).__name__}.")
    ids = tokenizer.encode(src) + [tokenizer.sep_id]
    target_start = len(ids)
    if tgt is not None:
        ids += tokenizer.encode(tgt) + [tokenizer.eot_id]
    return ids, target_start


@dataclass
class PreparedPairs:
    """What :func:`prepare_pairs` kept: the ``examples``, their text ``pairs`` (same order), and ``counts`` of
    the pairs seen, dropped (by reason) and kept. First used in chapter 06, section 1."""

    examples: list[TranslationExample]
    pairs: list[tuple[str, str]]
    counts: dict[str, int]


def prepare_pairs(pairs, tokenizer, max_len: int, max_ratio: float = 2.5) -> PreparedPairs:
    """Tokenise ``(source, target)`` pairs into :class:`TranslationExample` s, dropping:

    - ``empty``: a side that is blank after stripping spaces;
    - ``misaligned``: one side over ``max_ratio`` times as many tokens as the other (the two Bibles number a few
      verses differently, so a short verse can face a long one that holds its neighbour too);
    - ``too_long``: more than ``max_len`` tokens in all (the model reads at most ``block_size`` positions).

    Taught in chapter 06, section 1.
    """
    if not isinstance(max_len, int) or max_len < 4:
        raise ValueError(f"max_len must be an integer >= 4 (source, sep, target, end), got {max_len!r}.")
    counts = {"pairs": 0, "empty": 0, "misaligned": 0, "too_long": 0, "kept": 0}
    examples, kept = [], []
    for src, tgt in pairs:
        counts["pairs"] += 1
        src, tgt = src.strip(), tgt.strip()
        if not src or not tgt:
            counts["empty"] += 1
            continue
        ids, start = format_example(tokenizer, src, tgt)
        n_src, n_tgt = start - 1, len(ids) - start - 1
        if max(n_src, n_tgt) > max_ratio * min(n_src, n_tgt):
            counts["misaligned"] += 1
        elif len(ids) > max_len:
            counts["too_long"] += 1
        else:
            examples.append(TranslationExample(ids, start))
            kept.append((src, tgt))
    counts["kept"] = len(examples)
    return PreparedPairs(examples, kept, counts)


def collate(examples: list[TranslationExample], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch ``dict(idx, targets, attention_mask)``, all (B, T) with T = longest example - 1.

    ``idx`` is each sequence without its last token, ``targets`` the same sequence shifted by one, with -100 where
    the next token is not part of the target (source and ``<|sep|>`` positions) and at padding; ``attention_mask``
    is 1 on real tokens. ``GPT.forward(**batch)`` then gives the mean cross-entropy over target tokens only.
    Taught in chapter 06, section 2."""
    if not examples:
        raise ValueError("collate needs at least one example.")
    idx, mask = pad([e.ids[:-1] for e in examples], pad_id)
    # Position t predicts ids[t + 1]: the target tokens, predicted from the <|sep|> position on, count; the rest not.
    shifted = [[IGNORE_INDEX] * (e.target_start - 1) + list(e.ids[e.target_start :]) for e in examples]
    targets, _ = pad(shifted, IGNORE_INDEX)
    return {"idx": idx, "targets": targets, "attention_mask": mask}


def default_max_new_tokens(n_source_tokens: int) -> int:
    """A cap on the translation's length from the source's: French takes about 1.1 times the tokens of English
    here; 1.5 times plus 8 leaves room without letting a model that never writes EOS run on for long.
    First used in chapter 06, section 5."""
    return math.ceil(1.5 * n_source_tokens) + 8


@torch.no_grad()
def translate(
    model,
    tokenizer,
    sources,
    method: str = "greedy",
    beam_width: int = 4,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    length_penalty: float = 1.0,
    progress: bool = False,
) -> list[str]:
    """Translate each source text; returns the decoded targets in the order of ``sources``.

    Prompts are sorted by length and decoded ``batch_size`` at a time, left-padded, with the KV cache. ``method``
    is ``"greedy"`` (``GPT.generate`` at temperature 0) or ``"beam"`` (:func:`helpers.decode.beam_search`). Each
    batch may write up to ``max_new_tokens`` tokens (default :func:`default_max_new_tokens` of its longest
    source), never more than the model's ``block_size`` leaves; a source over half of ``block_size`` tokens is
    cut to fit there (a translation of its beginning).
    First called in chapter 06, section 5 (section 3 uses it through :func:`evaluate`)."""
    if method not in ("greedy", "beam"):
        raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}.")
    sources = list(sources)
    if not sources or not all(isinstance(s, str) for s in sources):
        raise ValueError("sources must be a non-empty list of strings.")
    device = next(model.parameters()).device
    # A source longer than half the context is cut, so that every translation has room for as many tokens.
    longest = model.config.block_size // 2
    prompts = [
        p if len(p) <= longest else p[: longest - 1] + [tokenizer.sep_id]
        for p in (format_example(tokenizer, s)[0] for s in sources)
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"translating ({method})", unit="batch")
    for chunk in chunks:
        batch = [prompts[i] for i in chunk]
        T = max(len(p) for p in batch)
        n_new = min(model.config.block_size - T, max_new_tokens if max_new_tokens is not None else default_max_new_tokens(T - 1))
        if method == "beam":
            new = [
                h.tokens
                for h in beam_search(model, batch, beam_width, n_new, tokenizer.eot_id, length_penalty, pad_id=tokenizer.pad_id)
            ]
        else:
            idx, mask = pad(batch, tokenizer.pad_id, side="left")
            full = model.generate(idx.to(device), n_new, temperature=0.0, eos_id=tokenizer.eot_id, attention_mask=mask.to(device))
            gen = full[:, T:].tolist()
            new = [row[: row.index(tokenizer.eot_id)] if tokenizer.eot_id in row else row for row in gen]
        for i, ids in zip(chunk, new):
            out[i] = tokenizer.decode(ids).strip()
    return out


def finetune(
    model,
    tokenizer,
    train: list[TranslationExample],
    val: list[TranslationExample],
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 3e-4,
    warmup_steps: int | None = None,
    eval_every: int | None = None,
    patience: int | None = 3,
    weight_decay: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    live_plot: bool = False,
    after_step=None,
) -> Trainer:
    """Fine-tune ``model`` on translation examples with :class:`helpers.train.Trainer`; returns the trainer
    (its ``history``, ``best_step``, ``stopped_early``). The model is changed in place.

    Batches hold examples of similar length (:func:`length_buckets`), come in a seeded order epoch by epoch
    (:class:`helpers.batches.ShuffledBatches`) and are padded by :func:`collate`.
    The validation loss is computed on all of ``val`` every ``eval_every`` steps (default: 10 evaluations per
    run); with ``patience``, training stops after that many evaluations without a better one and keeps the best
    weights. ``warmup_steps`` defaults to 5 % of ``steps``. ``after_step`` goes to the Trainer (AdaLoRA's rank
    reallocation, chapter 07). Taught in chapter 06, section 4."""
    if not train or not val:
        raise ValueError("finetune needs training and validation examples (prepare them with prepare_pairs).")
    pad = tokenizer.pad_id
    buckets = length_buckets(train, min(batch_size, len(train)), seed=seed)
    train_batches = ShuffledBatches(buckets, 1, lambda chosen: collate(chosen[0], pad), seed=seed)
    val_batches = [collate(val[i : i + batch_size], pad) for i in range(0, len(val), batch_size)]
    cfg = TrainConfig(
        max_steps=steps,
        lr=lr,
        min_lr=lr / 10,
        weight_decay=weight_decay,
        seed=seed,
        warmup_steps=max(1, steps // 20) if warmup_steps is None else warmup_steps,
        eval_every=max(1, steps // 10) if eval_every is None else eval_every,
        patience=patience,
    )
    plot = LiveLossPlot() if live_plot else None
    trainer = Trainer(model, cfg, train_batches, val_batches, progress=progress, live_plot=plot, after_step=after_step)
    trainer.fit()
    return trainer


def evaluate(model, tokenizer, pairs, method: str = "greedy", **kwargs) -> dict:
    """Translate the sources of ``pairs`` and score them against their targets with sacreBLEU:
    ``dict(bleu=Score, chrf=Score, hyps=list[str])``. ``kwargs`` go to :func:`translate`.
    Taught in chapter 06, section 3."""
    pairs = list(pairs)
    hyps = translate(model, tokenizer, [s for s, _ in pairs], method=method, **kwargs)
    refs = [t for _, t in pairs]
    return {"bleu": bleu(hyps, refs), "chrf": chrf(hyps, refs), "hyps": hyps}


# ------------------------------------------------------------------------------------ the library way: Marian
def marian_config(tokenizer, d_model: int, layers: int, heads: int, max_positions: int):
    """A small ``MarianConfig`` on the course vocabulary: ``layers`` encoder and ``layers`` decoder layers,
    shared (tied) embeddings, pad as the decoder's start token as Marian does, no dropout.
    Not shown in a notebook: :func:`marian_baseline` (chapter 06, section 9) builds its model from it."""
    from transformers import MarianConfig

    return MarianConfig(
        vocab_size=tokenizer.vocab_size,
        decoder_vocab_size=tokenizer.vocab_size,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eot_id,
        decoder_start_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.eot_id,
        forced_eos_token_id=tokenizer.eot_id,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        scale_embedding=True,
    )


def marian_features(tokenizer, pairs) -> list[dict]:
    """``input_ids`` (source + EOS) and ``labels`` (target + EOS) per pair, for ``DataCollatorForSeq2Seq``.

    Not shown in a notebook: :func:`marian_baseline` (chapter 06, section 9) trains on them.
    """
    eos = tokenizer.eot_id
    return [{"input_ids": tokenizer.encode(s) + [eos], "labels": tokenizer.encode(t) + [eos]} for s, t in pairs]


def marian_baseline(
    tokenizer,
    train_pairs,
    val_pairs,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    d_model: int,
    layers: int,
    heads: int,
    max_positions: int,
    warmup_steps: int,
    eval_every: int,
    output_dir,
    seed: int = 0,
    progress: bool = False,
):
    """Train a ``MarianMTModel`` from scratch with ``Seq2SeqTrainer`` (``DataCollatorForSeq2Seq`` pads and makes
    the decoder inputs); returns ``(model, trainer)``. Offline: no hub, no reporting, no checkpoints written.
    ``progress`` shows the trainer's own progress bar. Taught in chapter 06, section 9."""
    from transformers import DataCollatorForSeq2Seq, MarianMTModel, Seq2SeqTrainer, Seq2SeqTrainingArguments
    from transformers.trainer_callback import PrinterCallback

    set_seed(seed)
    model = MarianMTModel(marian_config(tokenizer, d_model, layers, heads, max_positions))
    hf_tok = tokenizer.to_hf()
    args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=warmup_steps,
        lr_scheduler_type="cosine",
        weight_decay=0.1,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        eval_strategy="steps",
        eval_steps=eval_every,
        logging_steps=eval_every,
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        train_sampling_strategy="group_by_length",  # batches of similar lengths, as length_buckets does for the GPT
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=marian_features(tokenizer, train_pairs),
        eval_dataset=marian_features(tokenizer, val_pairs),
        data_collator=DataCollatorForSeq2Seq(hf_tok, model=model),
        processing_class=hf_tok,
    )
    trainer.remove_callback(PrinterCallback)  # the losses stay in trainer.state.log_history, unprinted
    trainer.train()
    return model, trainer


@torch.no_grad()
def marian_translate(model, tokenizer, sources, batch_size: int = 32, num_beams: int = 1) -> list[str]:
    """Translate with a Marian model (greedy by default), batched by length like :func:`translate`, with the same
    cap on the output's length. Taught in chapter 06, section 9."""
    model.eval()
    device = next(model.parameters()).device
    limit = model.config.max_position_embeddings - 1  # the decoder's longest output
    enc = [tokenizer.encode(s)[: limit - 1] + [tokenizer.eot_id] for s in sources]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out: list[str] = [""] * len(enc)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = pad([enc[i] for i in chunk], tokenizer.pad_id)
        T = ids.size(1)
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            num_beams=num_beams,
            do_sample=False,
            max_new_tokens=min(default_max_new_tokens(T - 1), limit),
        )
        for i, row in zip(chunk, gen.tolist()):
            out[i] = tokenizer.decode(row).strip()
    return out
