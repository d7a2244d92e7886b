"""Render the manifest's views once at the student's input size (`pipeline views`), shard by shard.

Stage two shows the student each (image, view) sample with the crop box and flip the teachers saw. The
loader can decode the image file and render that view every epoch (`UnitCache.student_views`), or read it
from a student-view store rendered here once (store_schema/view_store.py), by the same two functions
(`load_checked_for_views` on all the image's views, then `render_view`), so both give the same pixels.

Work is split by shard and run by the shard runner every store-building stage shares
(stages/orchestrate/shards.py): a shard's images are decoded and rendered and the shard file written by one
worker (one-CPU Ray actors by default, each holding the manifest, or in this process); the completion
callback marks each shard complete after it was written, so a killed run resumes at the shards not yet
marked and never counts a half-written one; a lost Ray node's shards go to the actors left.
An image that no longer decodes, or whose bytes changed since the manifest, is recorded (`valid` False,
listed in the report) and skipped; the loader then decodes it itself and fails as it would without the
store (its targets no longer match it either).

Shape legend: S images in a shard, V views, P the view side in pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.corpus.samples import ImageChangedError, load_checked_for_views
from stages.corpus.views import render_view
from stages.extract.interrupted import views_interrupted
from stages.orchestrate.ray_address import DEFAULT_CONNECT_TIMEOUT_S
from stages.orchestrate.ray_session import ray_session
from stages.orchestrate.shards import RayWorkers, ShardRunInterrupted, in_process, on_ray
from store_schema import layout
from store_schema.location import absolute, as_location
from store_schema.manifest import Manifest, read_manifest
from store_schema.view_store import ViewStore, create_view_store, open_view_store

DEFAULT_SHARD_SIZE = 64  # `pipeline extract`'s default, for a root without teacher stores yet


def render_images(manifest: Manifest, lo: int, hi: int, size: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(views uint8 [S, V, P, P, 3], valid bool [S], {image id: why it was skipped}) for images [lo, hi).

    Images the manifest marks bad stay zero and invalid without a reason (the manifest has it)."""
    V = manifest.view_spec.num_views
    out = np.zeros((hi - lo, V, size, size, 3), np.uint8)
    valid = np.zeros(hi - lo, bool)
    bad: dict[int, str] = {}
    for i in range(lo, hi):
        if not manifest.ok_N[i]:
            continue
        boxes = manifest.view_boxes_NV4[i]
        try:
            img = load_checked_for_views(manifest, i, boxes, size)  # the loader's decode: same draft scale
        except ImageChangedError as e:
            bad[i] = str(e)
            continue
        for v in range(V):
            out[i - lo, v] = render_view(img, boxes[v], bool(manifest.view_flips_NV[i, v]), size)
        valid[i - lo] = True
    return out, valid, bad


class ShardRenderer:
    """One worker's renderer: the manifest and the store opened once, then shard after shard (in this
    process, or as a Ray actor, so a million-image manifest is read once per worker, not once per shard)."""

    def __init__(self, root: str, size: int) -> None:
        self.manifest = read_manifest(layout.manifest_path(root))
        self.store = open_view_store(layout.student_views_path(root, size), expect_manifest_hash=self.manifest.hash,
                                     mode="r+")
        self.size = size

    def run_shard(self, k: int) -> dict[str, Any]:
        """Render and write shard k (not marked complete here: the driver does that); what the report needs."""
        t0 = time.process_time()
        lo, hi = self.store.shard_range(k)
        views, valid, bad = render_images(self.manifest, lo, hi, self.size)
        self.store.write_shard(k, views, valid)
        return {"shard": k, "images": hi - lo, "rendered": int(valid.sum()), "bad": bad,
                "cpu_s": time.process_time() - t0}


@dataclass
class ViewsReport:
    path: str
    size: int
    shards_rendered: int = 0
    shards_kept: int = 0
    images: int = 0
    rendered: int = 0
    bad: dict[int, str] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def summary(self) -> str:
        ms = 1e3 * self.cpu_s / self.images if self.images else 0.0
        unused = self.images - self.rendered - len(self.bad)
        lines = [f"student views {self.size}px: {self.path}: {self.shards_rendered} shard(s) rendered "
                 f"({self.images} images: {self.rendered} rendered"
                 + (f", {unused} marked bad in the manifest" if unused else "")
                 + (f", {len(self.bad)} skipped" if self.bad else "")
                 + f"; {ms:.2f} ms·core per image), {self.shards_kept} already complete kept"]
        if self.bad:
            lines.append(f"  {len(self.bad)} image(s) skipped (the loader will refuse them as it does without the "
                         "store):")
            lines += [f"    {i}: {why}" for i, why in sorted(self.bad.items())[:10]]
            if len(self.bad) > 10:
                lines.append(f"    ... and {len(self.bad) - 10} more")
        return "\n".join(lines)


