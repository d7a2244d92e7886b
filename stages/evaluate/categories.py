"""The benchmark categories a sweep is ranked by, declared once (PHI-S, arXiv 2410.01680, Table 1).

The PHI-S paper ranks every method per benchmark, averages the ranks inside a category, then averages
the categories (``stages.evaluate.ranking.rank_runs``). Its categories, and the flattened metric names of
this project that fill them:

| category | paper | metrics here |
|---|---|---|
| Teacher MSE | per-teacher feature MSE (Table 3) | ``<teacher>/patches/mse`` (teacher space) |
| Classification | zero-shot + kNN | ``zeroshot/<teacher>/top1``, ``probe/knn_acc`` |
| Segmentation | ADE20k + VOC linear probes | ``seg/linear_miou``, ``seg/openvocab_miou/<teacher>`` |

Summary MSE (``<teacher>/summary/mse``) is reported but not ranked, as in the paper; so are token
cosines, error-variance ranges, the linear classification probe and teacher reference scores (a metric
with a path component starting with ``teacher_``, e.g. ``zeroshot/<teacher>/teacher_top1`` or
``seg/teacher_linear_miou/<teacher>``). A category none of whose metrics the runs have is left
out of the average (the report says so).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

# category -> glob patterns over flattened metric names ('*' matches any characters, '/' included)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Teacher MSE": ("*/patches/mse",),
    "Classification": ("zeroshot/*/top1", "probe/knn_acc"),
    "Segmentation": ("seg/linear_miou", "seg/openvocab_miou/*"),
}

# patterns of the metrics where larger is better (everything else is an error: lower wins). The ranked
# ones come first; the rest are reported beside them (accuracies, agreements, cosines, teacher references)
# and need a direction too, since the report says for every column which way is better.
HIGHER_IS_BETTER: tuple[str, ...] = ("zeroshot/*/top1", "probe/knn_acc", "seg/linear_miou",
                                     "seg/openvocab_miou/*",
                                     "probe/linear_acc", "zeroshot/*/teacher_top1", "zeroshot/*/agreement",
                                     "seg/teacher_linear_miou/*", "seg/teacher_openvocab_miou/*",
                                     "*/cos_mean", "*/cos_min")

# Flattened metrics that are never ranked, whatever the patterns above say: teacher references.
_REFERENCE_PREFIX = "teacher_"


def _is_reference(metric: str) -> bool:
    return any(part.startswith(_REFERENCE_PREFIX) for part in metric.split("/"))


def categorize(metrics: Iterable[str]) -> dict[str, list[str]]:
    """{category: sorted metrics of ``metrics`` that fall in it} for every declared category (possibly
    empty lists, in declaration order). A metric matching two categories is a declaration bug."""
    out: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    for m in sorted(set(metrics)):
        if _is_reference(m):
            continue
        hits = [c for c, pats in CATEGORIES.items() if any(fnmatchcase(m, p) for p in pats)]
        assert len(hits) <= 1, f"metric {m!r} matches categories {hits}"
        if hits:
            out[hits[0]].append(m)
    return out


def higher_is_better(metrics: Iterable[str]) -> set[str]:
    """The metrics of ``metrics`` where larger is better."""
    return {m for m in metrics if any(fnmatchcase(m, p) for p in HIGHER_IS_BETTER)}
