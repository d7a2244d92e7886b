"""`pipeline evaluate RUN`: teacher-space errors and the kNN probe of one run (stages/evaluate/evaluate.py).

Errors are measured after the inverse normalization, in each teacher's own space, as the PHI-S paper
(arXiv 2410.01680) reports them; the probe follows the AM-RADIO kNN protocol (arXiv 2312.06709).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def evaluate_cmd(
    ctx: typer.Context,
    runs: Annotated[list[Path], typer.Argument(help="Run directories written by `pipeline distill`.")],
    split: Annotated[str, typer.Option(help="Manifest split to evaluate on (train / val).")] = "val",
    batch_size: Annotated[int, typer.Option(help="Views per student forward pass.")] = 32,
    probe_labels: Annotated[Optional[Path], typer.Option(help="CSV uri,label for the kNN probe. Default: "
                                                              "probe_labels.csv beside the corpus image folder.")] = None,
    knn_k: Annotated[int, typer.Option(help="Neighbours of the kNN probe (clipped to the train size).")] = 20,
    knn_temperature: Annotated[float, typer.Option(help="Temperature of the kNN vote weights exp(sim/τ).")] = 0.07,
    device: Annotated[str, typer.Option(help="Torch device for the student (cpu, cuda).")] = "cpu",
) -> None:
    """Evaluate each RUN on a split; writes <run>/eval/metrics.json and prints one line per teacher.

    Options not given take their values from ./params.yaml when there is one (printed on stderr)."""
    from pipeline.flag_defaults import EVALUATE, fill_from_params
    from stages.evaluate.evaluate import eval_path, evaluate_run

    v = fill_from_params(ctx, locals(), EVALUATE)
    split, batch_size, probe_labels, device = v["split"], v["batch_size"], v["probe_labels"], v["device"]
    knn_k, knn_temperature = v["knn_k"], v["knn_temperature"]

    if split not in ("train", "val"):
        raise typer.BadParameter(f"unknown split {split!r}; valid splits: train, val")
    for run in runs:
        try:
            res = evaluate_run(run, split=split, batch_size=batch_size, labels_path=probe_labels, knn_k=knn_k,
                               knn_temperature=knn_temperature, device=device)
        except (ValueError, FileNotFoundError) as e:
            raise typer.BadParameter(f"{run}: {e}") from e
        typer.echo(f"{run} ({res['norm']}, {res['num_samples']} {split} samples) -> {eval_path(run)}")
        for teacher, kinds in res["teachers"].items():
            parts = [f"{k} mse {v['mse']:.4g} cos {v['cos_mean']:.3f} (min {v['cos_min']:.3f})" for k, v in kinds.items()]
            typer.echo(f"  {teacher}: " + "; ".join(parts))
        probe = res["probe"]
        typer.echo(f"  probe: kNN acc {probe['knn_acc']:.3f} ({probe['num_train']} train / {probe['num_val']} val)"
                   if probe else f"  probe: skipped ({res['probe_skipped']})")


def register(app: typer.Typer) -> None:
    """Add `evaluate` to the pipeline CLI."""
    app.command("evaluate")(evaluate_cmd)
