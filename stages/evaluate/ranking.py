"""Average rank by category, as the PHI-S paper ranks normalization methods (arXiv 2410.01680, Table 1).

Each method (one run, or one variant averaged over seeds) is ranked per benchmark metric (rank 1 = best;
lower is better for errors, higher for accuracies); tied values share the average of the ranks they span
(1, 2.5, 2.5, 4). Inside a category (Teacher MSE: the per-teacher feature MSEs; Classification: zero-shot
+ kNN; Segmentation: ...) the per-metric ranks are averaged; a method's score is the mean over the
categories. Ranking flat over all metrics instead would weight a category by how many metrics it has
(four teacher MSEs against one kNN accuracy) and changes the order on the paper's own numbers. The
categories are declared once, in ``stages.evaluate.categories``. Paper headline: PHI-S has the best
average rank (2.92 for ViT-B/16, 1.98 for ViT-L/16).
"""

from __future__ import annotations

import math
from typing import Collection, Mapping, Sequence

import numpy as np

AVG = "avg"


def rank_values(values: Sequence[float], *, higher_better: bool) -> list[float]:
    """Competition ranks with ties averaged (1 = best). NaN values are not allowed."""
    if any(math.isnan(v) for v in values):
        raise ValueError(f"cannot rank NaN values: {list(values)}")
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


def metric_ranks(scores: Mapping[str, Mapping[str, float]], metric: str, *,
                 higher_better: bool) -> dict[str, float]:
    """{run: rank on one metric}; the metric must be present in every run."""
    missing = [r for r in scores if metric not in scores[r]]
    if missing:
        raise ValueError(f"metric {metric!r} is missing from runs {missing}; every ranked run needs it")
    runs = list(scores)
    return dict(zip(runs, rank_values([float(scores[r][metric]) for r in runs], higher_better=higher_better)))


def rank_runs(scores: Mapping[str, Mapping[str, float]], categories: Mapping[str, Sequence[str]],
              higher_is_better: Collection[str]) -> dict[str, dict[str, float]]:
    """Rank runs per metric, average inside each category, then over categories (PHI-S paper).

    ``scores`` = {run: {metric: value}}; ``categories`` = {category: [metric, ...]}; ``higher_is_better``
    = the metrics where larger is better (all others: smaller is better). Returns
    {run: {category: mean rank in that category, ..., "avg": mean over the categories}} (1 = best, ties
    averaged). A category with an empty metric list is left out (callers say so); a listed metric
    missing from some run, a metric in two categories, or no category at all is a ValueError.
    """
    if not scores:
        raise ValueError("rank_runs needs at least one run")
    used = {c: list(ms) for c, ms in categories.items() if ms}
    if not used:
        raise ValueError(f"no category has a metric to rank on (categories: {dict(categories)})")
    if AVG in used:
        raise ValueError(f"{AVG!r} is reserved for the average and cannot name a category")
    seen: dict[str, str] = {}
    for c, ms in used.items():
        for m in ms:
            if m in seen:
                raise ValueError(f"metric {m!r} is in categories {seen[m]!r} and {c!r}")
            seen[m] = c
    hib = set(higher_is_better)
    out: dict[str, dict[str, float]] = {r: {} for r in scores}
    for c, ms in used.items():
        per_metric = [metric_ranks(scores, m, higher_better=m in hib) for m in ms]
        for r in scores:
            out[r][c] = float(np.mean([pm[r] for pm in per_metric]))
    for r in scores:
        out[r][AVG] = float(np.mean([out[r][c] for c in used]))
    return out
