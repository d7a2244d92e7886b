"""`pipeline evaluate RUN`: teacher-space errors and the kNN probe of one run (stages/evaluate/evaluate.py).

Errors are measured after the inverse normalization, in each teacher's own space, as the PHI-S paper
(arXiv 2410.01680) reports them; the probe follows the AM-RADIO kNN protocol (arXiv 2312.06709).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.defaults import ParamsOpt, Route, routed
from pipeline.errors import fail, user_error_types


EVALUATE = Route(sections=("evaluate",), keys={"device": "distill.device"})


def evaluate_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories written by `pipeline distill`.")],
    split: Annotated[Optional[str], typer.Option(help="Manifest split to evaluate on (train / val).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Views per student forward pass.")] = None,
    probe_labels: Annotated[Optional[Path], typer.Option(help="CSV uri,label for the kNN probe; auto (params.yaml "
                                                              "without the key): probe_labels.csv beside the corpus "
                                                              "image folder, if any; evaluate.probe_labels: null: no "
                                                              "label probe.")] = None,
    knn_k: Annotated[Optional[int], typer.Option(help="Neighbours of the kNN probe (clipped to the train size).")] = None,
    knn_temperature: Annotated[Optional[float], typer.Option(help="Temperature of the kNN vote weights exp(sim/τ).")] = None,
    knn_feature: Annotated[Optional[str], typer.Option(help="kNN / linear probe feature: concat (every student summary "
                                                            "token, RADIO's) or token0.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Torch device for the student (cpu, cuda).")] = None,
    zeroshot_classes: Annotated[Optional[Path], typer.Option(help="Class file of the probe labels: zero-shot "
                                                                  "classification per CLIP teacher (needs extract-text).")] = None,
    zeroshot_templates: Annotated[Optional[str], typer.Option(help="Templates the zero-shot prompt set was extracted with.")] = None,
    zeroshot_teacher: Annotated[Optional[str], typer.Option(help="The one teacher whose zero-shot the PHI-S "
                                                                 "ranking counts (default: the first CLIP-family "
                                                                 "teacher with text embeddings).")] = None,
    seg_masks: Annotated[Optional[Path], typer.Option(help="Folder of PNG label masks named <image uri without "
                                                           "suffix>.png: linear-probe and open-vocabulary mIoU.")] = None,
    seg_classes: Annotated[Optional[Path], typer.Option(help="Segmentation class file (line k = mask value k).")] = None,
    seg_templates: Annotated[Optional[str], typer.Option(help="Templates the segmentation prompt set was extracted with.")] = None,
    seg_probe_steps: Annotated[Optional[int], typer.Option(help="Training steps of the linear segmentation probe.")] = None,
    root: Annotated[Optional[str], typer.Option(help="Store root to read the run's stores from, when they moved "
                                                     "since training (default: the root in the run's config.json); "
                                                     "its stores must be the ones the run was trained on.")] = None,
    dvc_out: Annotated[Optional[Path], typer.Option(help="Also write DIR/metrics.json (flat scalars) and "
                                                         "DIR/loss.csv (training curve): small files DVC "
                                                         "experiments carry (dvc exp show, dvc plots). One RUN only.")] = None,
    params: ParamsOpt = None,
) -> None:
    """Evaluate each RUN on a split; writes <run>/eval/metrics.json and prints one line per teacher.

    Options not given take their values from params.yaml when there is one (printed on stderr)."""
    from stages.distill.run_dir import eval_path
    from stages.devices import check_device
    from stages.evaluate.config import EvaluateConfig
    from stages.evaluate.evaluate import evaluate_run
    from store_schema.io_errors import check_writable

    if split not in ("train", "val"):
        raise fail(f"unknown split {split!r}; valid splits: train, val")
    if (seg_masks is None) != (seg_classes is None):
        raise fail("--seg-masks and --seg-classes go together")
    downstream = EvaluateConfig(zeroshot_classes=zeroshot_classes, zeroshot_templates=zeroshot_templates,
                                seg_masks=seg_masks, seg_classes=seg_classes, seg_templates=seg_templates,
                                seg_probe_steps=seg_probe_steps,
                                zeroshot_teacher=zeroshot_teacher).downstream()
    if dvc_out is not None and len(runs) != 1:
        raise fail(f"--dvc-out takes one RUN, got {len(runs)}")
    if device is not None:
        check_device(device)  # before any evaluation is computed or written
    for run in runs:  # an evaluation that cannot be saved is refused before it is computed
        check_writable(eval_path(run).parent, "the evaluation")
    for run in runs:
        try:
            res = evaluate_run(run, split=split, batch_size=batch_size, labels_path=probe_labels, knn_k=knn_k,
                               knn_temperature=knn_temperature, knn_feature=knn_feature,
                               device=device, downstream=downstream, root=root)
        except user_error_types() as e:
            raise fail(f"{run}: {e}") from e
        typer.echo(f"{run} ({res['norm']}, {res['num_samples']} {split} samples) -> {eval_path(run)}")
        if dvc_out is not None:
            from stages.evaluate.dvc_files import write_dvc_files
            from stages.distill.run_dir import read_history

            typer.echo("  dvc: " + ", ".join(map(str, write_dvc_files(dvc_out, res, read_history(run)))))
        for teacher, kinds in res["teachers"].items():
            parts = [f"{k} mse {v['mse']:.4g} cos {v['cos_mean']:.3f} (min {v['cos_min']:.3f})" for k, v in kinds.items()]
            typer.echo(f"  {teacher}: " + "; ".join(parts))
        probe = res["probe"]
        typer.echo(f"  probe: kNN acc {probe['knn_acc']:.3f} ({probe['num_train']} train / {probe['num_val']} val; "
                   f"feature: {probe['feature']}; labels: {res.get('probe_labels')})"
                   if probe else f"  probe: skipped ({res['probe_skipped']})")
        for what, key in (("zero-shot", "zeroshot_skipped"), ("segmentation", "seg_skipped")):
            if res.get(key):
                typer.echo(f"  {what}: skipped ({res[key]})")
        for t, z in (res.get("zeroshot") or {}).items():
            typer.echo(f"  zero-shot {t}: top-1 {z['top1']:.3f} (teacher {z['teacher_top1']:.3f}), "
                       f"agreement {z['agreement']:.3f} on {res['downstream_info']['zeroshot'][t]['num_images']} images")
        if res.get("resolutions"):
            from stages.evaluate.resolutions import format_resolutions

            typer.echo("  per resolution (student sides trained and not):")
            for line in format_resolutions(res["resolutions"]):
                typer.echo(f"  {line}")
        seg = res.get("seg")
        if seg:
            typer.echo(f"  segmentation: linear mIoU {seg['linear_miou']:.3f} (teachers "
                       + ", ".join(f"{t} {v:.3f}" for t, v in seg["teacher_linear_miou"].items()) + ")")
            for t, v in seg["openvocab_miou"].items():
                typer.echo(f"  open-vocabulary {t}: mIoU {v:.3f} (teacher {seg['teacher_openvocab_miou'][t]:.3f})")


def register(app: typer.Typer) -> None:
    """Add `evaluate` to the pipeline CLI."""
    app.command("evaluate", cls=routed(EVALUATE))(evaluate_cmd)
