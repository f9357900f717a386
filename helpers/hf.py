"""Our GPT <-> Hugging Face ``transformers``' GPT2LMHeadModel, weight for weight (chapter 03's parity check, section 7).

The two models have the same parameters under the same names. One difference in layout: GPT-2's ``Conv1D`` layers
store their weight as (in, out), the transpose of ``nn.Linear``'s (out, in), so those four matrices are transposed
on the way. GPT-2's activation ``gelu_new`` is the tanh approximation of GELU that our MLP uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers.env import eval_mode
from helpers.model import GPT, GPTConfig

#: The weights that GPT-2 keeps in Conv1D layers, stored transposed with respect to ours.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
#: GPT-2's names for the tanh-approximated GELU.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
_TIED = "lm_head.weight"


def _first_param(model):
    return next(model.parameters())


def hf_config(config: GPTConfig, attn_implementation: str = "sdpa"):
    """The ``transformers.GPT2Config`` of the same architecture as ``config`` (chapter 03, section 7)."""
    from transformers import GPT2Config

    if not config.bias or not config.causal:
        raise ValueError(
            f"GPT-2 has biases everywhere and is causal; this GPTConfig has bias={config.bias}, causal={config.causal}, "
            "which GPT2LMHeadModel cannot represent."
        )
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=4 * config.n_embd,
        activation_function="gelu_new",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=1e-5,  # nn.LayerNorm's default, which our blocks use
        tie_word_embeddings=True,
        bos_token_id=None,  # GPT-2's 50256 may not exist in a smaller vocabulary
        eos_token_id=None,
        attn_implementation=attn_implementation,
    )


def to_hf(model: GPT, attn_implementation: str = "sdpa"):
    """A ``transformers.GPT2LMHeadModel`` with ``model``'s weights (copied), device, dtype and train/eval mode.

    Taught in chapter 03, section 7; chapter 04, section 9 exports the trained model with it.
    """
    from transformers import GPT2LMHeadModel

    if not isinstance(model, GPT):
        raise TypeError(f"to_hf converts a helpers.model.GPT, got {type(model).__name__}.")
    param = _first_param(model)
    hf = GPT2LMHeadModel(hf_config(model.config, attn_implementation)).to(device=param.device, dtype=param.dtype)
    state = {name: t.t() if name.endswith(CONV1D_WEIGHTS) else t for name, t in model.state_dict().items() if name != _TIED}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if set(missing) - {_TIED} or unexpected:
        raise RuntimeError(f"Weights do not map one to one: missing in ours {missing}, unknown to GPT-2 {unexpected}.")
    if hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr():
        raise RuntimeError("The exported model's lm_head is not tied to its token embedding; check the transformers version.")
    return hf.train(model.training)


def from_hf(hf_model) -> GPT:
    """Our ``GPT`` with the weights (copied), device, dtype and train/eval mode of a ``GPT2LMHeadModel``.

    Taught in chapter 03, section 7.
    """
    from transformers import GPT2LMHeadModel

    if not isinstance(hf_model, GPT2LMHeadModel):
        raise TypeError(f"from_hf converts a transformers GPT2LMHeadModel, got {type(hf_model).__name__}.")
    c = hf_model.config
    problems = []
    if c.activation_function not in TANH_GELUS:
        problems.append(f"activation_function={c.activation_function!r} (ours is the tanh GELU, {TANH_GELUS})")
    if c.n_inner not in (None, 4 * c.n_embd):
        problems.append(f"n_inner={c.n_inner} (ours is 4 * n_embd)")
    if c.layer_norm_epsilon != 1e-5:
        problems.append(f"layer_norm_epsilon={c.layer_norm_epsilon} (ours is 1e-5)")
    if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx or c.add_cross_attention:
        problems.append("non-standard attention (scaling by layer index, unscaled, or cross-attention)")
    if hf_model.lm_head.weight.data_ptr() != hf_model.transformer.wte.weight.data_ptr():
        problems.append("an lm_head not tied to the token embedding (ours is tied)")
    if problems:
        raise ValueError("This GPT-2 differs from our GPT: " + "; ".join(problems) + ".")
    config = GPTConfig(
        vocab_size=c.vocab_size,
        block_size=c.n_positions,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        dropout=float(c.resid_pdrop),
        bias=True,
        causal=True,
    )
    param = _first_param(hf_model)
    model = GPT(config).to(device=param.device, dtype=param.dtype)
    state = {
        name: t.t() if name.endswith(CONV1D_WEIGHTS) else t
        for name, t in hf_model.state_dict().items()
        if name != _TIED and not name.endswith((".attn.bias", ".attn.masked_bias"))  # older versions' mask buffers
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - {_TIED} or unexpected:
        raise RuntimeError(f"Weights do not map one to one: missing in GPT-2 {missing}, unknown to ours {unexpected}.")
    return model.train(hf_model.training)


@torch.no_grad()
def max_logit_diff(model: GPT, hf_model, idx: torch.Tensor) -> float:
    """The largest absolute difference between the two models' logits on ``idx`` (B, T), both in eval mode.

    Taught in chapter 03, section 7.
    """
    with eval_mode(model, hf_model):
        ours, _ = model(idx)
        theirs = hf_model(input_ids=idx).logits
    return (ours - theirs).abs().max().item()


class CourseLM(torch.nn.Module):
    """A ``transformers`` causal LM (or a ``peft`` model around one) that reads the course's batches:
    ``forward(idx, targets=None, attention_mask=None)`` returns ``(logits, loss)`` as our GPT does, so that
    :class:`helpers.train.Trainer` and :func:`helpers.recipes.translation.finetune` train it.

    In training the loss is the library's own, so that what a wrapper adds to it counts (``peft``'s AdaLoRA adds
    its orthogonality penalty there). The library shifts labels itself (position t predicts label t + 1), while our
    ``targets`` are already shifted; one padding position appended after the tokens, unseen by any earlier one,
    lets the two agree on every target. In eval mode the loss is the plain cross-entropy over the targets, as our
    GPT computes it, so that validation losses compare across models.

    Chapter 07 trains AdaLoRA with it.
    """

    def __init__(self, hf_model, pad_id: int = 0):
        super().__init__()
        self.hf_model, self.pad_id = hf_model, pad_id

    def forward(self, idx, targets=None, attention_mask=None):
        if targets is None or not self.training:
            logits = self.hf_model(input_ids=idx, attention_mask=attention_mask).logits
            loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            return logits, loss
        B = idx.size(0)
        input_ids = torch.cat([idx, idx.new_full((B, 1), self.pad_id)], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones_like(idx)
        attention_mask = torch.cat([attention_mask, attention_mask.new_zeros(B, 1)], dim=1)
        labels = torch.cat([targets.new_full((B, 1), -100), targets], dim=1)
        out = self.hf_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return out.logits[:, :-1], out.loss
