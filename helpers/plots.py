"""Plots of training runs: loss curves (live while training, in a notebook), and the learning-rate schedule.

Chapter 04 plots its schedule (section 3) and losses (section 4); chapter 05 watches them live (section 4).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt

from helpers.train import TrainConfig, lr_at


def _rows(history) -> list[dict]:
    """Accept a :class:`helpers.train.History`, a list of dicts, or a DataFrame of one."""
    if hasattr(history, "to_dict") and not isinstance(history, dict):
        return history.to_dict("records")
    return list(history)


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def draw_history(history, ax, title: str | None = None) -> None:
    """Draw train loss (faint per step, plus a moving average) and val loss against the step, into ``ax``.

    First used in chapter 05, section 6.
    """
    rows = _rows(history)
    steps = [r["step"] for r in rows]
    train = [r["train_loss"] for r in rows]
    evals = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None and not math.isnan(r["val_loss"])]
    if len(rows) > 20:
        ax.plot(steps, train, color="C0", alpha=0.25, linewidth=0.8)
        ax.plot(steps, _moving_average(train, max(len(rows) // 25, 2)), color="C0", label="train (moving average)")
    else:
        ax.plot(steps, train, color="C0", label="train")
    if evals:
        ax.plot(*zip(*evals), "o-", color="C1", markersize=3, label="validation")
    ax.set(xlabel="step (optimizer updates)", ylabel="loss (nats per token)", title=title or "Loss")
    ax.grid(alpha=0.3)
    ax.legend()


def plot_history(history, title: str | None = None) -> None:
    """Plot the loss curves of a run (see :func:`draw_history`) and show them (chapter 04, section 4)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    draw_history(history, ax, title)
    fig.tight_layout()
    plt.show()


def plot_lr_schedule(cfg: TrainConfig, title: str | None = None) -> None:
    """Plot the learning rate of every update of ``cfg`` (warm-up, then cosine decay) and show it (chapter 04, section 3)."""
    steps = range(cfg.max_steps)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([s + 1 for s in steps], [lr_at(s, cfg) for s in steps])
    ax.axvline(cfg.warmup_steps, color="grey", linestyle=":", label=f"end of warm-up ({cfg.warmup_steps} steps)")
    ax.set(xlabel="step (optimizer updates)", ylabel="learning rate", title=title or "Learning-rate schedule")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.show()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class LiveLossPlot:
    """Loss curves that redraw in place at each :meth:`update` in a notebook (Jupyter, Colab).

    Give one to a trainer, ``Trainer(..., live_plot=LiveLossPlot())``: it calls :meth:`update` after each evaluation
    and :meth:`close` when ``fit`` returns (a later ``fit`` draws a new figure). Outside a notebook (a script, a test)
    updates draw nothing and :meth:`close` shows one final plot.

    First used in chapter 05, section 4; chapter 06's fine-tuning (section 4) draws one too.
    """

    def __init__(self, title: str | None = None):
        self.title = title
        self.live = _in_notebook()
        self._handle = None

    def _figure(self, history):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        draw_history(history, ax, self.title)
        fig.tight_layout()
        return fig

    def update(self, history) -> None:
        """Redraw with the rows of ``history`` so far (a no-op outside a notebook)."""
        if not self.live:
            return
        from IPython.display import display

        fig = self._figure(history)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)  # the display holds the image; closing stops the notebook from showing the figure again

    def close(self, history) -> None:
        """Draw the final state: in place in a notebook, else one figure shown with ``plt.show()``."""
        if self.live:
            self.update(history)
            self._handle = None
        else:
            self._figure(history)
            plt.show()
