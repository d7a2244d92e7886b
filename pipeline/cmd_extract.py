"""`pipeline extract`: stage one of AM-RADIO-style distillation (arXiv 2312.06709), teachers into stores.

Thin command over `pipeline.extract.run_extract`; views come from the manifest (it holds the view spec).
Only typer and the standard library are imported at module level: stage code (torch, zarr) and Ray are
imported inside the command, so `pipeline --help` stays fast and `--no-ray` runs where Ray is absent.
Every user mistake found before or during extraction (a bad option, a store that does not match, missing
weights, a device this machine lacks) ends in one error line and exit status 2, never a traceback, and
the checks that can be made up front run before any store is created.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional, TypeVar

import typer

from pipeline.errors import fail

if TYPE_CHECKING:
    from pipeline.extract import ExtractConfig, ExtractReport
    from store_schema.lease import LeaseOptions

DEVICE_TYPES = ("cpu", "cuda")
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


def check_device(device: str, *, gpus_per_actor: float | None = None) -> None:
    """Refuse a torch device this machine cannot run, before any store is created.

    gpus_per_actor: set when the device is used inside Ray actors; Ray shows each actor only its own GPUs
    (CUDA_VISIBLE_DEVICES), so an explicit index must be below the GPUs one actor reserves."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"unknown torch device {device!r}; valid devices: cpu, cuda, cuda:N") from e
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"unsupported device {device!r}; valid devices: cpu, cuda, cuda:N")
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"CUDA requested but torch.cuda.is_available() is False on this machine "
                         f"(--device {device}); use --device cpu")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    if gpus_per_actor is not None and dev.index is not None and dev.index >= max(1, int(gpus_per_actor)):
        raise ValueError(f"--device {device}: a Ray actor sees only the {gpus_per_actor:g} GPU(s) it reserves, "
                         "numbered from 0; use --device cuda")


def check_ray_resources(resources: dict[str, float], *, workers: int, cpus_per_worker: float,
                        gpus_per_worker: float, device: str) -> None:
    """Refuse a Ray run the cluster cannot place (before any store is created)."""
    need_cpu, need_gpu = workers * cpus_per_worker, workers * gpus_per_worker
    have_cpu, have_gpu = resources.get("CPU", 0), resources.get("GPU", 0)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise ValueError(f"{workers} workers need {need_cpu:g} CPUs and {need_gpu:g} GPUs; the Ray cluster has "
                         f"{have_cpu:g} CPUs and {have_gpu:g} GPUs")
    if device.startswith("cuda") and gpus_per_worker == 0:
        raise ValueError(f"--device {device} with --gpus-per-worker 0: Ray would give the actors no GPU")


def preflight(root: Path, teachers: list[str], *, storage_grid: tuple[int, int] | None,
              checkpoint: Path | None, local_weights: bool) -> None:
    """Checks that need stage code, run before any store exists: known teachers, a manifest, a storage grid
    every teacher can pool to, and (when the workers run on this machine) weights that are here."""
    from stages.extract.pooling import check_storage_grid
    from stages.teachers.registry import check_checkpoint, get_teacher_spec
    from stages.teachers.weights import resolve_weights
    from store_schema.layout import manifest_path

    specs = [get_teacher_spec(name) for name in teachers]  # unknown names: ValueError listing the valid ones
    from store_schema.location import is_file

    if not is_file(manifest_path(root)):
        raise ValueError(f"no manifest at {manifest_path(root)}; build one with `pipeline corpus` first")
    for spec in specs:
        if storage_grid is not None:
            try:
                check_storage_grid(spec.grid, storage_grid)
            except ValueError as e:
                raise ValueError(f"--storage-grid for teacher {spec.name!r}: {e}") from e
        if local_weights:
            resolve_weights(spec, checkpoint, hash_file=False)  # MissingWeightsError says how to provide them
            if checkpoint is not None:  # a file that is not this teacher's weights: refused before any store
                check_checkpoint(spec, checkpoint)


def _echo_report(report: ExtractReport) -> None:
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


