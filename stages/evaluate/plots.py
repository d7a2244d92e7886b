"""Report figures for a normalization sweep (PHI-S, arXiv 2410.01680; AM-RADIO, arXiv 2312.06709).

Three PNGs, each from plain data (no file reading here):
- teacher-space error per teacher and token kind, one bar per run (log scale: teachers differ by orders
  of magnitude in scale, which is the PHI-S paper's point);
- each teacher's patch-token covariance eigen-spectrum (log scale; the low rank shows as the knee) and
  its per-channel standard deviations, sorted;
- training loss curves from each run's metrics.jsonl;
- kNN / linear probe accuracy per run.

Curves that coincide (e.g. zca and hca on a teacher whose Hadamard rotation changes nothing the loss sees)
must stay visible: each run gets its own line style and marker, drawn with some transparency.

matplotlib's Agg backend is selected on the figure object (``FigureCanvasAgg``), so importing this
module changes no global backend state.

Shape legend: D channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_teacher_errors(errors: Mapping[str, Mapping[str, float]], path: Path, *,
                        title: str = "teacher-space MSE (val)") -> Path:
    """Grouped bars: ``errors`` maps run name → {"<teacher>/<kind>" → MSE}; groups are the union of keys."""
    runs = list(errors)
    groups = sorted({g for r in runs for g in errors[r]})
    if not runs or not groups:
        raise ValueError("plot_teacher_errors needs at least one run with at least one error value")
    fig = Figure(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(runs)) / 3), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(runs)
    x_G = np.arange(len(groups))
    for i, run in enumerate(runs):
        vals = [errors[run].get(g, np.nan) for g in groups]
        ax.bar(x_G + (i - (len(runs) - 1) / 2) * width, vals, width, label=run)
    ax.set_xticks(x_G, groups, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("MSE in teacher space")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_spectra(covariances: Mapping[str, np.ndarray], path: Path) -> Path:
    """Per teacher: eigenvalues of the patch covariance (descending, log) and per-channel std (sorted)."""
    if not covariances:
        raise ValueError("plot_spectra needs at least one teacher covariance")
    fig = Figure(figsize=(11.0, 4.0))
    ax_eig, ax_std = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for teacher, cov_DD in covariances.items():
        eig_D = np.sort(np.linalg.eigvalsh(np.asarray(cov_DD, np.float64)))[::-1]
        eig_D = np.maximum(eig_D, np.finfo(np.float64).tiny)  # round-off negatives cannot go on a log axis
        ax_eig.plot(np.arange(1, eig_D.size + 1), eig_D, label=teacher, **line_style(len(ax_eig.lines)))
        std_D = np.sort(np.sqrt(np.maximum(np.diag(cov_DD), 0.0)))[::-1]
        ax_std.plot(np.arange(1, std_D.size + 1), std_D, label=teacher, **line_style(len(ax_std.lines)))
    ax_eig.set_yscale("log")
    ax_eig.set_xlabel("eigenvalue index")
    ax_eig.set_title("patch covariance eigen-spectrum")
    ax_std.set_yscale("log")
    ax_std.set_xlabel("channel (sorted)")
    ax_std.set_title("per-channel std")
    for ax in (ax_eig, ax_std):
        ax.legend(fontsize=8)
    return _save(fig, path)


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "P", "h")


def line_style(i: int) -> dict[str, object]:
    """Distinct line style + marker for the i-th run (so coinciding lines can be told apart)."""
    return {"linestyle": _STYLES[i % len(_STYLES)], "marker": _MARKERS[i % len(_MARKERS)], "markevery": 0.1,
            "markersize": 4, "alpha": 0.85}


def plot_probe_accuracy(acc: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Grouped bars: ``acc`` maps run name → {"knn_acc" / "linear_acc" → accuracy in [0, 1]}."""
    runs = [r for r in acc if acc[r]]
    kinds = sorted({k for r in runs for k in acc[r]})
    if not runs:
        raise ValueError("plot_probe_accuracy needs at least one run with a probe accuracy")
    fig = Figure(figsize=(max(6.0, 0.9 * len(runs)), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(kinds)
    x_R = np.arange(len(runs))
    for i, kind in enumerate(kinds):
        ax.bar(x_R + (i - (len(kinds) - 1) / 2) * width, [acc[r].get(kind, np.nan) for r in runs], width,
               label=kind.replace("_acc", " probe"))
    ax.set_xticks(x_R, runs, rotation=20, ha="right")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy on the val split (higher is better)")
    ax.set_title("probe accuracy on the raw student summary")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_loss_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """``histories`` maps run name → metrics.jsonl records (each with "step" and "loss")."""
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot()
    plotted = 0
    for i, (run, records) in enumerate(histories.items()):
        pts = [(r["step"], r["loss"]) for r in records if "step" in r and "loss" in r]
        if pts:
            steps, losses = zip(*pts)
            ax.plot(steps, losses, label=run, **line_style(i))
            plotted += 1
    if plotted == 0:
        raise ValueError("no run has any (step, loss) record to plot")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (normalized space: not comparable across variants)")
    ax.set_title("training loss")
    ax.legend(fontsize=8)
    return _save(fig, path)
