"""`pipeline extract`: stage one of AM-RADIO-style distillation (arXiv 2312.06709), teachers into stores.

Thin command over `pipeline.extract.run_extract`; views come from the manifest (it holds the view spec).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.extract import ExtractConfig, run_extract
from pipeline.ray_runtime import init_ray, ray_is_running, shutdown_ray
from stages.teachers.registry import get_teacher_spec
from store_schema.codecs import CodecSpec
from stages.extract.receipt import write_receipt
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.teacher_store import open_teacher_store


def parse_grid(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W); ValueError naming the expected form otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"storage grid must look like HxW (e.g. 16x16), got {text!r}")
    return int(parts[0]), int(parts[1])


def parse_teachers(values: list[str]) -> list[str]:
    """Repeated --teacher options and comma lists -> de-duplicated names in the order given."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        raise ValueError("give at least one --teacher")
    return list(dict.fromkeys(names))


def parse_keepbits(text: str) -> int | None:
    """'7' -> 7; 'none' -> None (lossless)."""
    if text.lower() == "none":
        return None
    if not text.isdigit():
        raise ValueError(f"keepbits must be an integer in [0, 23] or 'none', got {text!r}")
    return int(text)


def extract_cmd(
    teacher: Annotated[list[str], typer.Option("--teacher", "-t", help="Teacher name from the registry; repeat or comma-separate for several.")],
    root: Annotated[Path, typer.Option(help="Store root: holds manifest.parquet; stores go to <root>/<teacher>.zarr.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Local weights file for the teacher (one teacher only).")] = None,
    batch_size: Annotated[int, typer.Option(help="Views per teacher forward pass.")] = 32,
    shard_size: Annotated[int, typer.Option(help="Images per shard (the unit of work and of resume); fixed when the store is created.")] = 64,
    storage_grid: Annotated[Optional[str], typer.Option(help="Patch grid to store, HxW, no larger than the teacher's (adaptive average pooling). Default: the teacher's grid.")] = None,
    keepbits: Annotated[str, typer.Option(help="Mantissa bits kept by BitRound (7 = bf16 precision), or 'none' for lossless.")] = "7",
    workers: Annotated[int, typer.Option(help="Ray actors, each holding one teacher copy.")] = 1,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs Ray reserves per actor.")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs Ray reserves per actor (use with --device cuda).")] = 0.0,
    ray_address: Annotated[Optional[str], typer.Option(help="Existing Ray cluster ('auto' or host:port); default starts a local Ray.")] = None,
    device: Annotated[str, typer.Option(help="Torch device for the teacher forward pass (cpu, cuda, cuda:0).")] = "cpu",
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Run the shard worker in this process without Ray (same code path).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    receipt: Annotated[Optional[Path], typer.Option(help="Write a JSON receipt of the finished store here (one teacher only): manifest hash, spec, complete shards, statistics hashes. DVC stages depend on it instead of the store.")] = None,
) -> None:
    """Run teachers over the manifest into per-teacher Zarr stores; complete shards are skipped."""
    try:
        teachers = parse_teachers(teacher)
        for name in teachers:
            get_teacher_spec(name)  # unknown names: ValueError listing the valid ones
        if not manifest_path(root).is_file():
            raise ValueError(f"no manifest at {manifest_path(root)}; build one with `pipeline corpus` first")
        grid = parse_grid(storage_grid) if storage_grid else None
        codec = CodecSpec(keepbits=parse_keepbits(keepbits))
        if checkpoint is not None and len(teachers) > 1:
            raise ValueError("--checkpoint applies to one teacher; extract the others in a separate call")
        if receipt is not None and len(teachers) > 1:
            raise ValueError("--receipt applies to one teacher; extract the others in a separate call")
        config = ExtractConfig(batch_size=batch_size, shard_size=shard_size, storage_grid=grid, codec=codec,
                               checkpoint=checkpoint, device=device, workers=0 if no_ray else workers,
                               cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                               ray_address=ray_address, progress=progress)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    started_ray = config.workers > 0 and not ray_is_running()  # never stop a Ray someone else started
    if started_ray:
        init_ray(ray_address)
    try:
        for name in teachers:
            report = run_extract(root, name, config)
            typer.echo(report.summary_line())
            typer.echo(f"  computed shards {sorted(report.computed_shards)}; skipped {report.skipped_shards}")
            for mv in report.masked[:20]:
                typer.echo(f"  masked image {mv.image_id} view {mv.view}: {mv.reason}")
            if len(report.masked) > 20:
                typer.echo(f"  ... {len(report.masked) - 20} more masked views")
            if receipt is not None:
                store = open_teacher_store(teacher_store_path(root, name))
                typer.echo(f"  receipt: {write_receipt(store, receipt)}")
    finally:
        if started_ray:
            shutdown_ray()


def register(app: typer.Typer) -> None:
    """Add `extract` to the pipeline CLI."""
    app.command("extract")(extract_cmd)
