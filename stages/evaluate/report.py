"""Sweep report: one table across runs, average ranks, plots and the cost of the sweep.

Ranks runs (one normalization variant each) the way the PHI-S paper does (arXiv 2410.01680): per
metric (teacher-space MSE of every teacher and token kind, lower is better; probe accuracy, higher is
better), ties averaged, then averaged across metrics. Also states what the offline store saved: teacher
forward passes done once (one per teacher per image·view) against what the same sweep costs online,
where every training step of every run re-runs every teacher on its batch (AM-RADIO's recipe,
arXiv 2312.06709).

Inputs: run directories (docs/ARCHITECTURE.md "Run directory") with ``eval/metrics.json`` written by
``stages.evaluate.evaluate.evaluate_run``, plus the feature store for teacher statistics.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from stages.evaluate import plots
from stages.evaluate.ranking import average_ranks
from stages.evaluate.evaluate import config_field, read_config, read_eval, read_history

REPORT_MD, REPORT_CSV = "report.md", "report.csv"
PLOT_ERRORS, PLOT_SPECTRA, PLOT_LOSS = "teacher_errors.png", "teacher_spectra.png", "loss_curves.png"


def flatten_metrics(ev: dict[str, Any]) -> dict[str, float]:
    """Ranked metrics of one eval/metrics.json: ``<teacher>/<kind>/mse`` and ``probe/<acc>``."""
    flat: dict[str, float] = {}
    for teacher, kinds in ev["teachers"].items():
        for kind, vals in kinds.items():
            flat[f"{teacher}/{kind}/mse"] = float(vals["mse"])
    for name in ("knn_acc", "linear_acc"):
        if ev.get("probe") and ev["probe"].get(name) is not None:
            flat[f"probe/{name}"] = float(ev["probe"][name])
    return flat


@dataclass(frozen=True)
class SweepCost:
    """Teacher forward passes: done once into the store vs. the same sweep run online."""

    store_passes: dict[str, int]  # teacher → valid image·views in its store
    online_passes: dict[str, int]  # teacher → Σ over runs of steps × batch

    @property
    def store_total(self) -> int:
        return sum(self.store_passes.values())

    @property
    def online_total(self) -> int:
        return sum(self.online_passes.values())

    @property
    def ratio(self) -> float:
        return self.online_total / max(self.store_total, 1)


def sweep_cost(configs: dict[str, dict[str, Any]], store_passes: dict[str, int]) -> SweepCost:
    """Online cost of the sweep: each run's ``steps × batch_size`` teacher forwards, per teacher it used."""
    online = {t: 0 for t in store_passes}
    for run, cfg in configs.items():
        per_run = int(config_field(cfg, "steps", run)) * int(config_field(cfg, "batch_size", run))
        for teacher in config_field(cfg, "teachers", run):
            if teacher not in online:
                raise ValueError(f"run {run!r} used teacher {teacher!r} with no store; stores: {sorted(online)}")
            online[teacher] += per_run
    return SweepCost(store_passes=store_passes, online_passes=online)


def _store_facts(store_root: Path, teachers: list[str]) -> tuple[dict[str, int], dict[str, Any]]:
    """(valid image·views per teacher, patch covariance per teacher) from the stores' merged stats."""
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    passes, covs = {}, {}
    for t in teachers:
        store = open_teacher_store(teacher_store_path(store_root, t))
        passes[t] = int(store.valid[...].sum())
        covs[t] = store.stats("patches").covariance()
    return passes, covs


