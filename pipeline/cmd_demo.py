"""`pipeline demo [--params params.yaml]`: the whole offline sweep in one process; and
`pipeline distill-variant --norm N --params params.yaml`: one variant of it (dvc.yaml's distill stage).

demo-corpus → corpus → extract (each teacher once into the store; text embeddings of the CLIP teachers
in extract.text_teachers) → distill (one run per
normalization variant, PHI-S arXiv 2410.01680) → evaluate → report, all from params.yaml. It runs the
same importable functions the DVC stages' commands run (dvc.yaml), writes to the same paths, and is
resumable: complete shards are skipped, finished runs with the same config are reused, interrupted runs
resume from their checkpoint (written every ``distill.ckpt_every`` steps). A run that cannot be resumed
with params.yaml's config (a field a resume may not change, other steps, another manifest, or stores whose
targets changed) is never silently reused or mixed: `pipeline demo` refuses it (delete it or change
``distill.runs_dir``), `pipeline distill-variant` (DVC, which ran it because a declared dependency
changed) replaces it with a new run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pipeline.errors import fail

from pipeline.params import Params, read_params

if TYPE_CHECKING:  # stage imports stay lazy: `pipeline --help` should not import torch
    from pipeline.extract import ExtractConfig
    from stages.distill.config import DistillConfig
    from store_schema.teacher_store import TeacherStore
    from stages.evaluate.downstream import DownstreamConfig


def _corpus(p: Params) -> None:
    from stages.corpus.build_manifest import build_manifest
    from stages.corpus.demo import export_demo_corpus
    from store_schema.manifest import ViewSpec

    demo = export_demo_corpus(p.demo.dir)
    typer.echo(f"demo corpus: {demo.num_photos} photos, {demo.num_lfw} LFW crops, {demo.num_shapes} shapes scenes in {demo.images_dir}")
    m = build_manifest(p.corpus.source, out_dir=p.store.root,
                       view_spec=ViewSpec(num_views=p.corpus.views, seed=p.corpus.view_seed),
                       min_side=p.corpus.min_side, val_fraction=p.corpus.val_fraction)
    typer.echo(f"manifest: {m.path} ({m.num_images} images, {int(m.ok_N.sum())} ok)")


def extract_config(p: Params, teacher: str) -> "ExtractConfig":
    """The ExtractConfig of one teacher's stage, as `pipeline extract-stage` and `pipeline demo` build it."""
    from pipeline.cmd_extract import parse_grid
    from pipeline.extract import ExtractConfig
    from store_schema.codecs import CodecSpec

    e = p.extract
    grid = e.storage_grids.get(teacher)
    return ExtractConfig(batch_size=e.batch_size, shard_size=e.shard_size,
                         storage_grid=parse_grid(grid) if grid else None, codec=CodecSpec(keepbits=e.keepbits),
                         checkpoint=e.checkpoints.get(teacher), device=e.device, workers=e.workers,
                         gpus_per_worker=1.0 if e.device.startswith("cuda") else 0.0,
                         ray_address=e.ray_address, progress=False, decode_ahead=e.decode_ahead,
                         cpus_per_worker=e.cpus_per_worker)


def _extract(p: Params, teachers: list[str], *, receipt: Path | None = None) -> None:
    from pipeline.extract import run_extract
    from stages.orchestrate.ray_session import ray_session
    from stages.extract.receipt import write_receipt
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    from pipeline.cmd_extract import check_device

    if p.extract.workers == 0 or p.extract.ray_address is None:  # the teacher runs on this machine
        check_device(p.extract.device)  # before any store is created
    with ray_session(p.extract.ray_address, needed=p.extract.workers > 0):
        for teacher in teachers:
            typer.echo(run_extract(p.store.root, teacher, extract_config(p, teacher)).summary_line())
            store = open_teacher_store(teacher_store_path(p.store.root, teacher))
            if p.extract.fidelity_images > 0:
                _fidelity(p, store)
            if receipt is not None:
                typer.echo(f"receipt: {write_receipt(store, receipt)}")


