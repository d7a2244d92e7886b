"""Stage one orchestration: run one teacher over the manifest into `<root>/<teacher>.zarr`.

AM-RADIO (arXiv 2312.06709) distils from frozen teachers; running them once into a store lets every
PHI-S (arXiv 2410.01680) normalization variant train from the same targets. Ray schedules the in-process
`ShardWorker` (one actor per worker, the teacher built once per actor, one shard per task); the same
worker runs without Ray when `workers == 0` (machines without Ray, such as the GPU machine).

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
bugs or bad configuration, not transient): the run lets in-flight shards finish, then raises.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from stages.extract.inspect import storage_footprint
from stages.extract.pooling import check_storage_grid
from stages.extract.redo import reopen_for_redo
from stages.extract.worker import MaskedView, ShardResult, ShardWorker
from stages.teachers.registry import get_teacher_spec, weights_identity
from store_schema.codecs import CodecSpec
from store_schema.errors import StoreError
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.location import as_location
from store_schema.lease import Lease, LeaseOptions
from store_schema.manifest import read_manifest
from store_schema.stats_ledger import DEFAULT_FOLD_EVERY
from store_schema.teacher_store import TeacherStore, create_teacher_store

ACTOR_MAX_RESTARTS = 2
ACTOR_MAX_TASK_RETRIES = 2
SHARDS_IN_FLIGHT_PER_WORKER = 2  # one shard in its forwards while the previous one is compressed / written
TASKS_PER_ACTOR = SHARDS_IN_FLIGHT_PER_WORKER  # so an actor never idles waiting for the driver
NODE_POLL_S = 1.0  # how often the driver checks for dead Ray nodes while it waits for results
STARTUP_GRACE_S = 20.0  # an actor not placed this long after a node died during start-up is given up


@dataclass(frozen=True)
class ExtractConfig:
    """How to extract one teacher (typed config at the CLI boundary)."""

    batch_size: int = 32
    shard_size: int = 64
    storage_grid: tuple[int, int] | None = None  # None: the teacher's own patch grid
    codec: CodecSpec = field(default_factory=CodecSpec)
    checkpoint: Path | None = None
    device: str = "cpu"
    workers: int = 1  # Ray actors; 0 runs the shard worker in this process without Ray
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    ray_address: str | None = None  # None: local Ray (reused when already initialised)
    progress: bool = True
    decode_ahead: int = 0  # images a worker decodes ahead on its decode threads (0: inline)
    stats_fold_every: int = DEFAULT_FOLD_EVERY  # complete shards per fold of the statistics (store attribute)
    redo_shards: tuple[int, ...] = ()  # complete shards to extract again (damaged ones; stages/extract/redo.py)

    @property
    def cpu_threads(self) -> int:
        """Host threads per worker: the CPUs Ray grants it (at least one)."""
        return max(1, int(self.cpus_per_worker))

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = in-process without Ray), got {self.workers}")
        if self.stats_fold_every < 1:
            raise ValueError(f"stats_fold_every must be >= 1, got {self.stats_fold_every}")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError(f"batch_size and shard_size must be >= 1, got {self.batch_size}, {self.shard_size}")


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
    root = as_location(root)
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

    def on_result(result: ShardResult) -> None:
        lease.check()  # never mark a shard complete in a store another run has taken over
        finalize_shard(store, result)
        report.computed_shards.append(result.shard)
        if len(report.computed_shards) % store.stats_fold_every == 0:
            store.fold_stats()  # the driver is the one writer: keeps partials bounded on object stores too
        report.shard_workers[result.shard] = result.worker
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
            _run_in_process(worker, pending, on_result)
        elif pending:
            ready_at = _run_on_ray(spec, worker_kwargs, pending, config, on_result,
                                   on_node=lambda k, node: report.shard_nodes.__setitem__(k, node))
            report.startup_seconds = ready_at - t0
    finally:
        bar.close()
    if store.completed_shards().size:
        store.fold_stats()  # the end of a run: fold what is foldable now (a failed run's next run folds)
    report.seconds = time.perf_counter() - t0
    report.bytes_on_disk, report.bits_per_value = storage_footprint(store)
    return report


class ExtractionStopped(RuntimeError):
    """The run cannot go on (every Ray worker was lost); complete shards are kept and a re-run resumes."""


class RayShardWorker(ShardWorker):
    """The shard worker as a Ray actor, which also tells the driver which Ray node it runs on."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def _start_actors(actors: dict, node_of: dict[int, str], drop: Callable[[int, str], None]) -> None:
    """Wait until every actor has built its teacher (an error in a constructor fails the run at once), and
    record each actor's node. An actor that is still not placed STARTUP_GRACE_S after a node died during
    start-up (Ray would wait for resources the cluster no longer has) is dropped."""
    import ray

    dead_at_start, death_seen = _dead_nodes(), None
    starting = {actors[i].node_id.remote(): i for i in actors}  # node_id runs after __init__: teacher built
    while starting:
        ready, _ = ray.wait(list(starting), num_returns=len(starting), timeout=NODE_POLL_S)
        for ref in ready:
            node_of[starting.pop(ref)] = ray.get(ref)
        if starting and death_seen is None and _dead_nodes() - dead_at_start:
            death_seen = time.monotonic()
        if starting and death_seen is not None and time.monotonic() - death_seen > STARTUP_GRACE_S:
            for ref, i in list(starting.items()):
                del starting[ref]
                drop(i, f"not started {STARTUP_GRACE_S:g} s after a node of the cluster died")