def report_rows(evals: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Table rows (one per run, best average rank first) and the ranked metric names."""
    flats = {run: flatten_metrics(ev) for run, ev in evals.items()}
    avg, _ = average_ranks(flats)
    metrics = sorted(set.intersection(*(set(f) for f in flats.values())))
    rows = []
    for run in sorted(evals, key=lambda r: (avg[r], r)):
        row: dict[str, Any] = {"run": run, "norm": evals[run].get("norm", "")}
        row.update({m: flats[run][m] for m in metrics})
        row["avg_rank"] = avg[run]
        rows.append(row)
    return rows, metrics


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def unranked_metrics(evals: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Metrics some runs have and others lack (so they cannot be ranked): metric -> runs lacking it."""
    flats = {run: set(flatten_metrics(ev)) for run, ev in evals.items()}
    every = set.union(*flats.values()) if flats else set()
    return {m: sorted(r for r, f in flats.items() if m not in f) for m in sorted(every)
            if any(m not in f for f in flats.values())}


def _markdown(rows: list[dict[str, Any]], metrics: list[str], cost: SweepCost, plot_names: list[str],
              unranked: dict[str, list[str]]) -> str:
    cols = ["run", "norm", *metrics, "avg_rank"]
    lines = ["# Normalization sweep report", "",
             "Teacher-matching MSE is measured in each teacher's own space (after the inverse normalization),",
             "on the held-out split; probe accuracy is kNN (cosine, τ = 0.07) on student summary features.",
             "Average rank: each run ranked per metric (ties averaged), then averaged (PHI-S paper).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    if unranked:
        lines += ["", "**Not ranked** (missing from some runs, so left out of the table and the average rank):"]
        lines += [f"- `{m}`: missing from {', '.join(runs)}" for m, runs in unranked.items()]
    lines += ["", "## Cost", "",
              f"Teacher forward passes done into the store (one per teacher per image·view): "
              f"**{cost.store_total:,}** ({', '.join(f'{t}: {n:,}' for t, n in cost.store_passes.items())}).",
              f"The same {len(rows)}-run sweep online (runs × steps × batch per teacher): "
              f"**{cost.online_total:,}** ({', '.join(f'{t}: {n:,}' for t, n in cost.online_passes.items())}); "
              f"ratio online / store = **{cost.ratio:.1f}×**.", "", "## Figures", ""]
    lines += [f"![{name}]({name})" for name in plot_names]
    return "\n".join(lines) + "\n"


def write_report(run_dirs: Sequence[Path], out_dir: Path, *, store_root: Path | None = None) -> Path:
    """Write report.md, report.csv and PNG plots for the given evaluated runs; returns report.md's path.

    ``store_root`` defaults to the store root recorded in the runs' config.json (which must agree).
    """
    run_dirs = [Path(r) for r in run_dirs]
    names = [r.name for r in run_dirs]
    if not run_dirs or len(set(names)) != len(names):
        raise ValueError(f"need one or more run directories with distinct names, got {names}")
    evals = {r.name: read_eval(r) for r in run_dirs}
    configs = {r.name: read_config(r) for r in run_dirs}
    if store_root is None:
        roots = {str(config_field(c, "root", n)) for n, c in configs.items()}
        if len(roots) != 1:
            raise ValueError(f"runs come from different stores {sorted(roots)}; pass store_root explicitly")
        store_root = Path(roots.pop())
    teachers = sorted({t for n, c in configs.items() for t in config_field(c, "teachers", n)})
    passes, covs = _store_facts(Path(store_root), teachers)
    cost = sweep_cost(configs, passes)
    rows, metrics = report_rows(evals)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = {run: {m.rsplit("/", 1)[0]: v for m, v in flatten_metrics(ev).items() if m.endswith("/mse")}
              for run, ev in evals.items()}
    plots.plot_teacher_errors(errors, out_dir / PLOT_ERRORS)
    plots.plot_spectra(covs, out_dir / PLOT_SPECTRA)
    plots.plot_loss_curves({r.name: read_history(r) for r in run_dirs}, out_dir / PLOT_LOSS)

    with open(out_dir / REPORT_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "norm", *metrics, "avg_rank"])
        writer.writeheader()
        writer.writerows(rows)
    md_path = out_dir / REPORT_MD
    md_path.write_text(_markdown(rows, metrics, cost, [PLOT_ERRORS, PLOT_SPECTRA, PLOT_LOSS],
                                   unranked_metrics(evals)))
    (out_dir / "cost.json").write_text(json.dumps(
        {"store_passes": cost.store_passes, "online_passes": cost.online_passes,
         "store_total": cost.store_total, "online_total": cost.online_total, "ratio": cost.ratio}, indent=2))
    return md_path
