"""helpers.train and helpers.plots on tiny models: the loop learns, resumes bit for bit, and stops safely, naming
why (helpers.checkpoint has its own tests)."""

import math
import random

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.batches import RandomWindows, eval_batches
from helpers.checkpoint import load_model_state
from helpers.env import set_seed
from helpers.train import History, NonFiniteLossError, TrainConfig, Trainer, decay_groups, lr_at

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from helpers.plots import LiveLossPlot, plot_history, plot_lr_schedule  # noqa: E402

VOCAB = 11
TOKENS = torch.arange(3000) % VOCAB  # the next token is always (t + 1) mod 11: learnable by a bigram model
VAL = eval_batches(TOKENS[:400], block_size=8, batch_size=8, n_batches=2)


class TinyLM(nn.Module):
    """A bigram language model with the parts that matter here: tied embeddings, LayerNorm, biases, dropout."""

    def __init__(self, vocab=VOCAB, dim=8, dropout=0.1):
        super().__init__()
        self.config = {"vocab": vocab, "dim": dim, "dropout": dropout}
        self.wte = nn.Embedding(vocab, dim)
        self.ln = nn.LayerNorm(dim)
        self.mlp = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.lm_head = nn.Linear(dim, vocab)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets=None, loss_scale=1.0):
        logits = self.lm_head(self.drop(torch.relu(self.mlp(self.ln(self.wte(idx))))))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten()) * loss_scale
        return logits, loss


pytestmark = pytest.mark.usefixtures("one_thread")


def make_trainer(seed=0, dropout=0.1, train_batches=None, val=VAL, **overrides):
    set_seed(seed)
    model = TinyLM(dropout=dropout)
    settings = {"max_steps": 12, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 3, "eval_every": 3, **overrides}
    batches = train_batches or RandomWindows(TOKENS, block_size=8, batch_size=4, seed=0)
    return Trainer(model, TrainConfig(**settings), batches, val, progress=False)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- schedule and parameter groups -------------------------------------------------------------------------


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = TrainConfig(max_steps=110, lr=1.0, min_lr=0.1, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(130)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)  # halfway through the cosine: the mean of lr and min_lr
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[110] == lrs[129] == pytest.approx(0.1)
    assert lr_at(0, TrainConfig(max_steps=5, lr=2.0, warmup_steps=0)) == pytest.approx(2.0)


def test_config_rejects_bad_settings_clearly():
    with pytest.raises(ValueError, match="warmup_steps must be between 0 and max_steps \\(30\\)"):
        TrainConfig(max_steps=30)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(max_steps=5, warmup_steps=0, mixed_precision="fp8")
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(max_steps=5, warmup_steps=0, lr=1e-4, min_lr=1e-3)


def test_decay_groups_decay_matrices_only_and_list_tied_weights_once():
    model = TinyLM()
    decay, no_decay = decay_groups(model, weight_decay=0.1)
    assert decay["names"] == ["wte.weight", "mlp.weight"] and decay["weight_decay"] == 0.1
    assert no_decay["names"] == ["ln.weight", "ln.bias", "mlp.bias", "lm_head.bias"] and no_decay["weight_decay"] == 0.0
    assert decay["params"][0] is model.lm_head.weight  # the tied output weight is the embedding, listed once
    model.mlp.requires_grad_(False)
    assert [g["names"] for g in decay_groups(model, 0.1)] == [["wte.weight"], ["ln.weight", "ln.bias", "lm_head.bias"]]


# ---- the loop ------------------------------------------------------------------------------------------------


def test_loss_falls_and_history_is_recorded():
    trainer = make_trainer(max_steps=30, eval_every=10, lr=5e-2)
    history = trainer.fit()
    assert isinstance(history, History) and [r["step"] for r in history] == list(range(1, 31))
    vals = [r["val_loss"] for r in history if r["val_loss"] is not None]
    assert len(vals) == 3
    assert vals[-1] < 0.5 * math.log(VOCAB) and vals[-1] < vals[0]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert trainer.evaluate() == pytest.approx(vals[-1], rel=1e-6)
    assert trainer.best_val == min(vals) and trainer.best_step == 30
    frame = history.to_frame()
    assert list(frame.columns) == list(History.COLUMNS) and frame.shape == (30, 7)
    assert frame["val_loss"].notna().sum() == 3 and (frame["tokens_per_s"] > 0).all()
    assert frame["elapsed_s"].is_monotonic_increasing
    assert frame["lr"].iloc[2] == pytest.approx(5e-2) and frame["lr"].iloc[-1] < 2e-3


