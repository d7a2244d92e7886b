"""The real `dvc repro` over the project's dvc.yaml, on a shrunk copy of params.yaml.

Checks what issue 6 asks of the DVC wiring: the pipeline runs end to end, a second `dvc repro` does
nothing, and changing a `distill.*` parameter re-runs only stage two (distill, evaluate, report), never
the corpus or a teacher's extract stage (the store stays outside DVC's outputs): more steps extend the
persisted runs are replaced by new runs of the new length (a run of N steps is trained on an N-step
schedule), as is a change a resume cannot honour (lr).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def write_params(path: Path, **changes: dict) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in changes.items():
        raw[section].update(values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.slow
def test_dvc_repro_then_nothing_then_only_stage_two(tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(REPO / "dvc.yaml", work / "dvc.yaml")
    small = dict(corpus={"views": 1}, extract={"teachers": ["tiny_clip", "tiny_sam"], "workers": 0},
                 distill={"norms": ["phis", "mse"], "seeds": [0], "steps": 3, "batch_size": 4, "warmup_steps": 1, "log_every": 1})
    write_params(work / "params.yaml", **small)
    run(["git", "init", "-q"], work)
    run(["dvc", "init", "-q"], work)
    run(["dvc", "config", "core.analytics", "false"], work)

    out = run(["dvc", "repro"], work)
    for stage in ("demo_corpus", "corpus", "extract@tiny_clip", "extract@tiny_sam", "extract_text@tiny_clip",
                  "views", "distill@phis-0", "distill@mse-0",
                  "evaluate@phis-0", "evaluate@mse-0", "report"):
        assert f"Running stage '{stage}'" in out, stage
    assert (work / "reports" / "sweep" / "report.md").is_file()
    views = json.loads((work / "receipts" / "views.json").read_text())["64"]  # distill.img_size, rendered once
    from store_schema.manifest import read_manifest

    bad = int((~read_manifest(work / "data" / "store" / "manifest.parquet").ok_N).sum())
    assert views["size"] == 64 and views["complete_shards"] and views["invalid_images"] == bad  # only the bad files
    receipt = json.loads((work / "receipts" / "extract_tiny_sam.json").read_text())
    assert receipt["teacher"] == "tiny_sam" and receipt["complete_shards"]

    again = run(["dvc", "repro"], work)
    assert "Running stage" not in again, again

    stage_one = {"demo_corpus", "corpus", "extract@tiny_clip", "extract@tiny_sam", "extract_text@tiny_clip", "views"}
    write_params(work / "params.yaml", **{**small, "distill": {**small["distill"], "steps": 4}})
    status = json.loads(run(["dvc", "status", "--json"], work) or "{}")
    changed = set(status)
    assert {"distill@phis-0", "distill@mse-0"} <= changed, status
    assert not changed & stage_one, status
    out = run(["dvc", "repro"], work)  # more steps: a new run on a 4-step schedule, never a 3-step one extended
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"distill@phis-0", "distill@mse-0", "evaluate@phis-0", "evaluate@mse-0", "report"}, out
    assert out.count("(retrained)") == 2 and "(resumed)" not in out, out
    assert [json.loads(ln)["step"] for ln in (work / "runs" / "phis-seed0" / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4]

    write_params(work / "params.yaml", **{**small, "distill": {**small["distill"], "steps": 4, "lr": 0.002}})
    out = run(["dvc", "repro"], work)  # a change a resume cannot honour: a new run replaces the old one
    assert out.count("(retrained)") == 2 and not any(f"Running stage '{s}'" in out for s in stage_one), out
    assert json.loads((work / "runs" / "mse-seed0" / "config.json").read_text())["lr"] == 0.002