def default_shard_size(root: Path | str) -> int:
    """The read unit of the teacher stores under root (the largest shard size), so that one unit of
    targets and its views are one read each; the extract default when there is no teacher store yet."""
    from store_schema.teacher_store import open_teacher_store

    sizes = [open_teacher_store(layout.teacher_store_path(root, t)).shard_size
             for t in layout.list_teacher_stores(root)]
    return max(sizes) if sizes else DEFAULT_SHARD_SIZE


def run_views(root: Path | str, size: int, *, shard_size: int | None = None, workers: int = 1,
              use_ray: bool = True, ray_address: str | None = None,
              ray_timeout: float = DEFAULT_CONNECT_TIMEOUT_S, resume: str | None = None) -> ViewsReport:
    """Render every pending shard of <root>'s view store at `size`, creating the store when needed.

    workers: shards rendered at once (one-CPU Ray actors, each holding the manifest); use_ray False renders in this process.
    SIGINT / SIGTERM stop it between shards with an Interrupted naming the shards kept and `resume` (the command
    that resumes; default `pipeline views --size SIZE`)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = as_location(absolute(root))  # Ray actors may run in another working directory
    root_s = str(root)
    manifest = read_manifest(layout.manifest_path(root))
    path = layout.student_views_path(root, size)
    if shard_size is None:
        try:
            shard_size = open_view_store(path).shard_size  # an existing store keeps its own
        except FileNotFoundError:
            shard_size = default_shard_size(root)
    store: ViewStore = create_view_store(path, manifest=manifest, size=size, shard_size=shard_size)
    pending = [int(k) for k in store.pending_shards()]
    report = ViewsReport(path=str(path), size=size, shards_kept=store.num_shards - len(pending))
    t0 = time.perf_counter()

    def finish(k: int, result: dict[str, Any], node: str) -> None:
        store.mark_complete(result["shard"])
        report.shards_rendered += 1
        report.images += result["images"]
        report.rendered += result["rendered"]
        report.bad.update(result["bad"])
        report.cpu_s += result["cpu_s"]

    resume = resume or f"pipeline views --size {size}"
    try:
        if pending and not use_ray:
            in_process(ShardRenderer(root_s, size), pending, finish)
        elif pending:
            with ray_session(ray_address, connect_timeout=ray_timeout):
                on_ray(ShardRenderer, (root_s, size), {}, pending, RayWorkers(workers), finish,
                       resume_hint=f"Re-run `{resume}` to resume")
    except ShardRunInterrupted as e:
        raise views_interrupted(root, size, e.signum, resume) from None
    report.wall_s = time.perf_counter() - t0
    return report


def view_store_lines(root: Path | str) -> tuple[list[str], list[str]]:
    """(one line per student-view store under root, the stores not rendered from root's manifest), for
    `pipeline store info`."""
    from store_schema import location

    sizes = layout.list_student_view_sizes(root)
    if not sizes:
        return [], []
    manifest_hash = read_manifest(layout.manifest_path(root)).hash
    lines, wrong = [], []
    for size in sizes:
        store = open_view_store(layout.student_views_path(root, size))
        done = len(store.completed_shards())
        valid = int(np.count_nonzero(store.valid[:]))
        nbytes = location.size_of_tree(store.path)
        lines.append(f"student views {size}px: {store.path}: {done}/{store.num_shards} shards complete, "
                     f"{valid} of {store.num_images} images rendered, {nbytes / 1e6:.1f} MB on disk "
                     f"({nbytes / max(valid, 1) / 1e3:.0f} kB per image)")
        if store.manifest_hash != manifest_hash:
            wrong.append(str(store.path))
            lines.append(f"  WRONG MANIFEST: rendered from manifest {store.manifest_hash[:12]}, the root's is "
                         f"{manifest_hash[:12]}: remove {store.path} and run `pipeline views --size {size}` again")
    return lines, wrong
