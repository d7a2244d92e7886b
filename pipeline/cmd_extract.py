"""`pipeline extract`: stage one of AM-RADIO-style distillation (arXiv 2312.06709), teachers into stores.

Argument parsing and printing over `stages.extract.stage.extract_teachers` (leases, one Ray session,
stages/extract/driver.py per teacher, fidelity, receipts) and `stages.extract.preflight` (the checks made
before any store is created); views come from the manifest (it holds the view spec).
Only typer and the standard library are imported at module level: stage code (torch, zarr) and Ray are
imported inside the command, so `pipeline --help` stays fast and `--no-ray` runs where Ray is absent.
Every user mistake found before or during extraction (a bad option, a store that does not match, missing
weights, a device this machine lacks) ends in one error line and exit status 2, never a traceback, and
the checks that can be made up front run before any store is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional, TypeVar

import typer

from pipeline.defaults import Derived, ParamsOpt, Route, given_on_command_line, parse_only, routed
from pipeline.errors import command_line

if TYPE_CHECKING:
    from stages.extract.config import ExtractConfig
    from stages.extract.driver import ExtractReport
    from stages.extract.stage import TeacherOutcome

T = TypeVar("T")


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


def resolve_gpus_per_worker(gpus_per_worker: float | None, device: str) -> float:
    """GPUs Ray reserves per actor: None means 1 for a CUDA device and 0 otherwise; explicit values are kept."""
    if gpus_per_worker is None:
        return 1.0 if device.strip().lower().startswith("cuda") else 0.0
    if gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    return gpus_per_worker


def _echo_outcome(outcome: "TeacherOutcome") -> None:
    _echo_report(outcome.report)
    if outcome.fidelity_written is not None:
        typer.echo(f"  fidelity: {outcome.fidelity_written}")
    if outcome.fidelity is not None:
        typer.echo(f"  {outcome.fidelity}")
    if outcome.receipt is not None:
        typer.echo(f"  receipt: {outcome.receipt}")


def _echo_report(report: "ExtractReport") -> None:
    typer.echo(report.summary_line())
    if report.redone:
        typer.echo(f"  redone shards {report.redone} (complete flags and statistics cleared"
                   + (f"; the statistics of {report.unfolded} folded shards were unfolded, recomputed from their "
                      "stored values, and folded again in shard order)" if report.unfolded else ")"))
    typer.echo(f"  computed shards {sorted(report.computed_shards)}; skipped {report.skipped_shards}")
    by_node: dict[str, list[int]] = {}
    for k, node in sorted(report.shard_nodes.items()):
        by_node.setdefault(node, []).append(k)
    for node, shards in by_node.items():  # where the shards ran (Ray node id, worker host:pid)
        workers = sorted({report.shard_workers.get(k, "?") for k in shards})
        typer.echo(f"  node {node}: shards {shards} (workers {', '.join(workers)})")
    for mv in report.masked[:20]:
        typer.echo(f"  masked image {mv.image_id} view {mv.view}: {mv.reason}")
    if len(report.masked) > 20:
        typer.echo(f"  ... {len(report.masked) - 20} more masked views")


# ---- options, grouped as --help shows them (defaults: params.yaml's extract / store keys, else ExtractConfig) ----
_WHAT, _LAYOUT, _RAY, _RUN = "What to extract", "Store layout (fixed when a store is created)", "Workers and Ray", "Run"
TeacherOpt = Annotated[Optional[list[str]], typer.Option("--teacher", "--teachers", "-t", rich_help_panel=_WHAT, help="Teacher name from the registry; repeat or comma-separate for several (--teachers a,b as `pipeline distill` takes them). Default: extract.teachers.")]
RootOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_WHAT, help="Store root: holds manifest.parquet; stores go to <root>/<teacher>.zarr. A folder or an fsspec URL (s3://bucket/prefix; AWS_ENDPOINT_URL etc. from the environment). Default: store.root.")]
CheckpointOpt = Annotated[Optional[list[str]], typer.Option(rich_help_panel=_WHAT, help="Local weights file: PATH (one teacher) or TEACHER=PATH, repeatable. Default: extract.checkpoints.")]
DeviceOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_WHAT, help="Torch device for the teacher forward pass (cpu, cuda, cuda:0); checked before any store is created.")]
BatchOpt = Annotated[Optional[list[str]], typer.Option(rich_help_panel=_WHAT, help="Views per teacher forward pass: N (every teacher) or TEACHER=N (repeatable; a teacher not named gets the default). Out of device memory halves it, down to 1, and redoes the shard whole (recorded in the store's batch_backoffs and printed). Default: extract.batch_size (one size, or one per teacher).")]
FidelityOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_WHAT, help="After extraction, measure the storage fidelity per normalization variant on this many train images (0: skip; `pipeline store fidelity`).")]
ShardOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_LAYOUT, help="Images per shard (the unit of work and of resume); an existing store's is the default.")]
GridOpt = Annotated[Optional[list[str]], typer.Option(rich_help_panel=_LAYOUT, help="Patch grid to store, HxW (every teacher) or TEACHER=HxW (repeatable), no larger than the teacher's (adaptive average pooling). Default: extract.storage_grids, an existing store's grid, else the teacher's.")]
KeepbitsOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_LAYOUT, help="Mantissa bits kept by BitRound (7 = bf16 precision), or 'none' for lossless. An existing store's codec is the default.")]
FoldOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_LAYOUT, help="Fold the per-shard statistics into the store's totals every this many complete shards (bounds their disk use).")]
WorkersOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_RAY, help="Ray actors, each holding one teacher copy.")]
CpusOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_RAY, help="CPUs Ray reserves per actor; the worker keeps that many host threads busy (decode with --decode-ahead, compression). 8 per GPU actor for the paper teachers: docs/STAGE_ONE.md.")]
GpusOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_RAY, help="GPUs Ray reserves per actor. Default: 1 when --device is cuda*, else 0.")]
AddressOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RAY, help="Existing Ray cluster ('auto' or host:port); default starts a local Ray.")]
RayTimeoutOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_RAY, help="Seconds the cluster at --ray-address has to answer before the command stops with one line naming the address.")]
NoRayOpt = Annotated[bool, typer.Option("--no-ray", rich_help_panel=_RAY, help="Run the shard worker in this process without Ray (same code path).")]
AheadOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_RAY, help="Images each worker decodes and renders ahead on its CPU threads, overlapping the teacher forward (useful on GPU; 0: inline).")]
ProgressOpt = Annotated[Optional[bool], typer.Option("--progress/--no-progress", rich_help_panel=_RUN, help="Show a progress bar.")]
ReceiptOpt = Annotated[Optional[Path], typer.Option(rich_help_panel=_RUN, help="Write a JSON receipt of the finished store here (one teacher only): manifest hash, spec, complete shards, statistics hashes. DVC stages depend on it instead of the store.")]
WaitOpt = Annotated[bool, typer.Option("--wait", rich_help_panel=_RUN, help="If another run is writing a store (it holds the store's lease), wait for it instead of failing at once.")]
WaitTimeoutOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_RUN, help="With --wait: give up after this many seconds (default: wait as long as it takes).")]
ResolutionOpt = Annotated[Optional[list[str]], typer.Option("--resolution", rich_help_panel=_WHAT, help="Also extract a teacher at further input sides, each into its own store <teacher>@<side>.zarr (own statistics and normalizers; docs/RECIPE.md): SIDE[,SIDE] (every teacher) or TEACHER=SIDE[,SIDE], repeatable; with --receipt, each store's receipt goes beside it as extract_<teacher>@<side>.json. `--teacher sam_h@512` extracts one such store alone. Default: extract.resolutions.")]
RedoOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RUN, help="Complete shards to extract again, e.g. 5,7 or 3-6 (damaged ones, as `pipeline store verify` names them): their complete flags and statistics are cleared first (one teacher only).")]
EXTRACT = Route(sections=("extract",), keys={"teacher": "extract.teachers", "root": "store.root",
                                             "checkpoint": "extract.checkpoints", "storage_grid": "extract.storage_grids",
                                             "resolution": Derived("extract.resolutions", lambda p: [
                                                 f"{t}={','.join(map(str, sides))}"
                                                 for t, sides in p.extract.resolutions.items()])},
                config="stages.extract.config:ExtractConfig", own=("gpus_per_worker",), required=("teacher", "root"))


def extract_cmd(
    ctx: typer.Context,
    teacher: TeacherOpt = None, root: RootOpt = None, checkpoint: CheckpointOpt = None, device: DeviceOpt = None,
    batch_size: BatchOpt = None, fidelity_images: FidelityOpt = None,
    shard_size: ShardOpt = None, storage_grid: GridOpt = None, keepbits: KeepbitsOpt = None,
    stats_fold_every: FoldOpt = None,
    workers: WorkersOpt = None, cpus_per_worker: CpusOpt = None, gpus_per_worker: GpusOpt = None,
    ray_address: AddressOpt = None, ray_timeout: RayTimeoutOpt = None, no_ray: NoRayOpt = False,
    decode_ahead: AheadOpt = None,
    progress: ProgressOpt = None, receipt: ReceiptOpt = None, wait: WaitOpt = False,
    wait_timeout: WaitTimeoutOpt = None, redo_shards: RedoOpt = None, resolution: ResolutionOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Run teachers over the manifest into per-teacher Zarr stores; complete shards are skipped.

    Flags not given take their values from params.yaml when there is one (printed on stderr)."""
    from stages.extract.driver import with_store_defaults
    from stages.devices import check_device
    from stages.extract.preflight import preflight
    from stages.extract.receipt import receipt_path
    from stages.extract.stage import extract_teachers
    from stages.orchestrate.ray_address import check_reachable
    from store_schema.lease import LeaseOptions
    from store_schema.location import as_location

    root = as_location(root)
    configs = teacher_configs(ctx.params, resolution_typed=given_on_command_line(ctx, "resolution"))
    teachers, base = list(configs), next(iter(configs.values()))
    if base.workers > 0 and base.ray_address is not None:  # a mistyped cluster address: one line, nothing made
        check_reachable(base.ray_address, timeout_s=base.ray_timeout)
    # an existing store's shard size / grid / codec / fold cadence are the defaults; a typed flag must agree
    explicit = {f for f, name in (("shard_size", "shard_size"), ("storage_grid", "storage_grid"),
                                  ("codec", "keepbits"), ("stats_fold_every", "stats_fold_every"))
                if given_on_command_line(ctx, name)}
    for t in teachers:
        configs[t], notes = with_store_defaults(root, t, configs[t], explicit=explicit)
        if notes:
            typer.echo(f"{t}: continuing the existing store with its own {'; '.join(notes)}", err=True)
    local = base.workers == 0 or base.ray_address is None  # the teacher runs on this machine
    if local:
        check_device(device, gpus_per_actor=None if base.workers == 0 else base.gpus_per_worker)
    for t in teachers:
        preflight(root, [t], storage_grid=configs[t].storage_grid, checkpoint=configs[t].checkpoint, local_weights=local)
    receipts = None if receipt is None else {t: receipt if i == 0 else receipt_path(receipt.parent, t)
                                             for i, t in enumerate(configs)}
    extract_teachers(root, configs, receipt=receipts, lease=LeaseOptions(wait=wait, timeout_s=wait_timeout),
                     note=lambda line: typer.echo(line, err=True), on_teacher=_echo_outcome, resume=command_line())
    _echo_bad_images(root)


