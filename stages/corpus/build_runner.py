"""The corpus build on Ray: one task per tar shard or batch of files, each writing one Parquet part; resumable.

The first stage of offline agglomerative distillation (AM-RADIO, arXiv 2312.06709) decodes every image once.
At a million images that is hours on one core, so the work is split into units (stages/corpus/units.py)
that run as Ray tasks (the engine and `--ray-address` of `pipeline extract`) or in this process
(`workers=0`). Each unit's rows go to `<root>/corpus_parts/<key>.parquet`, written whole or not at all,
its key the sha256 of the build options and the unit's inputs (names with size and modification stamp).
A killed build therefore restarts at the first unfinished unit and reuses the finished parts; a later
build of a grown corpus reuses the parts of the unchanged shards. The manifest is then merged from the
parts in order, a part at a time (memory bounded by one part plus a row group), so it is identical,
byte for byte, to an uninterrupted build's.

The task function (`build_part`) is a plain function of picklable arguments; `run_parts` here is a small
bounded-in-flight scheduler over it. It is not on `stages.orchestrate.shards` (the runner of extraction and
the view store) because that runner's workers are actors built once with everything a shard index needs:
here that is the whole plan (up to FILES_PER_TASK file entries per unit, a million for a million images),
which every actor would hold, while a task receives only its own unit. Moving it needs the runner to hand
each shard its own payload.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from stages.corpus.layouts import LayoutError
from stages.corpus.sources import SHARD_KINDS, CorpusSource
from stages.corpus.units import CorpusOptions, CorpusUnit, build_unit_rows
from store_schema import layout, location
from store_schema.manifest import LOCATED_COLUMNS, ManifestWriter

FILES_PER_TASK = 1024  # image files per unit (a tar shard is one unit whatever its size): seconds of work
PART_FORMAT = 1  # bump when a part's columns or meaning change: old parts are then not reused
TASKS_IN_FLIGHT_PER_WORKER = 2


@dataclass
class PartsReport:
    """What `run_parts` did: parts built now, parts reused from an earlier (interrupted) build."""

    built: int = 0
    reused: int = 0
    rows: int = 0
    seconds: float = 0.0
    workers: set[str] = field(default_factory=set)  # host:pid of the processes that built parts
    engine: str = ""  # "Ray" or "this process"


def plan_units(source: CorpusSource, options: CorpusOptions, *, files_per_task: int = FILES_PER_TASK) -> list[CorpusUnit]:
    """The source's items (already in manifest order) cut into units: each shard alone, consecutive image
    files in batches of `files_per_task`."""
    if files_per_task < 1:
        raise ValueError(f"files_per_task must be >= 1, got {files_per_task}")
    units, batch = [], []
    base = str(source.base)
    entries = dict(zip(source.uris, source.entries))  # an evaluation dataset's entries, by uri

    def close() -> None:
        if batch:
            units.append(_unit(base, tuple(batch), options, entries))
            batch.clear()

    for item in source.items:
        if item.kind in SHARD_KINDS:
            close()
            units.append(_unit(base, (item,), options, entries))
        else:
            batch.append(item)
            if len(batch) >= files_per_task:
                close()
    close()
    return units


def _unit(base: str, items: tuple, options: CorpusOptions, entries: dict) -> CorpusUnit:
    mine = tuple(entries[it.uri] for it in items if it.uri in entries)
    described: dict = {"format": PART_FORMAT, "options": options.to_json(), "base": base,
                       "items": [(it.uri, it.kind, it.stamp) for it in items]}
    if mine:  # only then: a plain corpus keeps its part keys
        described["entries"] = [(e.split, e.label, e.mask_uri, e.depth_uri, e.normals_uri) for e in mine]
    payload = json.dumps(described, sort_keys=True)
    return CorpusUnit(hashlib.sha256(payload.encode()).hexdigest()[:40], base, items, mine)


def build_part(unit: CorpusUnit, options: CorpusOptions, root: str) -> tuple[str, int, str]:
    """The task: the unit's rows, written to its part in one piece. Returns (key, rows, host:pid)."""
    import os
    import socket

    table = build_unit_rows(unit, options)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    location.write_bytes(layout.corpus_part_path(location.as_location(root), unit.key), sink.getvalue().to_pybytes())
    return unit.key, table.num_rows, f"{socket.gethostname()}:{os.getpid()}"


def finished_keys(root: location.Location) -> set[str]:
    """Keys of the parts already in `<root>/corpus_parts` (finished units of earlier builds)."""
    return {n[: -len(".parquet")] for n in location.list_dir(layout.corpus_parts_dir(root)) if n.endswith(".parquet")}


