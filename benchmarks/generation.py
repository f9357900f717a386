"""Generation: our ``GPT.generate`` with and without the key/value cache, and transformers' ``generate``.

One prompt (batch 1), greedy decoding, a fixed number of new tokens (no end-of-text token, so none stops early).
The library model is our model exported with :func:`helpers.hf.to_hf`, so all three must produce the very same
tokens; the section fails if they do not.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from benchmarks.common import Section, interleaved
from benchmarks.training import COURSE_VOCAB, size_label
from helpers.hf import to_hf
from helpers.model import GPT, GPTConfig
from helpers.recipes.pretrain import model_config

COLUMNS = [
    "model",
    "new tokens",
    "ours cache tok/s",
    "ours no-cache tok/s",
    "HF generate tok/s",
    "cache / no-cache",
    "ours cache / HF",
    "same tokens",
]


def _difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} and {tuple(b.shape)}"
    return f"first at position {int((a != b).nonzero()[0, 1])}"


def generation(device: torch.device, tiny: bool = False) -> Section:
    if tiny:
        config = GPTConfig(vocab_size=97, block_size=48, n_layer=2, n_head=2, n_embd=32)
        prompt_len, lengths, warmup, repeats = 8, (8, 16), 1, 2
    else:  # chapter 04's model with room for a 16-token prompt and 256 new tokens under the cache
        config = replace(model_config(COURSE_VOCAB), block_size=512)
        prompt_len, lengths, warmup, repeats = 16, (64, 256), 1, 3
    import transformers

    transformers.logging.set_verbosity_error()  # generate() advises on settings we chose on purpose
    torch.manual_seed(0)
    ours = GPT(config).to(device).eval()
    hf = to_hf(ours).eval()
    prompt = torch.randint(0, config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1)).to(device)
    section = Section("generation", "Generation (greedy, batch 1, tokens/s)", COLUMNS)
    for n in lengths:
        fns = {
            "cache": lambda n=n: ours.generate(prompt, n, temperature=0.0, use_cache=True),
            "no cache": lambda n=n: ours.generate(prompt, n, temperature=0.0, use_cache=False),
            "HF": lambda n=n: hf.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False, pad_token_id=0
            ),
        }
        outputs = {name: fn() for name, fn in fns.items()}
        for name, out in outputs.items():
            if not torch.equal(out, outputs["cache"]):
                where = _difference(out, outputs["cache"])
                raise RuntimeError(f"Greedy tokens of '{name}' differ from ours with the cache ({where}).")
        seconds = interleaved(fns, device, warmup, repeats)
        tps = {name: n / s for name, s in seconds.items()}
        section.rows.append(
            {
                "model": size_label(config),
                "new tokens": n,
                "ours cache tok/s": tps["cache"],
                "ours no-cache tok/s": tps["no cache"],
                "HF generate tok/s": tps["HF"],
                "cache / no-cache": tps["cache"] / tps["no cache"],
                "ours cache / HF": tps["cache"] / tps["HF"],
                "same tokens": True,
            }
        )
    section.notes += [
        f"Prompt of {prompt_len} random tokens, greedy (temperature 0 / do_sample=False), float32; "
        f"{warmup} warm-up and {repeats} timed runs each, in turns; tokens/s = new tokens / median time.",
        "Targets: cache >= 5x no-cache at the longest length; ours with cache >= 1.0x transformers' generate.",
    ]
    return section