def _fidelity(p: Params, store: "TeacherStore") -> None:
    """Measure the store's fidelity per variant (unless a current measurement exists) and print it."""
    from stages.extract.fidelity import measure_store_fidelity, read_fidelity, write_fidelity
    from stages.normalize.fidelity import FidelityCheck
    from store_schema.layout import manifest_path
    from store_schema.manifest import read_manifest

    checks, _ = read_fidelity(p.store.root, store)
    if checks is None:
        result = measure_store_fidelity(store, read_manifest(manifest_path(p.store.root)), root=p.store.root,
                                        num_images=p.extract.fidelity_images, device=p.extract.device,
                                        checkpoint=p.extract.checkpoints.get(store.spec.name))
        typer.echo(f"fidelity: {write_fidelity(p.store.root, result)}")
        checks = [FidelityCheck.from_dict(c) for c in result["checks"]]
    failed = sorted({c.variant for c in checks if not c.passed})
    typer.echo(f"fidelity {store.spec.name}: {len(checks) - sum(not c.passed for c in checks)}/{len(checks)} "
               f"variant·kind checks pass" + (f"; WARNING: {', '.join(failed)} fail the gate" if failed else ""))


def _extract_text(p: Params) -> None:
    from stages.extract.text import extract_text
    from stages.prompts import prompt_set

    from pipeline.cmd_text import text_class_sets

    sets = [prompt_set(c, t) for c, t in text_class_sets(p)]
    for teacher in p.extract.text_teachers:
        typer.echo(extract_text(p.store.root, teacher, sets, checkpoint=p.extract.checkpoints.get(teacher),
                                device=p.extract.device).summary_line())


def downstream_config(p: Params) -> "DownstreamConfig":
    """The downstream evaluation params.yaml asks for (what dvc.yaml's evaluate stage passes)."""
    from stages.evaluate.downstream import DownstreamConfig

    e = p.evaluate
    return DownstreamConfig(zeroshot_classes=e.zeroshot_classes, zeroshot_templates=e.zeroshot_templates,
                            seg_masks=e.seg_masks, seg_classes=e.seg_classes, seg_templates=e.seg_templates,
                            seg_probe_steps=e.seg_probe_steps)


def distill_config(p: Params, norm: str, seed: int) -> "DistillConfig":
    """The DistillConfig of one sweep variant and seed, as `pipeline distill` builds it from the same params."""
    from stages.distill.config import DistillConfig

    d = p.distill
    return DistillConfig(student=d.student, teachers=tuple(p.extract.teachers), root=p.store.root,
                         out_dir=p.run_dir(norm, seed), norm=norm, summary_loss=d.summary_loss,
                         img_size=d.img_size, steps=d.steps, batch_size=d.batch_size, lr=d.lr,
                         warmup_steps=d.warmup_steps, grad_clip=d.grad_clip, seed=seed, device=d.device,
                         log_every=d.log_every, ckpt_every=d.ckpt_every, num_workers=d.num_workers,
                         loader_memory=d.loader_memory, num_summary_tokens=d.num_summary_tokens,
                         student_views=d.student_views)


def train_variant(config: "DistillConfig", *, replace_conflicting: bool) -> str:
    """Train one sweep variant into config.out_dir, reusing or resuming what is there; returns what it did.

    No checkpoint: a fresh run ("trained"). A finished run (export present) with the same config and
    steps: "reused". Same config otherwise: resumed ("resumed", an interrupted run). A run that cannot be
    resumed with `config` (a field a resume may not change, other steps, another manifest, or stores whose
    targets changed since it was trained) is replaced by
    a new run ("retrained") when `replace_conflicting`, else refused with ValueError naming what differs.
    """
    from stages.distill.run_dir import checkpoint_path, discard_run, export_path, read_run_config
    from stages.distill.train import train

    run = config.out_dir
    if not checkpoint_path(run).is_file():
        train(config)
        return "trained"
    saved, resolved = read_run_config(run)
    conflicts = _resume_conflicts(config, saved, resolved)
    if conflicts and not replace_conflicting:
        raise ValueError(f"{run} holds a run that cannot be resumed with this config: {'; '.join(conflicts)}. "
                         "Delete it or set another distill.runs_dir")
    if conflicts:
        typer.echo(f"distill {run}: {'; '.join(conflicts)}: training a new run in its place")
        discard_run(run)
        train(config)
        return "retrained"
    if export_path(run).is_file() and saved.steps == config.steps:
        return "reused"
    train(config, resume=True)
    return "resumed"


