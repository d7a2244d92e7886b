"""Ranking by category (PHI-S, arXiv 2410.01680): the paper's own Table 3 must give its Table 1 Teacher-MSE
column exactly; hand-built cases check ties, category averaging and the errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from stages.evaluate.categories import CATEGORIES, categorize, higher_is_better
from stages.evaluate.ranking import rank_runs, rank_values

DATA = Path(__file__).parent / "data"


def _read(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="") as f:
        return list(csv.DictReader(f))


def test_paper_table3_gives_the_paper_teacher_mse_ranks_exactly() -> None:
    table3 = _read("phis_table3_teacher_mse.csv")
    teachers = [c for c in table3[0] if c != "method"]
    assert len(table3) == 10 and len(teachers) == 4
    scores = {r["method"]: {t: float(r[t]) for t in teachers} for r in table3}
    ranks = rank_runs(scores, {"Teacher MSE": teachers}, higher_is_better=())
    expected = {r["method"]: float(r["teacher_mse_rank"]) for r in _read("phis_table1_teacher_mse_rank.csv")}
    assert {m: ranks[m]["Teacher MSE"] for m in expected} == expected
    assert all(ranks[m]["avg"] == ranks[m]["Teacher MSE"] for m in expected)  # one category


def test_category_average_differs_from_flat_average() -> None:
    """Four MSEs and one accuracy: flat averaging lets the MSE category outvote accuracy 4:1."""
    scores = {
        "a": {"t1/patches/mse": 1.0, "t2/patches/mse": 1.0, "t3/patches/mse": 1.0, "t4/patches/mse": 1.0,
              "probe/knn_acc": 0.1},
        "b": {"t1/patches/mse": 2.0, "t2/patches/mse": 2.0, "t3/patches/mse": 2.0, "t4/patches/mse": 2.0,
              "probe/knn_acc": 0.9},
        "c": {"t1/patches/mse": 3.0, "t2/patches/mse": 3.0, "t3/patches/mse": 0.5, "t4/patches/mse": 3.0,
              "probe/knn_acc": 0.5},
    }
    cats = {c: ms for c, ms in categorize(scores["a"]).items() if ms}
    assert cats == {"Teacher MSE": ["t1/patches/mse", "t2/patches/mse", "t3/patches/mse", "t4/patches/mse"],
                    "Classification": ["probe/knn_acc"]}
    ranks = rank_runs(scores, cats, higher_is_better(scores["a"]))
    # Teacher MSE: a (1,1,2,1) = 1.25, b (2,2,3,2) = 2.25, c (3,3,1,3) = 2.5; kNN: b 1, c 2, a 3
    assert ranks["a"] == {"Teacher MSE": 1.25, "Classification": 3.0, "avg": 2.125}
    assert ranks["b"] == {"Teacher MSE": 2.25, "Classification": 1.0, "avg": 1.625}
    assert ranks["c"] == {"Teacher MSE": 2.5, "Classification": 2.0, "avg": 2.25}
    # flat average over the five metrics would put a first: (1+1+2+1+3)/5 = 1.6 < b's 2.0
    assert min(ranks, key=lambda r: ranks[r]["avg"]) == "b"


def test_ties_are_averaged_and_empty_categories_left_out() -> None:
    assert rank_values([0.3, 0.1, 0.1, 0.5], higher_better=False) == [3.0, 1.5, 1.5, 4.0]
    assert rank_values([0.9, 0.5, 0.9, 0.9], higher_better=True) == [2.0, 4.0, 2.0, 2.0]
    scores = {"x": {"m": 1.0, "acc": 0.5}, "y": {"m": 1.0, "acc": 0.7}}
    ranks = rank_runs(scores, {"E": ["m"], "Empty": [], "A": ["acc"]}, higher_is_better={"acc"})
    assert ranks == {"x": {"E": 1.5, "A": 2.0, "avg": 1.75}, "y": {"E": 1.5, "A": 1.0, "avg": 1.25}}


def test_rank_runs_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rank_values([1.0, float("nan")], higher_better=True)
    with pytest.raises(ValueError, match="missing from runs \\['s'\\]"):
        rank_runs({"r": {"a": 1.0}, "s": {}}, {"C": ["a"]}, ())
    with pytest.raises(ValueError, match="in categories 'C' and 'D'"):
        rank_runs({"r": {"a": 1.0}}, {"C": ["a"], "D": ["a"]}, ())
    with pytest.raises(ValueError, match="no category"):
        rank_runs({"r": {"a": 1.0}}, {"C": []}, ())
    with pytest.raises(ValueError, match="at least one run"):
        rank_runs({}, {"C": ["a"]}, ())


def test_declared_categories_and_directions() -> None:
    names = ["dino/patches/mse", "dino/summary/mse", "clip/patches/cos_mean", "probe/knn_acc", "probe/linear_acc",
             "zeroshot/clip/top1", "zeroshot/clip/teacher_top1", "seg/linear_miou", "seg/openvocab_miou/clip",
             "seg/teacher_linear_miou/clip", "seg/teacher_openvocab_miou/clip", "zeroshot/clip/agreement"]
    cats = categorize(names)
    assert list(cats) == list(CATEGORIES)
    assert cats == {"Teacher MSE": ["dino/patches/mse"],
                    "Classification": ["probe/knn_acc", "zeroshot/clip/top1"],
                    "Segmentation": ["seg/linear_miou", "seg/openvocab_miou/clip"]}
    # every accuracy, mIoU, agreement and cosine reads higher-is-better, ranked or only reported beside them
    assert higher_is_better(names) == set(names) - {"dino/patches/mse", "dino/summary/mse"}

