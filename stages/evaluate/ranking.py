"""Average rank across metrics, as the PHI-S paper ranks normalization methods (arXiv 2410.01680).

Each method (one run) is ranked per metric (rank 1 = best; lower is better for errors, higher is better
for accuracies); tied values share the average of the ranks they span (1, 2.5, 2.5, 4); a method's
score is the mean of its ranks over all metrics. The paper's headline: PHI-S has the best average rank
(2.92 for ViT-B/16, 1.98 for ViT-L/16).

A metric's direction is decided by its name's last component (``…/mse`` lower is better,
``…/knn_acc`` higher is better); unknown names are an error rather than a guess.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

# Last path component of a flattened metric name → True when higher is better.
METRIC_DIRECTIONS: dict[str, bool] = {
    "mse": False,
    "err_var_range": False,
    "norm_err_var_range": False,
    "cos_mean": True,
    "cos_min": True,
    "knn_acc": True,
    "linear_acc": True,
}


def higher_is_better(metric: str) -> bool:
    """Direction of a flattened metric name such as ``tiny_sam/patches/mse`` or ``probe/knn_acc``."""
    leaf = metric.rsplit("/", 1)[-1]
    if leaf not in METRIC_DIRECTIONS:
        raise ValueError(f"no ranking direction for metric {metric!r}; known leaves: {sorted(METRIC_DIRECTIONS)}")
    return METRIC_DIRECTIONS[leaf]


def rank_values(values: list[float], *, higher_better: bool) -> list[float]:
    """Competition ranks with ties averaged (1 = best). NaN values are not allowed."""
    if any(math.isnan(v) for v in values):
        raise ValueError(f"cannot rank NaN values: {values}")
    key_N = -np.asarray(values, np.float64) if higher_better else np.asarray(values, np.float64)
    order_N = np.argsort(key_N, kind="stable")
    ranks_N = np.empty(len(values))
    i = 0
    while i < len(order_N):
        j = i
        while j + 1 < len(order_N) and key_N[order_N[j + 1]] == key_N[order_N[i]]:
            j += 1
        ranks_N[order_N[i : j + 1]] = (i + j) / 2.0 + 1.0  # average of ranks i+1 .. j+1
        i = j + 1
    return ranks_N.tolist()


def average_ranks(table: Mapping[str, Mapping[str, float]], *,
                  metrics: list[str] | None = None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Rank runs per metric and average.

    ``table`` maps run name → {metric name → value}. ``metrics`` defaults to the metrics every run has
    (sorted); a requested metric missing from a run is an error. Returns (average rank per run,
    per-metric ranks {metric → {run → rank}}).
    """
    runs = list(table)
    if not runs:
        raise ValueError("average_ranks needs at least one run")
    if metrics is None:
        metrics = sorted(set.intersection(*(set(table[r]) for r in runs)))
    if not metrics:
        raise ValueError("the runs share no metric to rank on")
    per_metric: dict[str, dict[str, float]] = {}
    for m in metrics:
        missing = [r for r in runs if m not in table[r]]
        if missing:
            raise ValueError(f"metric {m!r} is missing from runs {missing}")
        ranks = rank_values([float(table[r][m]) for r in runs], higher_better=higher_is_better(m))
        per_metric[m] = dict(zip(runs, ranks))
    avg = {r: float(np.mean([per_metric[m][r] for m in metrics])) for r in runs}
    return avg, per_metric
