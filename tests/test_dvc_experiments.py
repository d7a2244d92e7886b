"""Real DVC experiments over the project's dvc.yaml, on a shrunk copy of params.yaml (as test_dvc_pipeline).

`dvc exp run -S ...` for two variants, then `dvc exp apply` of the first and `dvc repro`: the applied
experiment's runs (checkpoint, config.json, metrics.jsonl, eval) are restored together, so nothing is
retrained (config.json used to be uncached and stayed the last experiment's, and every variant was
retrained). `dvc exp show` lists the metrics of both experiments (not `!`) and `dvc plots show` renders
the loss curves.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.test_dvc_pipeline import REPO, run, write_params


@pytest.mark.slow
def test_exp_apply_then_repro_retrains_nothing_and_exp_show_has_the_metrics(tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(REPO / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", work / ".gitignore")  # runs/ and data/ are git-ignored, as in the repo
    small = dict(corpus={"views": 1}, extract={"teachers": ["tiny_clip"], "workers": 0},
                 distill={"norms": ["phis"], "seeds": [0], "steps": 2, "batch_size": 4, "warmup_steps": 1,
                          "log_every": 1})
    write_params(work / "params.yaml", **small)
    run(["git", "init", "-q"], work)
    run(["git", "config", "user.email", "t@example.com"], work)
    run(["git", "config", "user.name", "t"], work)
    run(["dvc", "init", "-q"], work)
    run(["dvc", "config", "core.analytics", "false"], work)
    t0 = time.monotonic()
    run(["dvc", "repro"], work)
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", "baseline"], work)
    t1 = time.monotonic()
    for name, lr in (("lr2", "0.002"), ("lr3", "0.003")):
        out = run(["dvc", "exp", "run", "-n", name, "-S", f"distill.lr={lr}"], work)
        assert "Running stage 'distill@phis-0'" in out, out
    t2 = time.monotonic()

    run(["dvc", "exp", "apply", "lr2"], work)
    config = json.loads((work / "runs" / "phis-seed0" / "config.json").read_text())
    assert config["lr"] == 0.002  # restored with the checkpoint, not left at lr3's
    assert run(["git", "check-ignore", "runs/phis-seed0/config.json"], work).strip()  # git does not carry it
    out = run(["dvc", "repro"], work)
    assert "Running stage" not in out, out  # nothing retrained, nothing re-evaluated

    shown = json.loads(run(["dvc", "exp", "show", "--json"], work))
    text = json.dumps(shown)
    for name in ("lr2", "lr3"):
        assert f'"{name}"' in text, name
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    metrics = {}
    for exp in exps:
        for ex in exp.get("revs") or []:
            data = ex.get("data") or {}
            files = (data.get("metrics") or {})
            metrics[ex.get("name")] = files
    for name in ("lr2", "lr3"):
        files = metrics.get(name) or {}
        assert "dvc_metrics/runs/phis-seed0/metrics.json" in files, (name, list(files))
        values = files["dvc_metrics/runs/phis-seed0/metrics.json"]["data"]
        assert any(k.endswith("/mse") for k in values) and values["checkpoint_step"] == 2, values
        ranking = files["dvc_metrics/ranking.json"]["data"]  # the report stage's ranks (one variant: rank 1)
        assert ranking["phis"]["avg_rank"] == 1.0 and ranking["phis"]["rank"]["Teacher MSE"] == 1.0, ranking
    plots = json.loads(run(["dvc", "plots", "show", "--json", "--split"], work))
    assert "dvc_metrics/runs/phis-seed0/loss.csv" in plots["data"] and not plots.get("errors"), plots.get("errors")
    print(f"dvc repro {t1 - t0:.0f} s, two experiments {t2 - t1:.0f} s, apply+repro+show {time.monotonic() - t2:.0f} s")
