"""`pipeline store info|verify`: inspect and check per-teacher feature stores (AM-RADIO / PHI-S stage one).

Thin commands over `stages.extract.inspect` and `stages.extract.verify`, imported inside the commands (only
typer and the standard library at module level). A store that does not exist or cannot be opened is one
error line naming the stores that do exist (exit 2), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from store_schema.teacher_store import TeacherStore


def _fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(2)


def _stores(root: Path, teachers: list[str] | None) -> list[TeacherStore]:
    """The named stores under root, or every <teacher>.zarr there when none are named."""
    from store_schema.errors import StoreError
    from store_schema.layout import list_teacher_stores, teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    existing = list_teacher_stores(root)
    names = [n.strip() for v in teachers for n in v.split(",") if n.strip()] if teachers else existing
    if not names:
        raise _fail(f"no teacher stores (<teacher>.zarr) under {root}; run `pipeline extract` first")
    unknown = [n for n in names if n not in existing]
    if unknown:
        raise _fail(f"no store for teacher(s) {', '.join(map(repr, unknown))} under {root}; stores there: "
                    f"{', '.join(existing) if existing else 'none'}")
    try:
        return [open_teacher_store(teacher_store_path(root, n), mode="r") for n in names]
    except (StoreError, ValueError) as e:
        raise _fail(str(e)) from e


RootOpt = Annotated[Optional[Path], typer.Option(help="Store root holding manifest.parquet and <teacher>.zarr stores. Default: store.root of ./params.yaml.")]
TeacherOpt = Annotated[Optional[list[str]], typer.Option("--teacher", "-t", help="Teacher store(s) to look at; default: all under --root.")]


def _root(ctx: typer.Context, root: Path | None) -> Path:
    from pipeline.flag_defaults import STORE, fill_from_params

    return fill_from_params(ctx, {"root": root}, STORE, required=("root",))["root"]


def info_cmd(ctx: typer.Context, root: RootOpt = None, teacher: TeacherOpt = None) -> None:
    """Per teacher: images, views, shard progress, shapes, bytes on disk, bits per value, statistics."""
    from stages.extract.inspect import format_info, store_info

    for store in _stores(_root(ctx, root), teacher):
        typer.echo(format_info(store_info(store)))


def verify_cmd(
    ctx: typer.Context,
    root: RootOpt = None,
    teacher: TeacherOpt = None,
    recompute_stats: Annotated[bool, typer.Option(help="Also recompute each shard's moments from its data and compare.")] = True,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Exit 0 when images are only missing (a store still being filled); damage still exits 1.")] = False,
) -> None:
    """Read every shard (crc32c-checked), check completion and statistics; name damaged and missing images.

    Exit 1 when any image is damaged, or missing (its shard not complete) unless --allow-incomplete."""
    from stages.extract.verify import verify_store

    failed = False
    for store in _stores(_root(ctx, root), teacher):
        report = verify_store(store, recompute_stats=recompute_stats)
        typer.echo(report.format())
        failed |= not (report.ok if allow_incomplete else report.complete)
    if failed:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add the `store` command group (info, verify) to the pipeline CLI."""
    store_app = typer.Typer(help="Inspect and verify teacher feature stores.", no_args_is_help=True)
    store_app.command("info")(info_cmd)
    store_app.command("verify")(verify_cmd)
    app.add_typer(store_app, name="store")
