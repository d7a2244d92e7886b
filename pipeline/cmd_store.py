"""`pipeline store info|verify|transcode|fidelity`: inspect, check and re-encode per-teacher feature stores
(AM-RADIO / PHI-S stage one). `fidelity` measures, per normalization variant, the storage noise in the
space the loss uses against the teacher's own bf16 noise (PHI-S, arXiv 2410.01680) and writes it beside
the store; `info` prints the latest measurement and warns for each variant that fails.

Thin commands over `stages.extract.inspect`, `stages.extract.verify`, `stages.extract.transcode` and
`stages.extract.fidelity`, imported inside the commands (only
typer and the standard library at module level). A store that does not exist or cannot be opened is one
error line naming the stores that do exist (exit 2), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pipeline.defaults import ParamsOpt, Route, routed
from pipeline.errors import fail, user_error_types

if TYPE_CHECKING:
    from store_schema.teacher_store import TeacherStore


def _stores(root: Path, teachers: list[str] | None) -> list[TeacherStore]:
    """The named stores under root, or every <teacher>.zarr there when none are named."""
    from store_schema.layout import list_teacher_stores, teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    existing = list_teacher_stores(root)
    names = [n.strip() for v in teachers for n in v.split(",") if n.strip()] if teachers else existing
    if not names:
        raise fail(f"no teacher stores (<teacher>.zarr) under {root}; run `pipeline extract` first")
    unknown = [n for n in names if n not in existing]
    if unknown:
        raise fail(f"no store for teacher(s) {', '.join(map(repr, unknown))} under {root}; stores there: "
                    f"{', '.join(existing) if existing else 'none'}")
    return [open_teacher_store(teacher_store_path(root, n), mode="r") for n in names]


RootOpt = Annotated[Optional[str], typer.Option(help="Store root holding manifest.parquet and <teacher>.zarr stores: a folder or an fsspec URL (s3://bucket/prefix). Default: store.root.")]
TeacherOpt = Annotated[Optional[list[str]], typer.Option("--teacher", "-t", help="Teacher store(s) to look at; default: all under --root.")]


STORE = Route(keys={"root": "store.root", "ray_timeout": "extract.ray_timeout"}, required=("root",))


def _location(root: str) -> Path | str:
    from store_schema.location import as_location

    return as_location(root)


def info_cmd(root: RootOpt = None, teacher: TeacherOpt = None, params: ParamsOpt = None) -> None:
    """Per teacher: images, views, shard progress, shapes, bytes on disk, bits per value, statistics;
    then each student-view store (`pipeline views`): shards complete, images rendered, bytes.

    Exit 1 when a store was not built from the root's manifest.parquet (a store copied from another corpus)."""
    from stages.extract.fidelity import read_fidelity
    from stages.extract.inspect import format_info, store_info
    from stages.normalize.fidelity import format_checks

    from stages.extract.verify import manifest_problem

    root = _location(root)
    wrong = []
    for store in _stores(root, teacher):
        typer.echo(format_info(store_info(store)))
        problem = manifest_problem(store, root)
        if problem is not None:
            wrong.append(store.key)
            typer.echo(f"  WRONG MANIFEST: {problem}")
        checks, why = read_fidelity(root, store)
        typer.echo("  fidelity per variant (storage NMSE in the loss space vs the teacher's bf16 noise):"
                   if checks is not None else f"  fidelity: {why}")
        for line in format_checks(checks or [], store.codec.keepbits):
            typer.echo(f"    {line}")
    if not teacher:
        from stages.extract.student_views import view_store_lines

        lines, wrong_views = view_store_lines(root)
        for line in lines:
            typer.echo(line)
        wrong += wrong_views
    if wrong:
        typer.echo(f"Error: store(s) {', '.join(wrong)} under {root} were not built from its manifest", err=True)
        raise typer.Exit(code=1)


def fidelity_cmd(
    root: RootOpt = None,
    teacher: TeacherOpt = None,
    images: Annotated[int, typer.Option(help="Train-split images (all their views) to run the teacher on.")] = 16,
    device: Annotated[str, typer.Option(help="Torch device of the teacher (bf16 autocast there).")] = "cpu",
    checkpoint: Annotated[Optional[Path], typer.Option(help="Local weights file of the teacher (one --teacher).")] = None,
    params: ParamsOpt = None,
) -> None:
    """Run each teacher in float32 and bf16 on a few images; write and print, per normalization variant,
    the storage NMSE in the loss space against the teacher's own bf16 noise (gate: at most a tenth)."""
    from stages.extract.fidelity import measure_store_fidelity, write_fidelity
    from stages.normalize.fidelity import FidelityCheck, format_checks
    from store_schema.layout import manifest_path
    from store_schema.manifest import read_manifest

    root = _location(root)
    stores = _stores(root, teacher)
    if checkpoint is not None and len(stores) != 1:
        raise fail("--checkpoint needs exactly one --teacher")
    manifest = read_manifest(manifest_path(root))
    for store in stores:
        result = measure_store_fidelity(store, manifest, root=root, num_images=images, device=device,
                                        checkpoint=checkpoint)
        typer.echo(f"{store.key}: {write_fidelity(root, result)}")
        for line in format_checks([FidelityCheck.from_dict(c) for c in result["checks"]], result["keepbits"]):
            typer.echo(f"  {line}")