def _dead_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n.get("Alive", True)}


def _run_in_process(worker: ShardWorker, pending: list[int], on_result: Callable[[ShardResult], None]) -> None:
    """Shards on `SHARDS_IN_FLIGHT_PER_WORKER` threads of this process (no Ray), finalized in shard order.

    Errors: the first failure stops new submissions; shards in flight finish (and are finalized if they
    succeeded), then the error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    queue = deque(pending)
    with ThreadPoolExecutor(SHARDS_IN_FLIGHT_PER_WORKER, thread_name_prefix="shard") as pool:
        inflight: deque = deque()
        error: BaseException | None = None
        while queue and len(inflight) < SHARDS_IN_FLIGHT_PER_WORKER:
            k = queue.popleft()
            inflight.append((k, pool.submit(worker.run_shard, k)))
        while inflight:
            k, fut = inflight.popleft()
            try:
                result = fut.result()
            except BaseException as e:  # noqa: BLE001 - the in-flight shard finishes, then this is raised
                error = error or e
                queue.clear()
                continue
            on_result(result)
            if queue and error is None:
                j = queue.popleft()
                inflight.append((j, pool.submit(worker.run_shard, j)))
        if error is not None:
            raise error


def _run_on_ray(spec, worker_kwargs: dict, pending: list[int], config: ExtractConfig,
                on_result: Callable[[ShardResult], None], on_node: Callable[[int, str], None] | None = None) -> float:
    """Dispatch shards to `config.workers` Ray actors with ray.wait; results are finalized as they arrive.

    Losing a node: an actor whose Ray node died (or that Ray gave up restarting) is dropped and its shards
    go back to the queue for the actors left, so the run finishes on the remaining nodes; if no actor is
    left it stops with ExtractionStopped (complete shards are kept, a re-run resumes). The node is polled
    every NODE_POLL_S while waiting, because an actor of a dead node that Ray cannot place again would
    otherwise wait for resources forever. on_node(k, node id) reports where shard k ran.

    Returns the perf_counter time at which every actor had built its teacher (before any shard ran)."""
    import ray

    from stages.orchestrate.ray_session import init_ray

    resources = init_ray(config.ray_address)
    need_cpu, need_gpu = config.workers * config.cpus_per_worker, config.workers * config.gpus_per_worker
    if need_cpu > resources.get("CPU", 0) or need_gpu > resources.get("GPU", 0):
        raise ValueError(f"{config.workers} workers need {need_cpu} CPUs and {need_gpu} GPUs; the Ray "
                         f"cluster has {resources.get('CPU', 0)} CPUs and {resources.get('GPU', 0)} GPUs")
    actor_cls = ray.remote(num_cpus=config.cpus_per_worker, num_gpus=config.gpus_per_worker,
                           max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=ACTOR_MAX_TASK_RETRIES,
                           max_concurrency=SHARDS_IN_FLIGHT_PER_WORKER)(RayShardWorker)
    actors = {i: actor_cls.remote(spec, **worker_kwargs) for i in range(min(config.workers, len(pending)))}
    queue, inflight, errors = deque(pending), {}, []
    node_of: dict[int, str] = {}
    lost: list[str] = []

    def top_up() -> None:
        for i, actor in actors.items():
            while queue and not errors and sum(1 for _, a in inflight.values() if a == i) < TASKS_PER_ACTOR:
                k = queue.popleft()
                inflight[actor.run_shard.remote(k)] = (k, i)

    def drop(i: int, why: str) -> None:
        actor = actors.pop(i)
        for ref, (k, a) in list(inflight.items()):
            if a == i:
                del inflight[ref]
                queue.append(k)  # last: gives the lost worker's process time to be gone before a rewrite
        ray.kill(actor, no_restart=True)
        lost.append(f"worker on node {node_of.get(i, '?')[:12]}: {why}")
        if not actors:
            done = len(pending) - len(queue) - len(inflight)
            raise ExtractionStopped(
                f"every Ray worker was lost ({'; '.join(lost)}); {done} of {len(pending)} shards of this run are "
                f"complete and kept. Re-run `pipeline extract` (with --workers the remaining cluster can place) "
                f"to resume")

    try:
        _start_actors(actors, node_of, drop)
        ready_at = time.perf_counter()
        top_up()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=NODE_POLL_S)
            if not ready:
                dead = _dead_nodes()
                for i in [i for i in actors if node_of.get(i) in dead]:
                    drop(i, "its node died")
                top_up()
                continue
            k, i = inflight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:  # died for good: restarts used up, or its node is gone
                queue.append(k)
                drop(i, str(e).strip().splitlines()[0][:200])
                top_up()
                continue
            except Exception as e:  # noqa: BLE001 - collected, in-flight shards finish, then re-raised
                errors.append((k, e))
                continue
            try:
                on_result(result)
                if on_node is not None:
                    on_node(k, node_of.get(i, ""))
            except Exception as e:  # noqa: BLE001 - as above
                errors.append((k, e))
            top_up()
    finally:
        for actor in actors.values():
            ray.kill(actor)
    if errors:
        k, e = errors[0]
        cause = getattr(e, "cause", e)  # a RayTaskError carries the worker's own exception as .cause
        if isinstance(cause, StoreError):  # no space, lost lease, ...: the clear message, not a traceback
            raise cause from None
        raise RuntimeError(f"shard {k} failed ({len(errors)} shard(s) failed); complete shards are kept, "
                           f"re-run to resume") from e
    return ready_at
