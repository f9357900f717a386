"""Parameter-efficient fine-tuning (chapter 07): small trainable modules added to a frozen model.

- **LoRA** (:class:`LoRALinear`, :func:`add_lora`): a linear layer ``W x`` becomes ``W x + (alpha / r) B A x`` with
  ``A`` (r, in) and ``B`` (out, r) trained and ``W`` frozen; ``B`` starts at zero, so training starts from the
  base model. Wraps any ``nn.Linear`` by name, in our GPT (``c_attn``, ``c_proj``, ``c_fc``) or a ``transformers``
  model (``q_proj``, ``v_proj``...). Merging adds ``B A`` into ``W``: no extra cost at inference.
- **Bottleneck adapters** (Houlsby et al. 2019, :func:`add_bottleneck_adapters`): ``h + up(gelu(down(h)))`` after
  the attention and after the MLP of every block; ``up`` starts at zero.
- **Prompt tuning** (:class:`PromptTuning`): ``P`` learned vectors read before the tokens (the GPT's
  ``prefix_embeds``).
- **Prefix tuning** (:class:`PrefixTuning`): learned keys and values for ``P`` positions in every layer, a learned
  KV cache that every token attends to.

Each adds parameter names of its own and leaves the base model's names as they are, apart from the wrapped Linear
layers of LoRA (``c_attn.weight`` becomes ``c_attn.base.weight``). :func:`save_adapter` and :func:`load_adapter`
store only the trained tensors (a few hundred KB instead of the whole model), in safetensors.

Each is proved equal to ``peft``'s where the definitions match (chapter 07 and tests/test_adapters.py). AdaLoRA,
which reallocates ranks during training, is used through ``peft`` itself (:func:`add_adalora`).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from helpers.decode import KVCache
from helpers.env import atomic_write_bytes

#: The Linear layers of our GPT that LoRA wraps by default: attention's fused q/k/v and output, the MLP's two.
GPT_LINEARS = ("c_attn", "c_proj", "c_fc")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``model``; returns it.

    Chapter 07.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of ``model``, a tied tensor counted once (as ``peft`` counts them).

    Chapter 07.
    """
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ------------------------------------------------------------------------------------------------------- LoRA
class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B A dropout(x)``, with ``base`` (an ``nn.Linear``) frozen.

    ``A`` is initialised like a Linear layer's weight (Kaiming-uniform) and ``B`` at zero, as in the LoRA paper and
    ``peft``: the wrapped layer first computes exactly what ``base`` did, and the gradient reaches ``B`` first.
    :meth:`merge` adds the update into ``base.weight`` (then the layer costs what ``base`` costs);
    :meth:`unmerge` takes it out again.

    Chapter 07.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}.")
        _positive_int("r", r)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}.")
        self.base = freeze(base)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update that LoRA adds to the weight, ``(alpha / r) * B @ A``: (out_features, in_features), rank <= r."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        # Two thin products, (.., in) -> (.., r) -> (.., out), never the full (out, in) matrix B @ A.
        return y + self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into ``base.weight``; the forward pass then skips the LoRA path."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of ``base.weight`` again (up to rounding), so that training can go on."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def _matches(name: str, targets) -> bool:
    """``targets``: module names (the last part of the dotted name, e.g. "c_attn") or a regular expression matched
    against the whole dotted name (e.g. r"h\\.[0-3]\\.attn\\.c_attn")."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name.rsplit(".", 1)[-1] in targets


def add_lora(
    model: nn.Module, targets: str | Iterable[str] = GPT_LINEARS, r: int = 8, alpha: float = 16.0, dropout: float = 0.0
) -> list[str]:
    """Freeze ``model`` and wrap each ``nn.Linear`` named by ``targets`` in a :class:`LoRALinear`; returns their names.

    ``targets``: a list of module names (the last part of the dotted name: ``("c_attn",)`` wraps every layer's
    ``transformer.h.<i>.attn.c_attn``) or one regular expression for the whole dotted name. The model is changed in
    place; only the LoRA matrices are trainable afterwards. Weight tying is left alone (``lm_head`` is not wrapped
    unless named).

    Chapter 07.
    """
    if not isinstance(targets, str):
        targets = tuple(targets)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("The model already has LoRA layers; add them once (or start again from the base model).")
    chosen = [name for name in linears if _matches(name, targets)]
    if not chosen:
        names = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(f"No nn.Linear of the model matches targets={targets!r}; its Linear layers are named {names}.")
    freeze(model)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(linears[name], r, alpha, dropout))
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` layers of ``model`` by name.

    Chapter 07.
    """
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Inside the ``with`` block every :class:`LoRALinear` of ``model`` computes its base layer only, so the model
    is the base model again without a copy; the updates come back afterwards. Refuses merged layers (their update
    is inside the base weight).

    Taught in chapter 09, section 6.
    """
    layers = list(lora_layers(model).values())
    if not layers:
        raise ValueError("The model has no LoRA layers to disable (add_lora adds them).")
    if any(layer.merged for layer in layers):
        raise ValueError("Some LoRA layers are merged into their base weights: unmerge_lora(model) before disabling them.")
    scalings = [layer.scaling for layer in layers]
    for layer in layers:
        layer.scaling = 0.0
    try:
        yield model
    finally:
        for layer, scaling in zip(layers, scalings):
            layer.scaling = scaling


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer into its base weight (:meth:`LoRALinear.merge`); returns ``model``.

    Chapter 07.
    """
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`; returns ``model``.

    Chapter 07.
    """
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def remove_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Put plain ``nn.Linear`` layers back: with the update merged in (``merge=True``, e.g. to export the model with
    :func:`helpers.hf.to_hf`), or the original weights (``merge=False``). Returns ``model``.

    Chapter 07.
    """
    for name, layer in lora_layers(model).items():
        layer.merge() if merge else layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.base)
    return model


# -------------------------------------------------------------------------------------------- bottleneck adapters
class BottleneckAdapter(nn.Module):
    """``h + up(gelu(down(h)))``, down to ``bottleneck`` dimensions and back; ``up`` starts at zero (identity).

    Chapter 07.
    """

    def __init__(self, n_embd: int, bottleneck: int = 16):
        super().__init__()
        self.down = nn.Linear(n_embd, _positive_int("bottleneck", bottleneck))
        self.up = nn.Linear(bottleneck, n_embd)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


def _apply_adapter(module: nn.Module, args, output):
    return module.adapter(output)


def add_bottleneck_adapters(model: nn.Module, bottleneck: int = 16) -> list[str]:
    """Freeze our GPT ``model`` and add a :class:`BottleneckAdapter` to the output of every block's attention and
    MLP (Houlsby-style), as a submodule ``adapter`` of each (``transformer.h.0.attn.adapter.down.weight``...) run
    by a forward hook, so the base model's own parameter names stay. Returns the names of the adapted modules.

    Chapter 07.
    """
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None:
        raise TypeError("add_bottleneck_adapters works on helpers.model.GPT (it needs model.transformer.h).")
    if any(isinstance(m, BottleneckAdapter) for m in model.modules()):
        raise ValueError("The model already has bottleneck adapters; add them once.")
    freeze(model)
    names = []
    for i, block in enumerate(blocks):
        for part in ("attn", "mlp"):
            module = getattr(block, part)
            ref = module.c_proj.weight
            module.adapter = BottleneckAdapter(model.config.n_embd, bottleneck).to(device=ref.device, dtype=ref.dtype)
            module.register_forward_hook(_apply_adapter)
            names.append(f"transformer.h.{i}.{part}")
    return names


# ----------------------------------------------------------------------------------------- prompt and prefix tuning
class PromptTuning(nn.Module):
    """A frozen GPT that reads ``n_virtual`` learned vectors before the tokens (Lester et al. 2021).

    The vectors go in as the model's ``prefix_embeds``: they take positions 0..P-1, every token attends to them, and
    they give no logits, so ``forward`` has the GPT's signature and output. Initialised from the embeddings of
    random vocabulary tokens (``init_ids`` to choose them, e.g. the tokens of a task description).

    Chapter 07.
    """

    def __init__(self, model: nn.Module, n_virtual: int = 20, init_ids: Iterable[int] | None = None, seed: int = 0):
        super().__init__()
        self.model = freeze(model)
        wte = model.transformer.wte.weight
        if init_ids is None:
            generator = torch.Generator().manual_seed(seed)
            init_ids = torch.randint(wte.size(0), (_positive_int("n_virtual", n_virtual),), generator=generator)
        ids = torch.as_tensor(list(init_ids) if not isinstance(init_ids, torch.Tensor) else init_ids, dtype=torch.long)
        if ids.numel() != n_virtual:
            raise ValueError(f"init_ids must give n_virtual={n_virtual} token ids, got {ids.numel()}.")
        self.prompt = nn.Parameter(wte.detach()[ids.to(wte.device)].clone())

    @property
    def config(self):
        """The model's config with ``block_size`` lowered by the prompt's length: the positions left for tokens."""
        return replace(self.model.config, block_size=self.model.config.block_size - self.prompt.size(0))

    def prefix(self, batch_size: int) -> torch.Tensor:
        """The learned vectors for a batch: (batch_size, n_virtual, n_embd)."""
        return self.prompt.expand(batch_size, -1, -1)

    def forward(self, idx, targets=None, attention_mask=None):
        return self.model(idx, targets, attention_mask, prefix_embeds=self.prefix(idx.size(0)))

    def generate(self, idx, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """``GPT.generate`` with the learned prompt before ``idx``."""
        return self.model.generate(idx, max_new_tokens, prefix_embeds=self.prefix(idx.size(0)), **kwargs)


class PrefixTuning(nn.Module):
    """A frozen GPT whose every layer attends to ``n_virtual`` learned keys and values first (Li & Liang 2021).

    A learned KV cache: each call starts a :class:`helpers.decode.KVCache` holding the prefix's keys and values,
    and the tokens take positions P, P+1, ... after it, as they would after P real tokens. The parameter ``prefix``
    is (n_virtual, n_layer * 2 * n_embd): per position, layer 0's keys then values, then layer 1's..., each split
    into heads, which is ``peft``'s ``PrefixTuningConfig(prefix_projection=False)`` layout. The paper's
    reparameterisation (an MLP producing the prefix during training) is left out.

    Chapter 07.
    """

    def __init__(self, model: nn.Module, n_virtual: int = 20, seed: int = 0):
        super().__init__()
        self.model = freeze(model)
        c = model.config
        self.n_virtual = _positive_int("n_virtual", n_virtual)
        generator = torch.Generator().manual_seed(seed)
        ref = model.transformer.wte.weight
        prefix = torch.randn(n_virtual, c.n_layer * 2 * c.n_embd, generator=generator)
        self.prefix = nn.Parameter(prefix.to(device=ref.device, dtype=ref.dtype))

    @property
    def config(self):
        """The model's config with ``block_size`` lowered by the prefix's length: the positions left for tokens."""
        return replace(self.model.config, block_size=self.model.config.block_size - self.n_virtual)

    def cache(self, batch_size: int, max_len: int) -> KVCache:
        """A KV cache for ``batch_size`` rows and ``max_len`` positions, holding the prefix in its first P."""
        c = self.model.config
        cache = KVCache(c, batch_size, max_len)
        P, hd = self.n_virtual, c.n_embd // c.n_head
        kv = self.prefix.view(P, c.n_layer, 2, c.n_head, hd).permute(1, 2, 3, 0, 4)  # (layer, k/v, head, P, hd)
        for layer in range(c.n_layer):
            k, v = (t.unsqueeze(0).expand(batch_size, -1, -1, -1) for t in kv[layer])
            cache.update(layer, k, v)
        cache.length = P
        return cache

    def forward(self, idx, targets=None, attention_mask=None):
        B, T = idx.shape
        if self.n_virtual + T > self.model.config.block_size:
            raise ValueError(
                f"The prefix ({self.n_virtual}) + {T} tokens is more than block_size={self.model.config.block_size}; "
                "shorten the input or use fewer virtual tokens."
            )
        return self.model(idx, targets, attention_mask, cache=self.cache(B, self.n_virtual + T))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """``GPT.generate`` continuing after the learned prefix (a cache that holds it)."""
        B, T = idx.shape
        if self.n_virtual + T + max_new_tokens > self.model.config.block_size:
            raise ValueError(
                f"The prefix ({self.n_virtual}) + prompt ({T}) + max_new_tokens ({max_new_tokens}) is more than "
                f"block_size={self.model.config.block_size}; lower max_new_tokens or shorten the prompt."
            )
        return self.model.generate(idx, max_new_tokens, cache=self.cache(B, self.n_virtual + T + max_new_tokens), **kwargs)


# ------------------------------------------------------------------------------------------ AdaLoRA, with peft
def add_adalora(
    model: nn.Module,
    *,
    total_step: int,
    init_r: int = 12,
    target_r: int = 8,
    tinit: int = 0,
    tfinal: int = 0,
    delta_t: int = 1,
    alpha: float = 16.0,
    targets: Iterable[str] = GPT_LINEARS,
    orth_reg_weight: float = 0.5,
):
    """``peft``'s AdaLoRA (Zhang et al. 2023) on a ``transformers`` export of our GPT ``model`` (left as it is).

    AdaLoRA writes each update as ``P diag(E) Q`` (an SVD-like form, kept near-orthogonal by a penalty in the loss)
    and starts every matrix at rank ``init_r``. After ``tinit`` warm-up steps it scores each singular value's
    importance from its gradients, every ``delta_t`` steps, and masks the least important ones until, ``tfinal``
    steps before ``total_step``, ``target_r`` per matrix are left on average: the ranks go where they help most.
    GPT-2's ``Conv1D`` layers store weights as (in, out), hence ``fan_in_fan_out=True``.

    Returns ``(lm, after_step)``: ``lm`` a :class:`helpers.hf.CourseLM` around the ``peft`` model, trainable with
    :class:`helpers.train.Trainer` (or ``finetune``) when ``after_step`` is passed to it (it reallocates the ranks
    after each update, as ``peft`` asks). Chapter 07.
    """
    from peft import AdaLoraConfig, get_peft_model

    from helpers.hf import CourseLM, to_hf

    config = AdaLoraConfig(
        task_type="CAUSAL_LM",
        target_modules=list(targets),
        fan_in_fan_out=True,
        init_r=_positive_int("init_r", init_r),
        target_r=_positive_int("target_r", target_r),
        tinit=tinit,
        tfinal=tfinal,
        deltaT=_positive_int("delta_t", delta_t),
        total_step=_positive_int("total_step", total_step),
        lora_alpha=alpha,
        lora_dropout=0.0,
        orth_reg_weight=orth_reg_weight,
    )
    if target_r > init_r or tinit + tfinal >= total_step:
        raise ValueError(
            f"AdaLoRA needs target_r <= init_r (got {target_r} > {init_r}) and tinit + tfinal < total_step "
            f"(got {tinit} + {tfinal} >= {total_step}): there must be steps in between to reallocate ranks."
        )
    peft_model = get_peft_model(to_hf(model), config)
    lm = CourseLM(peft_model, pad_id=0)

    def after_step(trainer) -> None:
        peft_model.base_model.update_and_allocate(trainer.step - 1)  # the index of the update just made

    return lm, after_step


def adalora_ranks(lm) -> dict[str, int]:
    """The rank AdaLoRA keeps for each adapted matrix of an :func:`add_adalora` model, by module name
    (``transformer.h.0.attn.c_attn``...): ``init_r`` for each before any reallocation. Chapter 07."""
    peft_model = lm.hf_model
    config = peft_model.peft_config["default"]
    # peft names a matrix's singular values "<module>.lora_E.default", and drops ".default" when it saves the model.
    module = lambda name: re.sub(r"\.lora_E(\.default)?$", "", name.removeprefix("base_model.model."))  # noqa: E731
    if config.rank_pattern:
        return {module(name): int(sum(kept)) for name, kept in config.rank_pattern.items()}
    return {module(n): config.init_r for n, _ in peft_model.named_parameters() if ".lora_E" in n}


def adalora_to_gpt(lm) -> nn.Module:
    """Our GPT with an :func:`add_adalora` model's updates merged into its weights (``peft``'s ``merge_and_unload``,
    then :func:`helpers.hf.from_hf`), to decode and score like any other. The ``peft`` model is used up. Chapter 07."""
    from helpers.hf import from_hf

    return from_hf(lm.hf_model.merge_and_unload())


# ------------------------------------------------------------------------------------------- saving adapters
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of ``model`` (what an adapter adds), by parameter name, detached on the CPU.

    Chapter 07.
    """
    state = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    if not state:
        raise ValueError("The model has no trainable parameters: add LoRA, adapters or a prompt before saving them.")
    return state


def save_adapter(model: nn.Module, path) -> Path:
    """Save only the trainable tensors of ``model`` to the safetensors file ``path`` (atomically); returns it.

    Chapter 07.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(adapter_state_dict(model)))
    return path


def load_adapter(model: nn.Module, path) -> nn.Module:
    """Load a :func:`save_adapter` file into ``model``, which must have the same adapters (same names and shapes)
    added; everything is checked before anything is copied. Returns ``model``.

    Chapter 07.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No adapter file at {path}; save one with save_adapter(model, path).")
    saved = load_file(path)
    own = dict(model.named_parameters())
    expected = {name for name, p in own.items() if p.requires_grad}
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved)), sorted(set(saved) - expected)
        raise ValueError(
            f"{path} does not fit this model's adapters (missing {missing[:3]}, unknown {extra[:3]}); add the same "
            "adapters with the same settings before loading."
        )
    wrong = [n for n, t in saved.items() if t.shape != own[n].shape]
    if wrong:
        raise ValueError(f"{path}: shapes differ for {wrong[:3]} (another rank or size); use the settings it was saved with.")
    with torch.no_grad():
        for name, tensor in saved.items():
            own[name].copy_(tensor)
    return model