def test_fit_continues_where_it_stopped():
    trainer = make_trainer(max_steps=6)
    trainer.fit(steps=4)
    assert trainer.step == 4
    trainer.fit()
    assert trainer.step == 6 and len(trainer.history) == 6
    trainer.fit(steps=2)  # past max_steps: at min_lr
    assert trainer.step == 8 and trainer.history[-1]["lr"] == pytest.approx(1e-3)


def test_gradient_accumulation_equals_one_big_batch():
    big = RandomWindows(TOKENS, block_size=8, batch_size=8, seed=3)

    def halves(i):
        x, y = big(i // 2)
        part = slice(0, 4) if i % 2 == 0 else slice(4, 8)
        return x[part], y[part]

    one = make_trainer(dropout=0.0, train_batches=big, max_steps=5)
    two = make_trainer(dropout=0.0, train_batches=halves, max_steps=5, grad_accum=2)
    one.fit()
    two.fit()
    for key in ("train_loss", "grad_norm", "val_loss"):
        a = [r[key] for r in one.history if r[key] is not None]
        b = [r[key] for r in two.history if r[key] is not None]
        assert a == pytest.approx(b, rel=1e-5), key
    for (name, p), q in zip(one.model.named_parameters(), two.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    straight = make_trainer()
    straight.fit()

    first = make_trainer(checkpoint_dir=tmp_path)
    first.fit(steps=6)
    next_draws = (random.random(), np.random.rand(), torch.rand(1))
    resumed = make_trainer(seed=123, checkpoint_dir=tmp_path)  # fresh model, optimizer and RNG
    resumed.load(tmp_path / "last")
    assert (random.random(), np.random.rand(), torch.rand(1)) == next_draws  # Python, NumPy and torch RNG restored
    resumed.load(tmp_path / "last")  # again, to undo those draws
    assert resumed.step == 6 and len(resumed.history) == 6
    resumed.fit()

    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    for key in ("train_loss", "val_loss", "lr", "grad_norm"):
        assert [r[key] for r in straight.history] == [r[key] for r in resumed.history], key
    assert resumed.best_val == straight.best_val and resumed.best_step == straight.best_step
    assert resumed.history[-1]["elapsed_s"] > resumed.history[5]["elapsed_s"]


def test_early_stopping_keeps_the_best_weights(tmp_path):
    class Scalar(nn.Module):
        """Training pulls w towards 3; the validation loss is lowest at w = 1 and rises past it."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, target):
            return self.w, (self.w - target).pow(2).mean()

    set_seed(0)
    model = Scalar()
    cfg = TrainConfig(
        max_steps=100,
        lr=0.1,
        min_lr=0.1,
        warmup_steps=0,
        weight_decay=0.0,
        grad_clip=None,
        eval_every=2,
        patience=3,
        checkpoint_dir=str(tmp_path),
    )
    trainer = Trainer(model, cfg, lambda i: (torch.full((4,), 3.0),), [(torch.full((4,), 1.0),)], progress=False)
    trainer.fit()
    vals = [r["val_loss"] for r in trainer.history if r["val_loss"] is not None]
    assert trainer.stopped_early and trainer.step == trainer.best_step + 2 * 3 < 100
    assert trainer.best_val == min(vals) and vals[-1] > trainer.best_val
    assert abs(model.w.item() - 1) < 0.2
    assert trainer.evaluate() == pytest.approx(trainer.best_val)  # the model holds the best weights again
    saved = Scalar()
    load_model_state(saved, tmp_path / "best")
    assert saved.w.item() == model.w.item()
    trainer.fit()
    assert trainer.step == trainer.best_step + 6  # a stopped run does not go on


def poisoned_from(i_bad, poison):
    """The tiny task's training batches, with ``poison(x, y) -> batch`` from micro-batch ``i_bad`` on."""
    windows = RandomWindows(TOKENS, block_size=8, batch_size=4, seed=0)
    return lambda i: poison(*windows(i)) if i >= i_bad else windows(i)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    poisoned = poisoned_from(6, lambda x, y: {"idx": x, "targets": y, "loss_scale": float("nan")})
    trainer = make_trainer(train_batches=poisoned, max_steps=20, checkpoint_dir=tmp_path, checkpoint_every=2)
    with pytest.raises(
        NonFiniteLossError,
        match=r"training loss is nan at step 7 .*likely cause is the learning rate.*"
        r"The last good checkpoint, from step 6",
    ) as err:
        trainer.fit()
    assert err.value.step == 7 and trainer.step == 6
    good = TinyLM()
    load_model_state(good, tmp_path / "last")
    for (name, p), q in zip(good.named_parameters(), trainer.model.parameters()):
        assert torch.isfinite(p).all() and torch.equal(p, q), name  # the NaN step changed no weight
    assert make_trainer(checkpoint_dir=tmp_path).load(tmp_path / "last").step == 6  # and the checkpoint resumes


def all_ignored(x, y):
    return x, torch.full_like(y, -100)


def nan_in_a_weight(trainer):
    with torch.no_grad():
        trainer.model.mlp.weight[0, 0] = float("nan")


@pytest.mark.parametrize(
    ("overrides", "spoil", "message"),
    [
        (
            {"train_batches": poisoned_from(6, all_ignored)},
            None,
            r"training loss is nan at step 7 .* every target of training micro-batch 6 is -100 \(ignored\)",
        ),
        (
            {"val": [VAL[0], all_ignored(*VAL[1])]},
            None,
            r"validation loss is nan after step 3 .* every target of validation batch 1",
        ),
        ({}, nan_in_a_weight, r"training loss is nan at step 1 .* NaN or inf values in the weights mlp.weight \(from before"),
    ],
    ids=["ignored-train-targets", "ignored-val-targets", "nan-weight"],
)
def test_a_non_finite_loss_names_its_cause(overrides, spoil, message):
    trainer = make_trainer(**overrides)
    if spoil is not None:
        spoil(trainer)
    with pytest.raises(NonFiniteLossError, match=message) as err:
        trainer.fit()
    assert "learning rate" not in str(err.value) and "No checkpoint is kept (set checkpoint_dir" in str(err.value)


def test_a_non_finite_loss_before_the_first_save_names_the_checkpoint_dir(tmp_path):
    trainer = make_trainer(train_batches=poisoned_from(6, all_ignored), checkpoint_dir=tmp_path, checkpoint_every=10)
    with pytest.raises(NonFiniteLossError, match=r"had not written .*last yet \(every 10 steps\); .*best holds") as err:
        trainer.fit()
    assert "No checkpoint" not in str(err.value)


# ---- errors on bad input and the plots -------------------------------------------------------------------------


def test_trainer_rejects_bad_input_clearly():
    with pytest.raises(TypeError, match="callable step -> batch"):
        make_trainer(train_batches=[(torch.zeros(1),)])
    with pytest.raises(TypeError, match="re-iterable"):
        make_trainer(val=iter(VAL))
    with pytest.raises(ValueError, match="patience needs val_batches"):
        make_trainer(val=None, patience=2)
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        make_trainer(mixed_precision="fp16")
    no_targets = make_trainer(train_batches=lambda i: (TOKENS[:8][None],))
    with pytest.raises(TypeError, match="include the targets"):
        no_targets.fit()


def test_live_plot_is_any_object_told_of_each_evaluation_and_the_end():
    class Recorder:
        def __init__(self):
            self.calls = []

        def update(self, history):
            self.calls.append(("update", history[-1]["step"]))

        def close(self, history):
            self.calls.append(("close", len(history)))

    recorder = Recorder()
    trainer = make_trainer(max_steps=7, eval_every=3)
    trainer.live_plot = recorder
    trainer.fit()
    assert recorder.calls == [("update", 3), ("update", 6), ("update", 7), ("close", 7)]
    with pytest.raises(TypeError, match="LiveLossPlot"):
        Trainer(TinyLM(), TrainConfig(max_steps=2, warmup_steps=0), lambda i: None, live_plot=True)


def test_after_step_sees_each_update_with_its_gradients():
    seen = []

    def record(trainer):
        grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
        seen.append((trainer.step, all(g is not None and g.abs().sum() > 0 for g in grads)))

    trainer = make_trainer(max_steps=4, eval_every=2)
    trainer.after_step = record
    trainer.fit()
    assert seen == [(1, True), (2, True), (3, True), (4, True)]
    with pytest.raises(TypeError, match="function of the trainer"):
        Trainer(TinyLM(), TrainConfig(max_steps=2, warmup_steps=0), lambda i: None, after_step=3)


def test_plots_draw_history_schedule_and_a_final_live_plot():
    plt.close("all")
    trainer = make_trainer(max_steps=30, eval_every=10)
    trainer.live_plot = LiveLossPlot()
    trainer.fit()
    assert len(plt.get_fignums()) == 1  # outside a notebook: one final figure
    lines = plt.gca().get_lines()
    assert len(lines) == 3 and list(lines[-1].get_xdata()) == [10, 20, 30]
    plot_history(trainer.history.to_frame())
    assert [line.get_label() for line in plt.gca().get_lines()][1:] == ["train (moving average)", "validation"]
    plot_lr_schedule(trainer.cfg)
    assert max(plt.gca().get_lines()[0].get_ydata()) == pytest.approx(trainer.cfg.lr)
    live = LiveLossPlot()
    assert not live.live
    live.update(trainer.history)
    assert len(plt.get_fignums()) == 3
    plt.close("all")
