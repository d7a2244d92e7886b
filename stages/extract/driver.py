"""Stage one's driver: run one teacher over the manifest into `<root>/<teacher>.zarr`.

AM-RADIO (arXiv 2312.06709) distils from frozen teachers; running them once into a store lets every
PHI-S (arXiv 2410.01680) normalization variant train from the same targets. The shard runner
(stages/orchestrate/shards.py) runs the in-process `ShardWorker` on Ray (one actor per worker, the teacher
built once per actor, one shard per task) or, when `workers == 0`, in this process (machines without Ray,
such as the GPU machine); this module is the extraction's side of it: the store, the completion callback,
the report.

Completion protocol: a worker writes a whole shard and returns its partial statistics (per split); the
driver then writes those statistics and marks the shard complete, in that order, and the store folds the
complete prefix of shards into bounded totals (`store_schema.stats_ledger`). A run killed at any point
leaves every shard either complete (data + stats) or not marked, and a re-run rewrites exactly the
unmarked ones; the statistics are a fixed function of the complete shards, so a resumed run's are
bit-identical to an uninterrupted run's.

Overlap: each worker runs up to SHARDS_IN_FLIGHT_PER_WORKER shards at once (a threaded Ray actor, or two
driver threads without Ray): one shard's compression and write overlap the next shard's forwards, which
take turns on the device. A worker uses `cpus_per_worker` host threads (decode and codec pools).

Retries: actors are created with `max_restarts=2, max_task_retries=2`, so a shard whose actor process
dies (OOM kill, segfault, lost node) is retried on the restarted actor; whole-shard writes are idempotent,
so a retried shard cannot leave mixed data. Python exceptions inside a shard are not retried (they are
bugs or bad configuration, not transient): the run lets in-flight shards finish, then raises. Losing every
Ray worker raises ExtractionStopped (complete shards are kept; a re-run resumes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from stages.extract.config import ExtractConfig
from stages.extract.inspect import storage_footprint
from stages.extract.preflight import check_ray_resources
from stages.extract.pooling import check_storage_grid
from stages.extract.redo import reopen_for_redo
from stages.extract.worker import MaskedView, ShardResult, ShardWorker
from stages.orchestrate.ray_session import ray_session
from stages.orchestrate.shards import RayWorkers, ShardFailed, ShardRunStopped, in_process, on_ray
from stages.teachers.registry import get_teacher_spec, weights_identity
from store_schema.errors import StoreError
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.location import absolute, as_location
from store_schema.lease import Lease, LeaseOptions
from store_schema.manifest import read_manifest
from store_schema.teacher_store import TeacherStore, create_teacher_store

ACTOR_MAX_RESTARTS = 2
ACTOR_MAX_TASK_RETRIES = 2
SHARDS_IN_FLIGHT_PER_WORKER = 2  # one shard in its forwards while the previous one is compressed / written


class ExtractionStopped(ShardRunStopped):
    """The run cannot go on (every Ray worker was lost); complete shards are kept and a re-run resumes."""


@dataclass
class ExtractReport:
    """What one `run_extract` did; `computed_shards` lists the shards this run wrote."""

    teacher: str
    store_path: Path
    computed_shards: list[int]
    skipped_shards: list[int]  # complete before this run started
    num_images: int  # images in the computed shards
    num_views: int  # valid views written
    num_bad: int  # images marked bad in the manifest
    masked: list[MaskedView]  # views masked at extraction time
    seconds: float
    bytes_on_disk: int
    bits_per_value: float
    shard_workers: dict[int, str] = field(default_factory=dict)  # shard -> host:pid that extracted it
    shard_nodes: dict[int, str] = field(default_factory=dict)  # shard -> Ray node id (Ray runs only)
    startup_seconds: float = 0.0  # store creation + workers built (teachers loaded), before the first shard
    phase_seconds: dict[str, float] = field(default_factory=dict)  # worker time per phase, summed over shards
    redone: list[int] = field(default_factory=list)  # shards reopened by --redo-shards
    unfolded: int = 0  # folded shards whose partials were recomputed from their stored values for the redo
    backoffs: list[tuple[int, int, int]] = field(default_factory=list)  # (shard, from, to): out of memory, redone

    @property
    def images_per_s(self) -> float:
        """End to end, startup included."""
        return self.num_images / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """Once the workers are built: images over (seconds - startup_seconds)."""
        busy = self.seconds - self.startup_seconds
        return self.num_images / busy if busy > 0 else 0.0

    def backoff_lines(self) -> list[str]:
        """One line per out-of-memory back-off (also recorded in the store's `batch_backoffs`)."""
        return [f"  {self.teacher}: out of device memory at batch {frm} in shard {k}: batch halved to {to}, "
                f"shard {k} redone whole" for k, frm, to in self.backoffs]

    def summary_line(self) -> str:
        """The run in one line, then one line per out-of-memory back-off (if any)."""
        return "\n".join([
            f"extract {self.teacher}: {self.num_images} images, {self.num_views} views, "
            f"{len(self.masked)} masked, {self.num_bad} bad, {len(self.computed_shards)} shards computed, "
            f"{len(self.skipped_shards)} skipped, {self.seconds:.1f} s, {self.images_per_s:.2f} images/s, "
            f"{self.bytes_on_disk / 2**20:.2f} MiB on disk, {self.bits_per_value:.2f} bits/value",
            *self.backoff_lines()])


# ExtractConfig fields fixed when a store is created: the flag, the store attribute it must match.
STORE_FIXED = {"shard_size": "--shard-size", "storage_grid": "--storage-grid", "codec": "--keepbits",
               "stats_fold_every": "--stats-fold-every"}


def with_store_defaults(root: Path, teacher: str, config: ExtractConfig, *, explicit: set[str]) -> tuple[ExtractConfig, list[str]]:
    """An existing store's shard size, storage grid, codec and fold cadence replace the config's values for
    the fields not in `explicit` (flags the user typed); an explicit value that differs from the store's is a
    ValueError naming the flag, both values and what to do. Returns (config, notes on the values taken).
    Without a store at `<root>/<teacher>.zarr` the config is returned as is."""
    from dataclasses import replace

    from store_schema.teacher_store import open_teacher_store

    try:
        store = open_teacher_store(teacher_store_path(root, teacher))
    except StoreError:  # none there (or one the extraction itself will refuse, with its own message)
        return config, []
    found = {"shard_size": store.shard_size, "storage_grid": tuple(store.grid), "codec": store.codec,
             "stats_fold_every": store.stats_fold_every}
    mine = dict(shard_size=config.shard_size, codec=config.codec, stats_fold_every=config.stats_fold_every,
                storage_grid=tuple(config.storage_grid) if config.storage_grid is not None else get_teacher_spec(teacher).grid)
    notes, taken = [], {}
    for field_name, flag in STORE_FIXED.items():
        if mine[field_name] == found[field_name]:
            continue
        shown = (f"keepbits {found[field_name].keepbits}, {found[field_name].compressor}:{found[field_name].clevel}"
                 if field_name == "codec" else found[field_name])
        if field_name in explicit:
            given = mine[field_name].keepbits if field_name == "codec" else mine[field_name]
            raise ValueError(f"{flag} {given} conflicts with the existing store {store.path}, created with "
                             f"{field_name.replace('_', ' ')} {shown}: leave {flag} out to continue that store, or "
                             "extract into another --root")
        taken[field_name] = found[field_name]
        notes.append(f"{field_name.replace('_', ' ')} {shown}")
    return replace(config, **taken), notes


def repair_store(root: Path, teacher: str, shards: list[int], *, device: str = "cpu", batch_size: int = 32,
                 lease: LeaseOptions | None = None) -> ExtractReport:
    """Redo damaged `shards` of `<root>/<teacher>.zarr` in this process (`store verify --repair`): the store's
    own shard size, grid, codec and fold cadence, and its recorded weights (a local checkpoint is read from
    the path the store records, and must still hash the same)."""
    from dataclasses import replace

    from store_schema.teacher_store import open_teacher_store

    ident = open_teacher_store(teacher_store_path(root, teacher)).weights_identity
    checkpoint = Path(ident["id"]) if ident.get("source") == "local" else None
    config = ExtractConfig(workers=0, progress=False, device=device, batch_size=batch_size, checkpoint=checkpoint)
    config, _ = with_store_defaults(root, teacher, config, explicit=set())
    return run_extract(root, teacher, replace(config, redo_shards=tuple(shards)), lease=lease)


def finalize_shard(store: TeacherStore, result: ShardResult) -> None:
    """Driver side of the completion protocol: the shard's statistics (every kind and split) first, then
    its complete flag (which may fold the complete prefix of shards into the store's totals)."""
    h, w = store.grid
    if store.frames_NV4 is None:
        assert result.patches.count == result.num_views * h * w, (result.shard, result.patches.count)
    else:  # a padded teacher's padding tokens are not counted
        assert result.patches.count <= result.num_views * h * w, (result.shard, result.patches.count)
    if store.summary_dim > 0:
        assert result.summary is not None and result.summary.count == result.num_views
    for kind in store.kinds:
        for split, m in result.stats[kind].items():
            store.write_shard_stats(result.shard, kind, m, split=split)
    store.mark_complete(result.shard)


def run_extract(root: Path, teacher: str, config: ExtractConfig, *,
                lease: Lease | LeaseOptions | None = None) -> ExtractReport:
    """Extract `teacher` over `<root>/manifest.parquet` into `<root>/<teacher>.zarr`, skipping complete shards.

    The store is written under a lease (store_schema/lease.py): pass a Lease this caller already holds on
    the store, or LeaseOptions (None: defaults, fail at once) to take one here. A second run on the same
    store then raises LeaseHeldError naming the holder (or waits, with LeaseOptions(wait=True))."""
    root = as_location(absolute(root))  # Ray actors may run in another working directory
    if isinstance(lease, Lease):
        return _extract(root, teacher, config, lease)
    with Lease(teacher_store_path(root, teacher), purpose=f"extract {teacher}", options=lease) as held:
        return _extract(root, teacher, config, held)


def _extract(root: Path, teacher: str, config: ExtractConfig, lease: Lease) -> ExtractReport:
    t0 = time.perf_counter()
    manifest = read_manifest(manifest_path(root))
    spec = get_teacher_spec(teacher)
    grid = tuple(config.storage_grid) if config.storage_grid is not None else spec.grid
    check_storage_grid(spec.grid, grid)
    store = create_teacher_store(
        teacher_store_path(root, teacher), spec=spec,
        weights_identity=weights_identity(spec, config.checkpoint), manifest=manifest,
        shard_size=config.shard_size, storage_grid=grid, codec=config.codec,
        stats_fold_every=config.stats_fold_every,
    )
    unfolded = reopen_for_redo(store, list(config.redo_shards)) if config.redo_shards else 0
    pending = [int(k) for k in store.pending_shards()]
    skipped = [int(k) for k in store.completed_shards()]
    report = ExtractReport(teacher, store.path, [], skipped, 0, 0, 0, [], 0.0, 0, 0.0,
                           redone=list(config.redo_shards), unfolded=unfolded)
    total = sum(store.shard_range(k)[1] - store.shard_range(k)[0] for k in pending)
    bar = tqdm(total=total, unit="img", desc=f"extract {teacher}", disable=not config.progress)

    def on_result(k: int, result: ShardResult, node: str) -> None:
        lease.check()  # never mark a shard complete in a store another run has taken over
        finalize_shard(store, result)
        report.computed_shards.append(result.shard)
        if len(report.computed_shards) % store.stats_fold_every == 0:
            store.fold_stats()  # the driver is the one writer: keeps partials bounded on object stores too
        report.shard_workers[result.shard] = result.worker
        if node:
            report.shard_nodes[k] = node
        for frm, to in result.backoffs:  # out of device memory: the shard was redone whole at `to`
            store.record_batch_backoff(result.shard, from_size=frm, to_size=to, worker=result.worker)
            report.backoffs.append((result.shard, frm, to))
        for phase, secs in result.seconds.items():
            report.phase_seconds[phase] = report.phase_seconds.get(phase, 0.0) + secs
        report.num_images += result.num_images
        report.num_views += result.num_views
        report.num_bad += result.num_bad_images
        report.masked.extend(result.masked)
        bar.update(result.num_images)
        bar.set_postfix(masked=len(report.masked), bad=report.num_bad)

    worker_kwargs = dict(store_path=store.path, manifest_path=manifest.path, checkpoint=config.checkpoint,
                         device=config.device, batch_size=config.batch_size, decode_ahead=config.decode_ahead,
                         cpu_threads=config.cpu_threads)
    try:
        if pending and config.workers == 0:
            worker = ShardWorker(spec, **worker_kwargs)
            report.startup_seconds = time.perf_counter() - t0
            in_process(worker, pending, on_result, in_flight=SHARDS_IN_FLIGHT_PER_WORKER)
        elif pending:
            report.startup_seconds = _run_on_ray(spec, worker_kwargs, pending, config, on_result) - t0
    finally:
        bar.close()
    if store.completed_shards().size:
        store.fold_stats()  # the end of a run: fold what is foldable now (a failed run's next run folds)
    report.seconds = time.perf_counter() - t0
    report.bytes_on_disk, report.bits_per_value = storage_footprint(store)
    return report


def _run_on_ray(spec, worker_kwargs: dict, pending: list[int], config: ExtractConfig, on_result) -> float:
    """The shards on `config.workers` Ray actors (the Ray of the caller's session, else one started here);
    returns when every actor had built its teacher (perf_counter)."""
    workers = RayWorkers(config.workers, num_cpus=config.cpus_per_worker, num_gpus=config.gpus_per_worker,
                         max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=ACTOR_MAX_TASK_RETRIES,
                         in_flight=SHARDS_IN_FLIGHT_PER_WORKER)
    with ray_session(config.ray_address, connect_timeout=config.ray_timeout) as resources:
        check_ray_resources(resources, workers=config.workers, cpus_per_worker=config.cpus_per_worker,
                            gpus_per_worker=config.gpus_per_worker, device=config.device)
        try:
            return on_ray(ShardWorker, (spec,), worker_kwargs, pending, workers, on_result,
                          resume_hint="Re-run `pipeline extract` (with --workers the remaining cluster can place) "
                                      "to resume")
        except ShardRunStopped as e:
            raise ExtractionStopped(str(e)) from None
        except ShardFailed as e:
            if isinstance(e.cause, StoreError):  # no space, lost lease, ...: the clear message, not a traceback
                raise e.cause from None
            raise
