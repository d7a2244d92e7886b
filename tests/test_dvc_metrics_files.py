"""DVC-native metrics and plots (issue 15 item 10): `pipeline evaluate --dvc-out` writes files that the real
`dvc metrics show` and `dvc plots show` read, declared as dvc.yaml declares them; tiny MSEs stay visible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from stages.evaluate.dvc_files import flat_metrics, write_dvc_files

REPO = Path(__file__).resolve().parents[1]


def _ev(mse_a: float) -> dict:
    return {"checkpoint_step": 5, "teachers": {"ta": {"patches": {"mse": mse_a, "nmse": 0.25, "cos_mean": 0.9}}},
            "probe": {"knn_acc": 0.75, "linear_acc": None}}


def _dvc(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_flat_metrics_keep_tiny_mse_visible() -> None:
    flat = flat_metrics(_ev(2e-9))
    assert flat["ta/patches/mse"] == 2e-9 and round(flat["ta/patches/log10_mse"], 3) == -8.699
    assert flat["ta/patches/nmse"] == 0.25 and flat["probe/knn_acc"] == 0.75 and "probe/linear_acc" not in flat


def test_dvc_reads_the_files_as_dvc_yaml_declares_them(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]
    assert any("dvc_metrics/" in next(iter(m)) for m in stage["metrics"])
    assert any(next(iter(p)).endswith("loss.csv") for p in stage["plots"])
    assert "--dvc-out dvc_metrics/" in stage["cmd"]
    history = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in (1, 2, 3)]
    for run, mse in (("phis-seed0", 2e-9), ("mse-seed0", 4e-9)):
        write_dvc_files(work / "dvc_metrics" / run, _ev(mse), history)
    (work / "dvc.yaml").write_text(yaml.safe_dump({"metrics": ["dvc_metrics/phis-seed0/metrics.json",
                                                               "dvc_metrics/mse-seed0/metrics.json"],
                                                   "plots": [{"dvc_metrics/phis-seed0/loss.csv": {"x": "step", "y": "loss"}},
                                                             {"dvc_metrics/mse-seed0/loss.csv": {"x": "step", "y": "loss"}}]}))
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    _dvc(["init", "-q"], work)
    shown = json.loads(_dvc(["metrics", "show", "--json"], work))
    data = json.dumps(shown)
    assert "-8.69" in data and "ta/patches/nmse" in data and "phis-seed0" in data and "mse-seed0" in data
    plots = json.loads(_dvc(["plots", "show", "--json", "--split"], work))
    rendered = plots["data"]
    assert {"dvc_metrics/phis-seed0/loss.csv", "dvc_metrics/mse-seed0/loss.csv"} <= set(rendered), list(rendered)
    assert all(p[0]["type"] == "vega" for p in rendered.values()) and not plots.get("errors")
