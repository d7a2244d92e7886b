"""DVC sees the sweep's decision (issue 26 item 5): every ranked metric is in the per-run DVC metrics, the
report writes the average and per-category ranks as a DVC metrics file, and the documented commands show
them on the real DVC in a readable number of columns."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import pytest
import yaml

from stages.evaluate.dvc_files import flat_metrics, write_dvc_files
from stages.evaluate.report import write_report
from test_dvc_metrics_files import REPO, _dvc
from test_report import _eval, _run_dir, _tiny_store

# the command docs/SWEEP.md gives for comparing experiments by their ranks
EXP_SHOW_DROP = "dvc_metrics/runs/|runs/|receipts|data/"


def _downstream_eval(norm, mse_a, mse_b, knn, zs, miou):
    ev = _eval(norm, mse_a, mse_b, knn)
    ev["zeroshot_ranked"] = "ta"
    ev["zeroshot"] = {"ta": {"top1": zs, "teacher_top1": 0.9, "agreement": 0.5}}
    ev["seg"] = {"linear_miou": miou, "teacher_linear_miou": {"ta": 0.7}}
    return ev


def test_per_run_dvc_metrics_hold_every_ranked_metric():
    flat = flat_metrics({**_downstream_eval("phis", 1.0, 2.0, 0.5, 0.25, 0.4), "checkpoint_step": 3})
    # all three ranked categories of the demo: teacher MSE, classification (zero-shot + kNN), segmentation
    assert flat["ta/patches/mse"] == 2.0 and flat["tb/patches/mse"] == 2.0 and flat["probe/knn_acc"] == 0.5
    assert flat["zeroshot/ta/top1"] == 0.25 and flat["seg/linear_miou"] == 0.4
    assert "seg/teacher_linear_miou/ta" not in flat and "zeroshot/ta/agreement" not in flat  # reported, not ranked


def _runs(tmp_path, knn_mse):
    root = tmp_path / "store"
    if not root.exists():
        _tiny_store(root, "ta", summary_dim=4, patch_dim=8, scale=0.01)
        _tiny_store(root, "tb", summary_dim=0, patch_dim=4, scale=5.0)
    return [_run_dir(tmp_path / "v", root, f"{n}-seed0", _downstream_eval(n, *vals))
            for n, vals in knn_mse.items()]


def test_report_writes_ranks_per_category_and_average_for_dvc(tmp_path):
    runs = _runs(tmp_path, {"phis": (1.0, 2.0, 0.9, 0.5, 0.3), "mse": (3.0, 3.0, 0.5, 0.6, 0.2)})
    write_report(runs, tmp_path / "rep", dvc_out=tmp_path / "dvc_metrics" / "ranking.json")
    ranking = json.loads((tmp_path / "dvc_metrics" / "ranking.json").read_text())
    assert sorted(ranking) == ["mse", "phis"]
    # Teacher MSE: phis 1, mse 2; Classification: kNN phis 1 / zero-shot mse 1 -> 1.5 each; Segmentation: phis 1
    assert ranking["phis"]["rank"] == {"Teacher MSE": 1.0, "Classification": 1.5, "Segmentation": 1.0}
    assert ranking["mse"]["rank"] == {"Teacher MSE": 2.0, "Classification": 1.5, "Segmentation": 2.0}
    assert ranking["phis"]["avg_rank"] == pytest.approx(3.5 / 3) and ranking["mse"]["avg_rank"] == pytest.approx(5.5 / 3)
    assert ranking["phis"]["mean"] == {"ta/patches/mse": 2.0, "tb/patches/mse": 2.0, "probe/knn_acc": 0.9,
                                       "zeroshot/ta/top1": 0.5, "seg/linear_miou": 0.3}
    assert ranking["phis"]["seeds"] == 1 and "group" not in ranking["phis"]
    with open(tmp_path / "rep" / "report.csv") as f:  # the same ranks as the report's table
        assert {r["variant"]: float(r["avg_rank"]) for r in csv.DictReader(f)} == pytest.approx(
            {"phis": 3.5 / 3, "mse": 5.5 / 3})


def test_dvc_yaml_declares_the_ranking_and_the_report_ignores_runs_made_by_hand():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    report = stages["report"]
    assert "--dvc-out dvc_metrics/ranking.json" in report["cmd"]
    assert {"dvc_metrics/ranking.json": {"cache": False}} in report["metrics"]
    assert "dvc_metrics/runs" in report["deps"] and "${distill.runs_dir}" not in report["deps"]
    assert "--dvc-out dvc_metrics/runs/${item.norm}-seed${item.seed}" in stages["evaluate"]["cmd"]
    assert EXP_SHOW_DROP in (REPO / "docs" / "SWEEP.md").read_text()


def test_dvc_shows_what_a_variant_changed_in_few_columns(tmp_path):
    """Four runs' metric files (dozens of columns) and the ranking in a real git + DVC repository; after a
    change, `dvc metrics diff` names the ranks that moved and the documented `dvc exp show --only-changed`
    shows the ranks, not every run's every number."""
    work = tmp_path / "w"
    work.mkdir()
    runs = _runs(tmp_path, {"phis": (1.0, 2.0, 0.9, 0.5, 0.3), "mse": (3.0, 3.0, 0.5, 0.6, 0.2),
                            "zca": (2.0, 1.0, 0.7, 0.4, 0.25), "standardize": (1.5, 1.5, 0.6, 0.3, 0.1)})

    def write_all(runs):
        for run in runs:
            ev = json.loads((run / "eval" / "metrics.json").read_text())
            write_dvc_files(work / "dvc_metrics" / "runs" / run.name, ev, [{"step": 1, "loss": 1.0, "lr": 1e-3}])
        write_report(runs, tmp_path / "rep", dvc_out=work / "dvc_metrics" / "ranking.json")

    write_all(runs)
    metrics = [f"dvc_metrics/runs/{r.name}/metrics.json" for r in runs] + ["dvc_metrics/ranking.json"]
    (work / "dvc.yaml").write_text(yaml.safe_dump({"metrics": metrics}))
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    _dvc(["init", "-q"], work)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "a"]):
        subprocess.run(cmd, cwd=work, check=True)
    # the variant "mse" now wins teacher MSE on ta (a new run of it, say with another lr)
    mse = runs[1]
    ev = json.loads((mse / "eval" / "metrics.json").read_text())
    ev["teachers"]["ta"]["patches"]["mse"] = 0.1
    (mse / "eval" / "metrics.json").write_text(json.dumps(ev))
    write_all(runs)
    diff = _dvc(["metrics", "diff", "--md", "--targets", "dvc_metrics/ranking.json"], work)
    assert "mse.avg_rank" in diff and "mse.rank.Teacher MSE" in diff and "phis.rank.Teacher MSE" in diff
    full = next(csv.reader(io.StringIO(_dvc(["exp", "show", "--csv"], work))))
    table = list(csv.reader(io.StringIO(_dvc(["exp", "show", "--csv", "--only-changed", "--drop", EXP_SHOW_DROP],
                                             work))))
    cols = table[0]
    assert "mse.avg_rank" in cols and "mse.rank.Teacher MSE" in cols and "mse.mean.ta/patches/mse" in cols
    assert not any(c.startswith("dvc_metrics/runs/") for c in cols), cols
    assert len(cols) <= 20 < len(full), (len(cols), len(full), cols)
