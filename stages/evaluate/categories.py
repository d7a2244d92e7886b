"""The six benchmark categories of the PHI-S paper (arXiv 2410.01680, Table 1), declared once, and the
metric names that fill them.

The paper ranks every method per benchmark (1 = best, ties averaged), averages the ranks inside a
category, then averages the categories (``stages.evaluate.ranking.rank_runs``). Its categories, and the
flattened metric names of ``eval/metrics.json`` (``stages.evaluate.report.flatten_metrics``) that fill
them here (glob patterns; ``*`` matches any characters, ``/`` included; ``<dataset>`` is a benchmark
dataset's name, ``{zeroshot_teacher}`` the one designated zero-shot teacher):

| category | the paper's benchmarks | metric names ranked here |
|---|---|---|
| Teacher MSE | each teacher's feature MSE (Table 3) | ``<teacher>/patches/mse`` (in the teacher's space) |
| Classification | DFN CLIP zero-shot + kNN, ImageNet-1k | ``zeroshot/{zeroshot_teacher}/top1``, ``probe/knn_acc``, ``bench/<dataset>/zeroshot/{zeroshot_teacher}/top1``, ``bench/<dataset>/knn_top1`` |
| Segmentation | ADE20k + VOC linear probes | ``seg/linear_miou``, ``bench/<dataset>/seg_probe_miou`` (one per segmentation benchmark) |
| SAM-COCO | instance mIoU through SAM's decoder | ``bench/<dataset>/sam_coco_miou`` |
| LLaVA-1.5 | GQA, TextVQA, POPE, VQAv2 | ``bench/<dataset>/llava_score`` |
| Probe 3D | depth, surface normals, multi-view and SPair correspondence | ``bench/<dataset>/depth_delta1``, ``bench/<dataset>/normals_within_11``, ``bench/<dataset>/correspondence_recall`` |

One metric per benchmark: a benchmark that reports several numbers (depth: δ<1.25 and AbsRel) is ranked
on the one named here, the others are reported beside it. **Zero-shot** counts for one teacher only, as
in the paper (its DFN CLIP): by default the first CLIP-family teacher of the run that has text embeddings
(``stages.evaluate.downstream.ranked_zeroshot_teacher``; ``evaluate.zeroshot_teacher`` names another).

**Reported, not ranked** (in neither paper's ranking, or a reference): summary MSE
(``<teacher>/summary/mse``), token cosines, error-variance ranges, the linear classification probe
(``probe/linear_acc``, ``bench/<dataset>/linear_top1``), other teachers' zero-shot, zero-shot agreement,
open-vocabulary mIoU (``seg/openvocab_miou/<teacher>``), and teacher references: any metric with a path
component starting with ``teacher_`` (``zeroshot/<teacher>/teacher_top1``,
``bench/<dataset>/teacher_knn_top1/<teacher>``, ...).

A category none of whose metrics the runs have is left out of the average; the report names it, and calls
the average "the paper's average" only when all six categories are present (``PAPER_CATEGORIES``).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

ZEROSHOT_SLOT = "{zeroshot_teacher}"

# category -> glob patterns over flattened metric names, in the paper's order (Table 1)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Teacher MSE": ("*/patches/mse",),
    "Classification": (f"zeroshot/{ZEROSHOT_SLOT}/top1", "probe/knn_acc",
                       f"bench/*/zeroshot/{ZEROSHOT_SLOT}/top1", "bench/*/knn_top1"),
    "Segmentation": ("seg/linear_miou", "bench/*/seg_probe_miou"),
    "SAM-COCO": ("bench/*/sam_coco_miou",),
    "LLaVA-1.5": ("bench/*/llava_score",),
    "Probe 3D": ("bench/*/depth_delta1", "bench/*/normals_within_11", "bench/*/correspondence_recall"),
}
PAPER_CATEGORIES: tuple[str, ...] = tuple(CATEGORIES)  # all six: only then is the average the paper's

# Direction of every metric, ranked or only reported (the report says for every column which way is
# better). Lower is better for errors: these patterns, and every metric no HIGHER pattern matches.
LOWER_IS_BETTER: tuple[str, ...] = ("*/mse", "*err_var_range*", "bench/*absrel*", "bench/*mean_deg*",
                                    "bench/*rmse*")
HIGHER_IS_BETTER: tuple[str, ...] = ("zeroshot/*/top1", "probe/knn_acc", "seg/linear_miou",
                                     "seg/openvocab_miou/*",
                                     "probe/linear_acc", "zeroshot/*/teacher_top1", "zeroshot/*/agreement",
                                     "seg/teacher_linear_miou/*", "seg/teacher_openvocab_miou/*",
                                     "*/cos_mean", "*/cos_min", "bench/*")

# Flattened metrics that are never ranked, whatever the patterns above say: teacher references.
_REFERENCE_PREFIX = "teacher_"


def _is_reference(metric: str) -> bool:
    return any(part.startswith(_REFERENCE_PREFIX) for part in metric.split("/"))


def category_patterns(zeroshot_teacher: str | None) -> dict[str, tuple[str, ...]]:
    """CATEGORIES with the designated zero-shot teacher filled in (None: no zero-shot metric is ranked)."""
    out = {}
    for cat, pats in CATEGORIES.items():
        out[cat] = tuple(p if ZEROSHOT_SLOT not in p else p.replace(ZEROSHOT_SLOT, zeroshot_teacher) for p in pats
                         if zeroshot_teacher is not None or ZEROSHOT_SLOT not in p)
    return out


def categorize(metrics: Iterable[str], zeroshot_teacher: str | None = None) -> dict[str, list[str]]:
    """{category: sorted metrics of ``metrics`` that fall in it} for every declared category (possibly
    empty lists, in the paper's order). Zero-shot metrics count only for ``zeroshot_teacher``. A metric
    matching two categories is a declaration bug."""
    patterns = category_patterns(zeroshot_teacher)
    out: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    for m in sorted(set(metrics)):
        if _is_reference(m):
            continue
        hits = [c for c, pats in patterns.items() if any(fnmatchcase(m, p) for p in pats)]
        assert len(hits) <= 1, f"metric {m!r} matches categories {hits}"
        if hits:
            out[hits[0]].append(m)
    return out


def higher_is_better(metrics: Iterable[str]) -> set[str]:
    """The metrics of ``metrics`` where larger is better."""
    return {m for m in metrics if not any(fnmatchcase(m, p) for p in LOWER_IS_BETTER)
            and any(fnmatchcase(m, p) for p in HIGHER_IS_BETTER)}


def coverage_sentence(present: Iterable[str]) -> str:
    """What an average over the categories ``present`` is: the paper's average only with all six."""
    present = [c for c in PAPER_CATEGORIES if c in set(present)]
    missing = [c for c in PAPER_CATEGORIES if c not in present]
    if not missing:
        return "The average covers all six of the paper's categories: it is **the paper's average**."
    return (f"The average covers {len(present)} of the paper's six categories ({', '.join(present)}); missing: "
            f"**{', '.join(missing)}** (no run has a metric of theirs). It is an average over these "
            f"{len(present)} only, **not the paper's average**, and its order can differ from the paper's "
            f"(on the paper's own Table 13 numbers, dropping categories reorders its methods).")