def run_parts(units: list[CorpusUnit], options: CorpusOptions, root: location.Location, *, workers: int,
              ray_address: str | None = None, on_done: Callable[[int], None] | None = None) -> PartsReport:
    """Build every unit whose part is not there yet: on Ray (`workers` tasks at once; None: every CPU of the
    cluster, or this process when a single unit is left, where starting Ray would cost more than the unit)
    or in this process (`workers == 0`). on_done(rows) after each unit (a progress bar)."""
    t0 = time.perf_counter()
    done = finished_keys(root)
    todo = [u for u in units if u.key not in done]
    report = PartsReport(reused=len(units) - len(todo))
    report.engine = "this process" if workers == 0 or (workers is None and len(todo) < 2) else "Ray"
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = in this process without Ray), got {workers}")

    def finished(result: tuple[str, int, str]) -> None:
        report.built += 1
        report.rows += result[1]
        report.workers.add(result[2])
        if on_done is not None:
            on_done(result[1])

    if todo and report.engine == "this process":
        for unit in todo:
            finished(build_part(unit, options, str(root)))
    elif todo:
        _run_on_ray(todo, options, str(root), workers, ray_address, finished)
    report.seconds = time.perf_counter() - t0
    return report


def _run_on_ray(todo: list[CorpusUnit], options: CorpusOptions, root: str, workers: int | None,
                ray_address: str | None, finished: Callable) -> None:
    """One one-CPU Ray task per unit, at most TASKS_IN_FLIGHT_PER_WORKER * workers at once (the driver
    never holds more than that many results). Tasks whose process dies are retried by Ray (max_retries);
    an exception inside a task (a bug, a full disk) lets the tasks in flight finish, then is raised: the
    parts written so far are kept for the re-run."""
    import ray

    from stages.orchestrate.ray_session import ray_session

    errors: list = []
    with ray_session(ray_address) as resources:  # a Ray started here is stopped when the build ends
        n = int(workers) if workers else max(1, int(resources.get("CPU", 1)))
        task = ray.remote(num_cpus=1, max_retries=2)(build_part)
        queue, inflight = deque(todo), {}
        opts_ref = ray.put(options)
        while queue or inflight:
            while queue and not errors and len(inflight) < TASKS_IN_FLIGHT_PER_WORKER * n:
                unit = queue.popleft()
                inflight[task.remote(unit, opts_ref, root)] = unit
            if not inflight:
                break
            ready, _ = ray.wait(list(inflight), num_returns=1)
            unit = inflight.pop(ready[0])
            try:
                finished(ray.get(ready[0]))
            except Exception as e:  # noqa: BLE001 - collected, in-flight tasks finish, then raised
                errors.append((unit, e))
    if errors:
        unit, e = errors[0]
        cause = getattr(e, "cause", e)
        if isinstance(cause, (OSError, LayoutError)):  # a disk, a dataset off its layout: its own one line
            raise cause from None
        names = ", ".join(it.uri for it in unit.items[:3])
        raise RuntimeError(f"corpus unit {names} failed ({len(errors)} unit(s) failed); finished parts are "
                           "kept, re-run to resume") from e


def read_part(root: location.Location, key: str, *, located: bool) -> pa.Table:
    """One part's rows; without the located columns when the manifest has none (an evaluation dataset's
    part has DATASET_COLUMNS too: its key covers the dataset, so it is never another build's part)."""
    path = layout.corpus_part_path(root, key)
    try:
        table = pq.read_table(pa.BufferReader(location.read_bytes(path)))
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"corpus part {path} cannot be read ({str(e).splitlines()[0][:160]}); delete it and "
                         "re-run `pipeline corpus` (its unit is then built again)") from e
    if not located:
        table = table.drop_columns([name for name, _ in LOCATED_COLUMNS])
    return table


def merge_parts(units: list[CorpusUnit], root: location.Location, writer: ManifestWriter, *, located: bool) -> None:
    """The manifest's rows, part after part in unit order (the manifest's uri order)."""
    for unit in units:
        writer.write(read_part(root, unit.key, located=located))


def drop_stale_parts(root: location.Location, keep: set[str]) -> int:
    """Remove parts of `<root>/corpus_parts` that no unit of the current build uses; returns how many."""
    stale = sorted(finished_keys(root) - keep)
    for key in stale:
        path = layout.corpus_part_path(root, key)
        if location.is_url(path):
            fs, inner = location.filesystem(path)
            fs.rm_file(inner)
        else:
            path.unlink(missing_ok=True)
    return len(stale)
