"""Small, DVC-native copies of a run's numbers, so `dvc exp show` compares variants and `dvc plots show` /
`dvc plots diff` draw their loss curves (the sweep of PHI-S, arXiv 2410.01680).

The run folders (checkpoints, metrics.jsonl, eval/metrics.json) are large or in formats DVC does not read
(JSON Lines), and live under a git-ignored folder, so experiment commits do not carry them. `pipeline
evaluate --dvc-out DIR` writes two small files into a tracked folder instead:

- ``DIR/metrics.json``: flat scalars (per teacher and token kind: teacher-space MSE, its log10, the
  normalized error MSE / mean teacher variance, mean cosine; probe accuracies; the checkpoint step). The
  log10 and the normalized error keep tiny MSEs (1e-9 for a low-variance teacher) from printing as 0.0
  in DVC's fixed-decimal tables;
- ``DIR/loss.csv``: step, loss, lr of the training log (a format `dvc plots` reads).

Every metric the sweep ranks (``stages.evaluate.categories``: teacher patch MSEs, the ranked zero-shot, kNN,
segmentation, benchmark metrics) is among the flat scalars. The ranks themselves compare runs, so `pipeline
report --dvc-out FILE` writes them (``stages.evaluate.dvc_ranking``): per variant its average rank, its rank per category
and the seed means of the metrics behind them. `dvc metrics show FILE` prints the sweep's ranking and
`dvc exp show --only-changed` puts every experiment's ranks side by side (docs/SWEEP.md).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

DVC_METRICS, DVC_LOSS = "metrics.json", "loss.csv"


def flat_metrics(ev: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of an eval/metrics.json dict that DVC tables show, by flat name."""
    out: dict[str, float] = {"checkpoint_step": float(ev.get("checkpoint_step", 0))}
    for teacher, kinds in ev["teachers"].items():
        for kind, vals in kinds.items():
            mse = float(vals["mse"])
            out[f"{teacher}/{kind}/mse"] = mse
            out[f"{teacher}/{kind}/log10_mse"] = math.log10(mse) if mse > 0 else float("-inf")
            if vals.get("nmse") is not None:
                out[f"{teacher}/{kind}/nmse"] = float(vals["nmse"])
            if vals.get("cos_mean") is not None:
                out[f"{teacher}/{kind}/cos_mean"] = float(vals["cos_mean"])
    probe = ev.get("probe") or {}
    for name in ("knn_acc", "linear_acc"):
        if probe.get(name) is not None:
            out[f"probe/{name}"] = float(probe[name])
    res = ev.get("resolutions") or {}  # a multi-resolution student (stages/evaluate/resolutions.py)
    for size, r in res.get("per_size", {}).items():
        for teacher, kinds in r["teachers"].items():
            for kind, vals in kinds.items():
                out[f"res{size}/{teacher}/{kind}/cos_mean"] = float(vals["cos_mean"])
        if r.get("knn_acc") is not None:
            out[f"res{size}/probe/knn_acc"] = float(r["knn_acc"])
    for pair, stores in res.get("consistency", {}).items():
        for teacher, kinds in stores.items():
            for kind, v in kinds.items():
                out[f"consistency/{pair.replace('->', '-')}/{teacher}/{kind}"] = float(v)
    return {**ranked_metrics(ev), **out}


def ranked_metrics(ev: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of one evaluation that the report ranks (zero-shot: the designated teacher's only)."""
    from stages.evaluate.categories import categorize
    from stages.evaluate.report import flatten_metrics  # the one flattening (its plots import stays lazy)

    flat = flatten_metrics(dict(ev))
    cats = categorize(flat, ev.get("zeroshot_ranked"))
    return {m: flat[m] for ms in cats.values() for m in ms}


def write_dvc_files(out_dir: Path, ev: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write DIR/metrics.json and DIR/loss.csv; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = out_dir / DVC_METRICS
    flat = {k: v for k, v in flat_metrics(ev).items() if math.isfinite(v)}
    metrics.write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    loss = out_dir / DVC_LOSS
    with open(loss, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "lr"])
        for r in history:
            if "step" in r and "loss" in r:
                writer.writerow([int(r["step"]), repr(float(r["loss"])), repr(float(r.get("lr", float("nan"))))])
    return [metrics, loss]