def teacher_configs(o: dict, *, resolution_typed: bool = False) -> dict[str, "ExtractConfig"]:
    """{store key: ExtractConfig} of `pipeline extract`'s resolved options `o` (before an existing store's own
    settings are applied): each teacher's, then its stores at --resolution's further sides (`resolution_typed`:
    that option was given on the command line, not taken from params.yaml)."""
    from dataclasses import replace

    from stages.extract.config import ExtractConfig
    from stages.extract.redo import parse_shards
    from store_schema.codecs import CodecSpec

    teachers = parse_teachers(o["teacher"])
    grids = per_teacher_values(o["storage_grid"], teachers, parse_grid, "--storage-grid")
    checkpoints = per_teacher_values(o["checkpoint"], teachers, Path, "--checkpoint", one_teacher=True)
    batches = per_teacher_values(o["batch_size"], teachers, _batch_size, "--batch-size")
    for flag, name in (("--receipt", "receipt"), ("--redo-shards", "redo_shards")):
        if o[name] is not None and len(teachers) > 1:
            raise ValueError(f"{flag} applies to one teacher (a receipt and shard numbers are per store); "
                             "extract the others in a separate call")
    base = ExtractConfig(
        shard_size=o["shard_size"], codec=CodecSpec(keepbits=parse_keepbits(o["keepbits"])),
        device=o["device"], workers=0 if o["no_ray"] else o["workers"], cpus_per_worker=o["cpus_per_worker"],
        gpus_per_worker=resolve_gpus_per_worker(o["gpus_per_worker"], o["device"]), ray_address=o["ray_address"],
        ray_timeout=o["ray_timeout"], progress=o["progress"], decode_ahead=o["decode_ahead"],
        stats_fold_every=o["stats_fold_every"],
        fidelity_images=o["fidelity_images"],
        redo_shards=tuple(parse_shards(o["redo_shards"])) if o["redo_shards"] is not None else ())
    configs = {t: replace(base, storage_grid=grids[t], checkpoint=checkpoints[t],
                          batch_size=base.batch_size if batches[t] is None else batches[t]) for t in teachers}
    return {**configs, **further_resolutions(o["resolution"], configs, typed=resolution_typed)}


