"""Every PNG a report shows: loss curves per run or trial, before/after per metric with the
paired CI, and Optuna's own study plots. matplotlib's Agg backend: no display needed."""
from __future__ import annotations

import math
from pathlib import Path

from harness.stats import format_p


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(Path(out_dir) / name, dpi=100)
    _plt().close(fig)
    return name


def loss_curves(curves: dict[str, dict[str, list]], out_dir: Path,
                name: str = "loss_curves.png") -> str | None:
    """curves: label (a run or trial) -> {'loss': [(step, value)], 'eval_loss': [...]}: the
    training loss beside the validation loss, one line per label."""
    panels = [k for k in ("loss", "eval_loss") if any(c.get(k) for c in curves.values())]
    if not panels:
        return None
    plt = _plt()
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
    return _save(fig, out_dir, name)


def before_after(comparison: dict, out_dir: Path, name: str = "before_after.png") -> str | None:
    """One small panel per metric: (base,) before and after bars; the after bar carries the
    paired bootstrap 95% CI of the delta, placed around it."""
    keys = list(comparison.get("after", {}))
    if not keys:
        return None
    plt = _plt()
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    base = comparison.get("base") or {}
    for ax, key in zip(axes.flat, keys):
        sides = (["base"] if key in base else []) + ["before", "after"]
        values = [comparison[s][key] if s != "base" else base[key] for s in sides]
        colors = ["#bbbbbb", "#8da0cb", "#fc8d62"][-len(sides):]
        ax.bar(sides, values, color=colors)
        lo, hi = comparison.get("ci_low", {}).get(key), comparison.get("ci_high", {}).get(key)
        if lo is not None and hi is not None:
            d = comparison["delta"][key]
            ax.errorbar([len(sides) - 1], [values[-1]], yerr=[[max(d - lo, 0)], [max(hi - d, 0)]],
                        fmt="none", ecolor="black", capsize=4)
        p = comparison.get("p_value", {}).get(key)
        ax.set_title(f"{key}\n{comparison['delta'][key]:+.3g}" + (f" (p={format_p(p)})" if p is
                                                                  not None else ""), fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return _save(fig, out_dir, name)


def study_plots(study, out_dir: Path) -> list[str]:
    """Optuna's matplotlib plots: optimization history, parameter importances, parallel
    coordinates (each only when the study has what it needs)."""
    plt = _plt()
    import optuna
    from optuna.visualization import matplotlib as ovm
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    wanted = [("optimization_history.png", ovm.plot_optimization_history, 1),
              ("param_importances.png", ovm.plot_param_importances, 2),
              ("parallel_coordinate.png", ovm.plot_parallel_coordinate, 2)]
    made = []
    for name, plot, needs in wanted:
        if len(done) < needs:
            continue
        try:
            ax = plot(study)
        except (ValueError, RuntimeError):  # e.g. importances when no parameter varies
            continue
        fig = (ax if hasattr(ax, "figure") else ax.flat[0]).figure
        fig.set_size_inches(8, 5)
        made.append(_save(fig, out_dir, name))
    plt.close("all")
    return made
