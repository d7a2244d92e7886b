"""`pipeline store info|verify|transcode`: inspect, check and re-encode per-teacher feature stores (AM-RADIO /
PHI-S stage one).

Thin commands over `stages.extract.inspect`, `stages.extract.verify` and `stages.extract.transcode`, imported inside the commands (only
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


def transcode_cmd(
    ctx: typer.Context,
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Teacher whose store <root>/<teacher>.zarr is transcoded.")],
    to: Annotated[Path, typer.Option("--to", help="Destination store root; gets manifest.parquet and <teacher>.zarr.")],
    root: RootOpt = None,
    storage_grid: Annotated[Optional[str], typer.Option(help="Destination patch grid HxW, no larger than the source's (adaptive average pooling). Default: the source's grid.")] = None,
    codec: Annotated[Optional[str], typer.Option(help="Destination compressor COMPRESSOR[:LEVEL] (zstd, lz4, lz4hc, blosclz, zlib; e.g. zstd:5). Default: the source's.")] = None,
    keepbits: Annotated[Optional[str], typer.Option(help="Destination mantissa bits (BitRound), or 'none' for lossless. Default: the source's.")] = None,
    workers: Annotated[int, typer.Option(help="Shards transcoded at once (dask threads; ignored on Ray, which places the tasks).")] = 2,
    ray_address: Annotated[Optional[str], typer.Option(help="Run the dask tasks on this Ray cluster ('auto' or host:port) through Ray's dask scheduler; every node must see both roots.")] = None,
) -> None:
    """Re-encode a store without the teacher: pool its grid, change its codec or drop mantissa bits.

    One dask task per shard; resumable (complete destination shards are skipped); statistics are recomputed
    from the new stored values and the source's fingerprint is recorded in the destination."""
    from dataclasses import replace

    from pipeline.cmd_extract import parse_grid, parse_keepbits
    from stages.extract.transcode import transcode_store
    from store_schema.codecs import CodecSpec
    from store_schema.errors import StoreError
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    root = _root(ctx, root)
    try:
        grid = parse_grid(storage_grid) if storage_grid else None
        source_codec = open_teacher_store(teacher_store_path(root, teacher)).codec
        new_codec = source_codec
        if codec is not None:
            name, _, level = codec.partition(":")
            if level and not level.isdigit():
                raise ValueError(f"--codec must look like COMPRESSOR[:LEVEL] (e.g. zstd:5), got {codec!r}")
            new_codec = replace(new_codec, compressor=name, **({"clevel": int(level)} if level else {}))
        if keepbits is not None:
            new_codec = replace(new_codec, keepbits=parse_keepbits(keepbits))
        new_codec = CodecSpec.from_dict(new_codec.to_dict())  # validated
    except (ValueError, StoreError) as e:
        raise _fail(str(e)) from e
    started_ray = False
    try:
        if ray_address is not None:
            from pipeline.ray_runtime import init_ray, ray_is_running

            started_ray = not ray_is_running()
            init_ray(ray_address)
        report = transcode_store(root, teacher, to, storage_grid=grid, codec=new_codec,
                                 scheduler="ray" if ray_address is not None else "threads", workers=workers)
    except (ValueError, StoreError) as e:
        raise _fail(str(e)) from e
    finally:
        if started_ray:
            from pipeline.ray_runtime import shutdown_ray

            shutdown_ray()
    typer.echo(report.summary_line())


def register(app: typer.Typer) -> None:
    """Add the `store` command group (info, verify) to the pipeline CLI."""
    store_app = typer.Typer(help="Inspect, verify and transcode teacher feature stores.", no_args_is_help=True)
    store_app.command("info")(info_cmd)
    store_app.command("verify")(verify_cmd)
    store_app.command("transcode")(transcode_cmd)
    app.add_typer(store_app, name="store")