def _resume_conflicts(config: "DistillConfig", saved: "DistillConfig", resolved: dict) -> list[str]:
    """Why the saved run (config `saved`, config.json dict `resolved`) cannot be resumed with `config`."""
    from stages.distill.loader import StoreSet
    from stages.distill.train import changed_stores
    from store_schema.layout import manifest_path
    from store_schema.manifest import manifest_hash

    mine, theirs = saved.to_dict(), config.to_dict()
    why = [f"{k} {mine[k]!r} -> {theirs[k]!r}" for k in saved.resume_conflicts(config)]
    if config.steps != saved.steps:  # a run of N steps is trained on an N-step schedule: never extended here
        why.append(f"steps {saved.steps} -> {config.steps} (a {config.steps}-step run needs a {config.steps}-step "
                   "schedule)")
    if resolved.get("manifest_hash") != manifest_hash(manifest_path(config.root)):
        why.append("the manifest changed")
    else:
        changed = changed_stores(resolved, StoreSet(config.root, config.teachers, norm=config.norm,
                                                           summary_loss=config.summary_loss))
        if changed:
            why.append(f"the stored targets of {changed} changed")
    return why


def _views(p: Params) -> None:
    """The student's views rendered once at distill.img_size (`pipeline views`), unless distill decodes them."""
    from stages.extract.student_views import run_views

    if p.distill.student_views == "decode":
        return
    typer.echo(run_views(p.store.root, p.distill.img_size, workers=max(p.extract.workers, 1),
                         use_ray=p.extract.workers > 0, ray_address=p.extract.ray_address).summary())


def _distill(p: Params) -> list[Path]:
    runs = []
    for norm, seed in p.sweep_runs():
        config = distill_config(p, norm, seed)
        typer.echo(f"distill {norm} seed {seed}: {config.steps} steps -> {config.out_dir}")
        typer.echo(f"distill {norm} seed {seed}: {train_variant(config, replace_conflicting=False)}")
        runs.append(config.out_dir)
    return runs


def run_demo(p: Params) -> Path:
    """Run every stage of the sweep from params; returns the report's path (report.md)."""
    from stages.evaluate.downstream import flatten_downstream
    from stages.evaluate.evaluate import evaluate_run
    from stages.evaluate.report import write_report

    _corpus(p)
    _extract(p, p.extract.teachers)
    _extract_text(p)
    _views(p)
    runs = _distill(p)
    e = p.evaluate
    if not e.probe_labels.is_file():
        raise FileNotFoundError(f"evaluate.probe_labels {e.probe_labels} does not exist")
    for run in runs:
        res = evaluate_run(run, split=e.split, batch_size=e.batch_size, labels_path=e.probe_labels, knn_k=e.knn_k,
                           knn_temperature=e.knn_temperature, device=p.distill.device,
                           downstream=downstream_config(p))
        typer.echo(f"evaluate {run.name}: teacher-space MSE " + ", ".join(
            f"{t}/{k} {v['mse']:.4g}" for t, kinds in res["teachers"].items() for k, v in kinds.items()))
        typer.echo(f"evaluate {run.name}: " + ", ".join(f"{m} {v:.3f}" for m, v in flatten_downstream(res).items()))
    return write_report(runs, p.report.out, store_root=p.store.root)


