"""The PNGs a report shows: loss curves per run or trial, before/after per metric with the
paired CI (Optuna's own study plots are drawn by harness.study.sweep). matplotlib's Agg backend: no
display needed."""
from __future__ import annotations

import math
from pathlib import Path

from harness.eval.comparison import Comparison
from harness.eval.stats import format_p


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(Path(out_dir) / name, dpi=100)
    pyplot().close(fig)
    return name


def loss_curves(curves: dict[str, dict[str, list]], out_dir: Path,
                name: str = "loss_curves.png") -> str | None:
    """curves: label (a run or trial) -> {'loss': [(step, value)], 'eval_loss': [...]}: the
    training loss beside the validation loss, one line per label."""
    panels = [k for k in ("loss", "eval_loss") if any(c.get(k) for c in curves.values())]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for label, c in curves.items():
            if c.get(key):
                steps, values = zip(*c[key])
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
        ax.set(title="training loss" if key == "loss" else "validation loss", xlabel="step",
               ylabel=key)
        ax.grid(alpha=0.3)
    if len(curves) <= 12:
        axes[0][-1].legend(fontsize=8)
    return save(fig, out_dir, name)


def before_after(comparison: Comparison, out_dir: Path,
                 name: str = "before_after.png") -> str | None:
    """One small panel per metric: (base,) before and after bars; the after bar carries the
    paired bootstrap 95% CI of the delta, placed around it."""
    if not len(comparison):
        return None
    plt = pyplot()
    cols = min(4, len(comparison))
    rows = math.ceil(len(comparison) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    base = comparison.base or {}
    for ax, m in zip(axes.flat, comparison):
        sides = (["base"] if m.key in base else []) + ["before", "after"]
        values = ([base[m.key]] if m.key in base else []) + [m.before, m.after]
        colors = ["#bbbbbb", "#8da0cb", "#fc8d62"][-len(sides):]
        ax.bar(sides, values, color=colors)
        if m.ci_low is not None and m.ci_high is not None:
            ax.errorbar([len(sides) - 1], [values[-1]],
                        yerr=[[max(m.delta - m.ci_low, 0)], [max(m.ci_high - m.delta, 0)]],
                        fmt="none", ecolor="black", capsize=4)
        ax.set_title(f"{m.key}\n{m.delta:+.3g}" + (f" (p={format_p(m.p_value)})" if m.p_value
                                                  is not None else ""), fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(comparison):]:
        ax.axis("off")
    return save(fig, out_dir, name)
