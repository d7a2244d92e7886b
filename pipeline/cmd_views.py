"""`pipeline views`: render the manifest's views once at the student's input size (stages/extract/student_views.py).

Stage two's loader then reads each student view from <root>/student_views/<size>px.zarr instead of
decoding the image file and rendering the view every epoch: the same pixels (same decode, crop box, flip
and resize), a fraction of the loader's CPU (docs/STAGE_TWO.md). Run it after `pipeline corpus`, for each
student input size; shards already rendered are kept, so an interrupted run continues where it stopped.
Flags not given take their values from params.yaml when there is one (dvc.yaml's views stage).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.defaults import Derived, ParamsOpt, Route, routed
from pipeline.errors import command_line


def _sizes(p) -> list[int]:
    from stages.distill.partitions import partition_sizes

    return partition_sizes(p.distill.partitions, p.distill.img_size)


VIEWS = Route(keys={"size": Derived("distill.img_size / distill.partitions", _sizes),
                    "root": "store.root", "workers": "extract.workers",
                    "ray_address": "extract.ray_address", "ray_timeout": "extract.ray_timeout"},
              required=("size", "root"))


def views_cmd(
    size: Annotated[Optional[list[int]], typer.Option(
        "--size", help="Student input side in pixels; repeat for several students. Default: distill.img_size, or every side of distill.partitions.")] = None,
    root: Annotated[Optional[str], typer.Option(help="Store root holding manifest.parquet (a local or shared folder). "
                                                     "Default: store.root.")] = None,
    shard_size: Annotated[Optional[int], typer.Option(
        help="Images per shard (default: the teacher stores' shard size, so one unit of targets and its views "
             "are one read each; an existing view store keeps its own).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Shards rendered at once (one-CPU Ray actors, each reading the manifest once); 0: in this process, without Ray. Default: extract.workers.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="An existing Ray cluster (auto, host:port); default: local Ray.")] = None,
    ray_timeout: Annotated[Optional[float], typer.Option(help="Seconds the cluster at --ray-address has to answer. Default: extract.ray_timeout.")] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Render in this process without Ray (same code path).")] = False,
    receipt: Annotated[Optional[Path], typer.Option(help="Write a JSON receipt of the stores (what DVC tracks).")] = None,
    params: ParamsOpt = None,
) -> None:
    """Render every (image, view) of the manifest at the student's size into <root>/student_views/<size>px.zarr."""
    from stages.extract.student_views import run_views
    from stages.orchestrate.ray_address import check_reachable
    from store_schema.layout import student_views_path
    from store_schema.view_store import open_view_store

    use_ray = not no_ray and workers > 0
    if use_ray and ray_address is not None:  # a mistyped cluster address: one line, before any view store exists
        check_reachable(ray_address, timeout_s=ray_timeout)
    fingerprints = {}
    for s in dict.fromkeys(size):
        report = run_views(root, s, shard_size=shard_size, workers=max(workers, 1), use_ray=use_ray,
                           ray_address=ray_address, ray_timeout=ray_timeout, resume=command_line())
        typer.echo(report.summary())
        fingerprints[str(s)] = open_view_store(student_views_path(root, s)).fingerprint()
    if receipt is not None:
        receipt.parent.mkdir(parents=True, exist_ok=True)
        receipt.write_text(json.dumps(fingerprints, indent=2, sort_keys=True) + "\n")
        typer.echo(f"receipt: {receipt}")


def register(app: typer.Typer) -> None:
    """Add `views` to the pipeline CLI."""
    app.command("views", cls=routed(VIEWS))(views_cmd)
