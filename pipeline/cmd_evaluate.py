"""`pipeline evaluate RUN`: teacher-space errors and the kNN probe of one run (stages/evaluate/evaluate.py).

Errors are measured after the inverse normalization, in each teacher's own space, as the PHI-S paper
(arXiv 2410.01680) reports them; the probe follows the AM-RADIO kNN protocol (arXiv 2312.06709).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from stages.evaluate.bench import BenchConfig

from pipeline.defaults import Derived, ParamsOpt, Route, routed
from pipeline.errors import fail, user_error_types


EVALUATE = Route(sections=("evaluate",), keys={
    "device": "distill.device",
    "on": Derived("evaluate.bench_root + evaluate.bench_datasets",
                  lambda p: [str(r) for r in p.evaluate.bench_roots()]),
})


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
    on: Annotated[Optional[list[str]], typer.Option("--on", help="Evaluation dataset root (built by `pipeline corpus "
                                                                 "SRC --out ROOT --layout ...`); repeat for several. "
                                                                 "Metrics under bench/<dataset>/ (docs/EVALUATION.md). "
                                                                 "Default: evaluate.bench_root/<each of "
                                                                 "evaluate.bench_datasets>.")] = None,
    probe: Annotated[Optional[list[str]], typer.Option("--probe", help="With --on: run only these probes (knn, "
                                                                       "zeroshot, linear, seg, depth, normals); "
                                                                       "default: every probe each dataset supports.")] = None,
    probe_iterations: Annotated[Optional[int], typer.Option(help="With --on: mini-batch iterations of the dense "
                                                                 "probes (segmentation, depth, normals).")] = None,
    probe_batch_size: Annotated[Optional[int], typer.Option(help="With --on: images per dense-probe mini-batch.")] = None,
    probe_lr: Annotated[Optional[float], typer.Option(help="With --on: AdamW learning rate of the dense probes.")] = None,
    linear_iterations: Annotated[Optional[int], typer.Option(help="With --on: mini-batch iterations of the linear "
                                                                  "classifier probe.")] = None,
    target_side: Annotated[Optional[int], typer.Option(help="With --on: side the dense probes' training targets are "
                                                            "resized to (cached per dataset root).")] = None,
    probe_memory: Annotated[Optional[int], typer.Option(help="With --on: MiB of a probe's features held in memory "
                                                             "when they all fit (read once); larger sets are read from "
                                                             "disk per mini-batch.")] = None,
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
    bench = bench_config(probe, knn_k=knn_k, knn_temperature=knn_temperature, zeroshot_templates=zeroshot_templates,
                         batch_size=batch_size, probe_iterations=probe_iterations, probe_batch_size=probe_batch_size,
                         probe_lr=probe_lr, linear_iterations=linear_iterations, target_side=target_side,
                         memory_budget_mb=probe_memory)
    for run in runs:
        try:
            res = evaluate_run(run, split=split, batch_size=batch_size, labels_path=probe_labels, knn_k=knn_k,
                               knn_temperature=knn_temperature, knn_feature=knn_feature,
                               device=device, downstream=downstream, root=root, bench_roots=on or [], bench=bench,
                               log=lambda line: typer.echo(f"  {line}", err=True))
        except user_error_types() as e:
            raise fail(f"{run}: {e}") from e
        _echo_result(run, res, split, dvc_out)


def _echo_result(run: Path, res: dict, split: str, dvc_out: Optional[Path]) -> None:
    """One run's evaluation, as `pipeline evaluate` prints it."""
    from stages.distill.run_dir import eval_path

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
    from stages.evaluate.bench_report import bench_lines

    for line in bench_lines(res.get("bench") or {}):
        typer.echo(f"  {line}")


def bench_config(probes: list[str] | None, *, knn_k: int, knn_temperature: float, zeroshot_templates: str,
                 batch_size: int, probe_iterations: int, probe_batch_size: int, probe_lr: float,
                 linear_iterations: int, target_side: int, memory_budget_mb: int) -> "BenchConfig":
    """The BenchConfig of `pipeline evaluate --on`."""
    from stages.evaluate.bench import BenchConfig
    from stages.evaluate.dense_probe import ProbeConfig

    return BenchConfig(probes=tuple(probes) if probes else None, knn_k=knn_k, knn_temperature=knn_temperature,
                       dense=ProbeConfig(iterations=probe_iterations, batch_size=probe_batch_size, lr=probe_lr),
                       linear=ProbeConfig(iterations=linear_iterations, batch_size=256),
                       target_side=target_side, zeroshot_templates=zeroshot_templates, batch_size=batch_size,
                       memory_budget_mb=memory_budget_mb)


def register(app: typer.Typer) -> None:
    """Add `evaluate` to the pipeline CLI."""
    app.command("evaluate", cls=routed(EVALUATE))(evaluate_cmd)