def _batch_size(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"--batch-size takes N or TEACHER=N (N a positive integer), got {text!r}")
    return int(text)


def further_resolutions(values: list[str] | None, configs: dict[str, "ExtractConfig"], *,
                        typed: bool = False) -> dict[str, "ExtractConfig"]:
    """{"<teacher>@<side>": its ExtractConfig} for --resolution (TEACHER=SIDE[,SIDE] or SIDE[,SIDE]): the
    teacher's config with its own grid at that side (a --storage-grid names the teacher's own store). `typed`
    (given on the command line): a TEACHER= entry must name a teacher being extracted (params.yaml's entries
    of other teachers are ignored)."""
    from dataclasses import replace

    from stages.teachers.registry import get_teacher_spec
    from store_schema.layout import store_key

    def sides_of(text: str) -> list[int]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items or not all(x.isdigit() and int(x) > 0 for x in items):
            raise ValueError(f"--resolution {text!r}: give input sides in pixels, SIDE[,SIDE] or TEACHER=SIDE[,SIDE] "
                             "(e.g. --resolution tiny_sam=256 or --resolution 224,448)")
        return [int(x) for x in items]

    stray = [v.partition("=")[0] for v in values or [] if "=" in v and v.partition("=")[0] not in configs]
    if typed and stray:
        raise ValueError(f"--resolution names {stray}, which this call does not extract ({list(configs)}); give "
                         "--teacher for them too")
    sides = per_teacher_values(values, list(configs), sides_of, "--resolution")
    out = {}
    for teacher, config in configs.items():
        if sides[teacher] and "@" in teacher:
            raise ValueError(f"--resolution applies to a teacher's own store; {teacher!r} already is one at another "
                             f"side (extract e.g. --teacher {teacher.partition('@')[0]} --resolution SIDE,SIDE)")
        for side in sides[teacher] or []:
            key = store_key(teacher, side)
            get_teacher_spec(key)  # the side fits the teacher (patch multiple; not its own side)
            if key not in configs:
                out[key] = replace(config, storage_grid=None, redo_shards=())
    return out