def distill_variant_cmd(
    norm: Annotated[str, typer.Option(help="The sweep variant to train (one of distill.norms).")],
    seed: Annotated[Optional[int], typer.Option(help="Its seed (one of distill.seeds; default: the first).")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml the run is configured from.")] = Path("params.yaml"),
    receipts: Annotated[Optional[Path], typer.Option(help="Folder of the extract stages' receipts (dvc.yaml: receipts); each selected teacher's receipt must describe its store as it is now.")] = None,
) -> None:
    """Train one variant of the sweep as `pipeline demo` does (dvc.yaml's distill stage): resumes the run
    from its checkpoint when its config and stores match, replaces one that cannot be resumed. Damaged
    files (config.json, checkpoint, receipts, normalizers, manifest) stop it with an error naming the file;
    they are never a reason to retrain."""
    from store_schema.errors import StoreError

    try:
        p = read_params(params)
        if norm not in p.distill.norms:
            raise ValueError(f"--norm {norm!r} is not in distill.norms {p.distill.norms}")
        seed = p.distill.seeds[0] if seed is None else seed
        if seed not in p.distill.seeds:
            raise ValueError(f"--seed {seed} is not in distill.seeds {p.distill.seeds}")
        config = distill_config(p, norm, seed)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    try:
        if receipts is not None:
            _check_receipts(receipts, config)
        done = train_variant(config, replace_conflicting=True)  # DVC re-ran it: a dependency changed
    except (ValueError, FileNotFoundError, StoreError) as e:
        raise fail(str(e)) from e
    typer.echo(f"run: {config.out_dir} ({done})")


def _check_receipts(receipts: Path, config: "DistillConfig") -> None:
    from stages.extract.receipt import check_receipt, receipt_path
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    for teacher in config.teachers:
        path = receipt_path(receipts, teacher)
        if not path.is_file():
            raise FileNotFoundError(f"no receipt {path} for teacher {teacher}; run its extract stage "
                                    f"(`pipeline extract-stage --teacher {teacher} --receipt {path}`)")
        check_receipt(path, open_teacher_store(teacher_store_path(config.root, teacher)))


def extract_stage_cmd(
    teacher: Annotated[str, typer.Option(help="The teacher to extract (one of extract.teachers).")],
    params: Annotated[Path, typer.Option(help="params.yaml the stage is configured from.")] = Path("params.yaml"),
    receipt: Annotated[Optional[Path], typer.Option(help="Write the finished store's JSON receipt here (what DVC tracks instead of the store).")] = None,
) -> None:
    """Extract one teacher exactly as `pipeline demo` does, from params.yaml (dvc.yaml's extract stage)."""
    try:
        p = read_params(params)
        if teacher not in p.extract.teachers:
            raise ValueError(f"--teacher {teacher!r} is not in extract.teachers {p.extract.teachers}")
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    from stages.teachers.errors import MissingWeightsError
    from store_schema.errors import StoreError

    try:
        _extract(p, [teacher], receipt=receipt)
    except (ValueError, StoreError, MissingWeightsError) as e:
        raise fail(str(e)) from e


def demo_cmd(
    params: Annotated[Path, typer.Option(help="params.yaml to run (see configs/ for presets).")] = Path("params.yaml"),
) -> None:
    """Run the whole offline demo (corpus, extract, distill sweep, evaluate, report) from PARAMS."""
    from stages.teachers.errors import MissingWeightsError
    from store_schema.errors import StoreError

    try:
        p = read_params(params)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    try:
        md = run_demo(p)
    except (ValueError, FileNotFoundError, StoreError, MissingWeightsError) as e:  # damaged files, no space, ...
        raise fail(str(e)) from e
    typer.echo(f"report: {md}")


def register(app: typer.Typer) -> None:
    """Add `demo` to the pipeline CLI, and the two commands only dvc.yaml runs (hidden from --help)."""
    app.command("demo")(demo_cmd)
    app.command("extract-stage", hidden=True)(extract_stage_cmd)
    app.command("distill-variant", hidden=True)(distill_variant_cmd)