def verify_cmd(
    root: RootOpt = None,
    teacher: TeacherOpt = None,
    recompute_stats: Annotated[bool, typer.Option(help="Also recompute each shard's moments from its data and compare.")] = True,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Exit 0 when images are only missing (a store still being filled); damage still exits 1.")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="Redo the damaged shards in this process (as `pipeline extract --redo-shards` does, with the store's own settings and recorded weights), then verify again.")] = False,
    device: Annotated[str, typer.Option(help="With --repair: torch device of the teacher.")] = "cpu",
    params: ParamsOpt = None,
) -> None:
    """Read every shard (crc32c-checked), check completion and statistics; name damaged and missing images.

    Exit 1 when any image is damaged (after --repair: still damaged), or missing (its shard not complete)
    unless --allow-incomplete, or when the store was not built from the root's manifest.parquet (a store
    copied from another corpus)."""
    from stages.extract.verify import verify_store

    failed = False
    root = _location(root)
    for store in _stores(root, teacher):
        report = verify_store(store, recompute_stats=recompute_stats, root=root)
        typer.echo(report.format())
        damaged = [s.shard for s in report.shards if s.status == "damaged"]
        if repair and damaged and report.manifest_problem is None:
            report = _repair(root, store, damaged, device=device, recompute_stats=recompute_stats)
        failed |= not (report.ok if allow_incomplete else report.complete)
    if failed:
        raise typer.Exit(code=1)


def _repair(root, store: "TeacherStore", shards: list[int], *, device: str, recompute_stats: bool):
    """Redo `shards` of `store` (stages.extract.driver.repair_store) and return the new verify report."""
    from stages.extract.driver import repair_store
    from stages.extract.verify import verify_store
    from store_schema.teacher_store import open_teacher_store

    try:
        done = repair_store(root, store.key, shards, device=device)
    except user_error_types() as e:
        raise fail(f"repair of {store.path} shards {shards}: {e}") from e
    typer.echo(f"  repaired shards {sorted(done.computed_shards)} ({done.seconds:.1f} s"
               + (f"; statistics of {done.unfolded} folded shards unfolded and refolded)" if done.unfolded else ")"))
    report = verify_store(open_teacher_store(store.path), recompute_stats=recompute_stats, root=root)
    typer.echo(report.format())
    return report


def transcode_cmd(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Teacher whose store <root>/<teacher>.zarr is transcoded.")],
    to: Annotated[str, typer.Option("--to", help="Destination store root (a folder or an fsspec URL); gets manifest.parquet and <teacher>.zarr.")],
    root: RootOpt = None,
    storage_grid: Annotated[Optional[str], typer.Option(help="Destination patch grid HxW, no larger than the source's (adaptive average pooling). Default: the source's grid.")] = None,
    codec: Annotated[Optional[str], typer.Option(help="Destination compressor COMPRESSOR[:LEVEL] (zstd, lz4, lz4hc, blosclz, zlib; e.g. zstd:5). Default: the source's.")] = None,
    keepbits: Annotated[Optional[str], typer.Option(help="Destination mantissa bits (BitRound), or 'none' for lossless. Default: the source's.")] = None,
    workers: Annotated[int, typer.Option(help="Shards transcoded at once (dask threads; ignored on Ray, which places the tasks).")] = 2,
    ray_address: Annotated[Optional[str], typer.Option(help="Run the dask tasks on this Ray cluster ('auto' or host:port) through Ray's dask scheduler; every node must see both roots.")] = None,
    ray_timeout: Annotated[Optional[float], typer.Option(help="Seconds the cluster at --ray-address has to answer. Default: extract.ray_timeout.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="If another run is writing the destination store (it holds its lease), wait for it instead of failing at once.")] = False,
    params: ParamsOpt = None,
) -> None:
    """Re-encode a store without the teacher: pool its grid, change its codec or drop mantissa bits.

    One dask task per shard; resumable (complete destination shards are skipped); statistics are recomputed
    from the new stored values and the source's fingerprint is recorded in the destination."""
    from dataclasses import replace

    from pipeline.cmd_extract import parse_grid, parse_keepbits
    from stages.extract.transcode import transcode_store
    from stages.orchestrate.ray_address import check_reachable
    from stages.orchestrate.ray_session import ray_session
    from store_schema.codecs import CodecSpec
    from store_schema.layout import teacher_store_path
    from store_schema.lease import LeaseOptions
    from store_schema.teacher_store import open_teacher_store

    root = _location(root)
    if ray_address is not None:  # a mistyped cluster address: one line, before the destination exists
        check_reachable(ray_address, timeout_s=ray_timeout)
    grid = parse_grid(storage_grid) if storage_grid else None
    new_codec = open_teacher_store(teacher_store_path(root, teacher)).codec
    if codec is not None:
        name, _, level = codec.partition(":")
        if level and not level.isdigit():
            raise ValueError(f"--codec must look like COMPRESSOR[:LEVEL] (e.g. zstd:5), got {codec!r}")
        new_codec = replace(new_codec, compressor=name, **({"clevel": int(level)} if level else {}))
    if keepbits is not None:
        new_codec = replace(new_codec, keepbits=parse_keepbits(keepbits))
    new_codec = CodecSpec.from_dict(new_codec.to_dict())  # validated
    with ray_session(ray_address, needed=ray_address is not None, connect_timeout=ray_timeout):
        report = transcode_store(root, teacher, _location(to), storage_grid=grid, codec=new_codec,
                                 scheduler="ray" if ray_address is not None else "threads", workers=workers,
                                 lease=LeaseOptions(wait=wait))
    typer.echo(report.summary_line())


def register(app: typer.Typer) -> None:
    """Add the `store` command group (info, verify, transcode, fidelity) to the pipeline CLI."""
    store_app = typer.Typer(help="Inspect, verify and transcode teacher feature stores.", no_args_is_help=True)
    for name, command in (("info", info_cmd), ("verify", verify_cmd), ("transcode", transcode_cmd),
                          ("fidelity", fidelity_cmd)):
        store_app.command(name, cls=routed(STORE))(command)
    app.add_typer(store_app, name="store")