def resolve_configs(args: list[str]) -> dict[str, "ExtractConfig"]:
    """{teacher: ExtractConfig} that `pipeline extract ARGS` would run with (nothing is run or checked)."""
    app = typer.Typer()
    register(app)
    ctx = parse_only(app, "extract", args)
    return teacher_configs(ctx.params, resolution_typed=given_on_command_line(ctx, "resolution"))


def _echo_bad_images(root) -> None:
    """The manifest's bad images per reason, with the first few files (they are in no store)."""
    from stages.corpus.build_manifest import bad_summary
    from store_schema.layout import manifest_path
    from store_schema.manifest import read_manifest

    lines = bad_summary(read_manifest(manifest_path(root)))
    if lines:
        typer.echo("  bad images (recorded in the manifest, not extracted), per reason:")
        for line in lines:
            typer.echo(f"  {line}")


def per_teacher_values(values: list[str] | None, teachers: list[str], parse: Callable[[str], T], flag: str, *,
                       one_teacher: bool = False) -> dict[str, T | None]:
    """{teacher: parsed value} from a per-teacher option: TEACHER=VALUE entries (params.yaml's mappings come
    as these; entries of teachers not selected are ignored) and at most one plain VALUE for every teacher
    (for only one teacher when `one_teacher`); a teacher without either gets None."""
    plain = [v for v in values or [] if "=" not in v]
    if len(plain) > 1 or (plain and one_teacher and len(teachers) > 1):
        raise ValueError(f"{flag} {plain[0]} applies to one teacher; give TEACHER=VALUE for each of {teachers}, "
                         "or extract the others in a separate call")
    out: dict[str, T | None] = {t: parse(plain[0]) if plain else None for t in teachers}
    for name, _, value in (v.partition("=") for v in values or [] if "=" in v):
        if name in out:
            out[name] = parse(value)
    return out


def register(app: typer.Typer) -> None:
    """Add `extract` to the pipeline CLI."""
    app.command("extract", cls=routed(EXTRACT))(extract_cmd)