def extract_cmd(
    ctx: typer.Context,
    teacher: Annotated[Optional[list[str]], typer.Option("--teacher", "--teachers", "-t", help="Teacher name from the registry; repeat or comma-separate for several (--teachers a,b as `pipeline distill` takes them). Default: extract.teachers of ./params.yaml.")] = None,
    root: Annotated[Optional[str], typer.Option(help="Store root: holds manifest.parquet; stores go to <root>/<teacher>.zarr. A folder or an fsspec URL (s3://bucket/prefix; AWS_ENDPOINT_URL etc. from the environment). Default: store.root of ./params.yaml.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Local weights file for the teacher (one teacher only). Default: extract.checkpoints of ./params.yaml.")] = None,
    batch_size: Annotated[int, typer.Option(help="Views per teacher forward pass (params.yaml's extract.batch_size may give one per teacher). Out of device memory halves it, down to 1, and redoes the shard whole (recorded in the store's batch_backoffs and printed).")] = 32,
    shard_size: Annotated[int, typer.Option(help="Images per shard (the unit of work and of resume); fixed when the store is created (an existing store's is the default).")] = 64,
    storage_grid: Annotated[Optional[str], typer.Option(help="Patch grid to store, HxW, no larger than the teacher's (adaptive average pooling). Default: an existing store's grid, else the teacher's.")] = None,
    keepbits: Annotated[str, typer.Option(help="Mantissa bits kept by BitRound (7 = bf16 precision), or 'none' for lossless. An existing store's codec is the default.")] = "7",
    workers: Annotated[int, typer.Option(help="Ray actors, each holding one teacher copy.")] = 1,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs Ray reserves per actor; the worker keeps that many host threads busy (decode with --decode-ahead, compression). 8 per GPU actor for the paper teachers: docs/STAGE_ONE.md.")] = 1.0,
    gpus_per_worker: Annotated[Optional[float], typer.Option(help="GPUs Ray reserves per actor. Default: 1 when --device is cuda*, else 0.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Existing Ray cluster ('auto' or host:port); default starts a local Ray.")] = None,
    device: Annotated[str, typer.Option(help="Torch device for the teacher forward pass (cpu, cuda, cuda:0); checked before any store is created.")] = "cpu",
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Run the shard worker in this process without Ray (same code path).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    decode_ahead: Annotated[int, typer.Option(help="Images each worker decodes and renders ahead on its CPU threads, overlapping the teacher forward (useful on GPU; 0: inline).")] = 0,
    stats_fold_every: Annotated[int, typer.Option(help="Fold the per-shard statistics into the store's totals every this many complete shards (bounds their disk use); fixed when the store is created.")] = 16,
    receipt: Annotated[Optional[Path], typer.Option(help="Write a JSON receipt of the finished store here (one teacher only): manifest hash, spec, complete shards, statistics hashes. DVC stages depend on it instead of the store.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="If another run is writing a store (it holds the store's lease), wait for it instead of failing at once.")] = False,
    wait_timeout: Annotated[Optional[float], typer.Option(help="With --wait: give up after this many seconds (default: wait as long as it takes).")] = None,
    redo_shards: Annotated[Optional[str], typer.Option(help="Complete shards to extract again, e.g. 5,7 or 3-6 (damaged ones, as `pipeline store verify` names them): their complete flags and statistics are cleared first (one teacher only).")] = None,
) -> None:
    """Run teachers over the manifest into per-teacher Zarr stores; complete shards are skipped.

    Flags not given take their values from ./params.yaml when there is one (printed on stderr)."""
    from dataclasses import replace

    from pipeline.extract import ExtractConfig, ExtractionStopped, with_store_defaults
    from pipeline.flag_defaults import EXTRACT, fill_from_params, given_on_command_line
    from stages.teachers.errors import MissingWeightsError
    from store_schema.codecs import CodecSpec
    from store_schema.errors import StoreError
    from store_schema.lease import LeaseOptions

    from store_schema.location import as_location

    v = fill_from_params(ctx, locals(), EXTRACT, required=("teacher", "root"))
    root = as_location(v["root"])
    try:
        teachers = parse_teachers(v["teacher"])
        # params.yaml gives storage grids and checkpoints per teacher; the flags give one for all
        grids = _per_teacher(v["storage_grid"], teachers, parse_grid)
        checkpoints = _per_teacher(v["checkpoint"], teachers, Path)
        if isinstance(v["checkpoint"], Path) and len(teachers) > 1:
            raise ValueError("--checkpoint applies to one teacher; extract the others in a separate call")
        if receipt is not None and len(teachers) > 1:
            raise ValueError("--receipt applies to one teacher; extract the others in a separate call")
        if redo_shards is not None and len(teachers) > 1:
            raise ValueError("--redo-shards applies to one teacher (shard numbers are per store); "
                             "redo the others in a separate call")
        from stages.extract.redo import parse_shards

        redo = tuple(parse_shards(redo_shards)) if redo_shards is not None else ()
        device = v["device"]
        gpus = resolve_gpus_per_worker(gpus_per_worker, device)
        lease_options = LeaseOptions(wait=wait, timeout_s=wait_timeout)
        base = ExtractConfig(shard_size=v["shard_size"],
                             codec=CodecSpec(keepbits=parse_keepbits(v["keepbits"])), device=device,
                             workers=0 if no_ray else v["workers"], cpus_per_worker=v["cpus_per_worker"],
                             gpus_per_worker=gpus, ray_address=v["ray_address"], progress=progress,
                             decode_ahead=v["decode_ahead"], stats_fold_every=stats_fold_every, redo_shards=redo)
        from pipeline.params import DEFAULT_BATCH_SIZE

        batches = _per_teacher(v["batch_size"], teachers, int)  # params.yaml may give one size per teacher
        configs = {t: replace(base, storage_grid=grids[t], checkpoint=checkpoints[t],
                              batch_size=batches[t] or DEFAULT_BATCH_SIZE) for t in teachers}
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
            check_device(device, gpus_per_actor=None if base.workers == 0 else gpus)
        for t in teachers:
            preflight(root, [t], storage_grid=grids[t], checkpoint=checkpoints[t], local_weights=local)
    except (ValueError, MissingWeightsError) as e:
        raise fail(str(e)) from e
    try:
        _run(root, configs, receipt=receipt, lease_options=lease_options)
    except (ValueError, StoreError, MissingWeightsError, ExtractionStopped) as e:
        raise fail(str(e)) from e
    _echo_bad_images(root)


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


def _per_teacher(value: object, teachers: list[str], parse: Callable[[str], T]) -> dict[str, T | None]:
    """One flag value for every teacher, or params.yaml's {teacher: value} mapping (absent -> None)."""
    if isinstance(value, dict):
        return {t: parse(str(value[t])) if t in value else None for t in teachers}
    return {t: None if value is None else parse(str(value)) for t in teachers}


def _complete(store_path) -> bool:
    """True when a store exists there with every shard complete."""
    from store_schema.errors import StoreError
    from store_schema.teacher_store import open_teacher_store

    try:
        return len(open_teacher_store(store_path).pending_shards()) == 0
    except StoreError:
        return False


def _run(root: Path, configs: dict[str, ExtractConfig], *, receipt: Path | None,
         lease_options: "LeaseOptions") -> None:
    """Take every store's lease (a second run on a store fails within seconds, naming the holder), start
    Ray if needed (never stopping one someone else started), check its resources, extract."""
    with ExitStack() as held:
        leases = _take_leases(root, list(configs), lease_options, held)
        _run_leased(root, configs, receipt=receipt, leases=leases)


def _take_leases(root: Path, teachers: list[str], options: "LeaseOptions", stack: ExitStack) -> dict:
    """{teacher: Lease} taken in sorted order (two multi-teacher runs cannot deadlock waiting on each other)."""
    from store_schema.layout import teacher_store_path
    from store_schema.lease import Lease

    leases = {}
    for name in sorted(teachers):
        lease = Lease(teacher_store_path(root, name), purpose=f"extract {name}", options=options)
        if options.wait:
            typer.echo(f"taking the lease on {lease.target} (waiting while another run holds it)", err=True)
        leases[name] = stack.enter_context(lease)
        if lease.took_over:
            typer.echo(f"took over a stale lease on {lease.target}: its holder is gone "
                       f"({lease.took_over['reason']})", err=True)
    return leases


def _run_leased(root: Path, configs: dict[str, ExtractConfig], *, receipt: Path | None, leases: dict) -> None:
    from pipeline.extract import run_extract
    from stages.extract.receipt import write_receipt
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    config = next(iter(configs.values()))  # Ray settings are the same for every teacher
    # Every store already complete (a re-run): nothing to schedule, so no Ray start-up (seconds) either;
    # run_extract still checks each store against the config.
    use_ray = config.workers > 0 and (bool(config.redo_shards)
                                      or not all(_complete(teacher_store_path(root, t)) for t in configs))
    from stages.orchestrate.ray_session import ray_session

    with ray_session(config.ray_address, needed=use_ray) as resources:
        if resources is not None:
            check_ray_resources(resources, workers=config.workers, cpus_per_worker=config.cpus_per_worker,
                                gpus_per_worker=config.gpus_per_worker, device=config.device)
        for name, teacher_config in configs.items():
            _echo_report(run_extract(root, name, teacher_config, lease=leases[name]))
            if receipt is not None:
                store = open_teacher_store(teacher_store_path(root, name))
                typer.echo(f"  receipt: {write_receipt(store, receipt)}")


def register(app: typer.Typer) -> None:
    """Add `extract` to the pipeline CLI."""
    app.command("extract")(extract_cmd)
