"""`pipeline store info|verify`: inspect and check per-teacher feature stores (AM-RADIO / PHI-S stage one).

Thin commands over `stages.extract.inspect` and `stages.extract.verify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stages.extract.inspect import format_info, store_info
from stages.extract.verify import verify_store
from store_schema.layout import teacher_store_path
from store_schema.teacher_store import TeacherStore, open_teacher_store


def _stores(root: Path, teachers: list[str] | None) -> list[TeacherStore]:
    """The named stores under root, or every <teacher>.zarr there when none are named."""
    if teachers:
        names = [n.strip() for v in teachers for n in v.split(",") if n.strip()]
        paths = [teacher_store_path(root, n) for n in names]
    else:
        paths = sorted(p for p in Path(root).glob("*.zarr") if (p / "zarr.json").is_file())
        if not paths:
            raise typer.BadParameter(f"no teacher stores (*.zarr) under {root}")
    return [open_teacher_store(p, mode="r") for p in paths]


RootOpt = Annotated[Path, typer.Option(help="Store root holding manifest.parquet and <teacher>.zarr stores.")]
TeacherOpt = Annotated[Optional[list[str]], typer.Option("--teacher", "-t", help="Teacher store(s) to look at; default: all under --root.")]


def info_cmd(root: RootOpt, teacher: TeacherOpt = None) -> None:
    """Per teacher: images, views, shard progress, shapes, bytes on disk, bits per value, statistics."""
    for store in _stores(root, teacher):
        typer.echo(format_info(store_info(store)))


def verify_cmd(
    root: RootOpt,
    teacher: TeacherOpt = None,
    recompute_stats: Annotated[bool, typer.Option(help="Also recompute each shard's moments from its data and compare.")] = True,
) -> None:
    """Read every shard (crc32c-checked), check completion state and statistics; exit 1 when damaged."""
    damaged = False
    for store in _stores(root, teacher):
        report = verify_store(store, recompute_stats=recompute_stats)
        typer.echo(report.format())
        damaged |= not report.ok
    if damaged:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add the `store` command group (info, verify) to the pipeline CLI."""
    store_app = typer.Typer(help="Inspect and verify teacher feature stores.", no_args_is_help=True)
    store_app.command("info")(info_cmd)
    store_app.command("verify")(verify_cmd)
    app.add_typer(store_app, name="store")
