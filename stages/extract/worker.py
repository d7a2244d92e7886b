"""The in-process shard worker of stage one: decode, crop, teacher forward, whole-shard write, statistics.

Stage one of agglomerative distillation (AM-RADIO, arXiv 2312.06709) runs every frozen teacher once over
the corpus; PHI-S (arXiv 2410.01680) fits each teacher's normalizer from the mean and covariance of its
outputs. This worker produces both for one shard of one teacher's store: the stored features and the
float64 partial `Moments` of the values *as stored* (after BitRound), which the driver merges exactly.

No Ray here: `pipeline/extract.py` wraps this class in a Ray actor, and the same class runs in-process
where Ray is absent (the GPU machine). The worker never marks a shard complete; the driver does that after
writing the shard's statistics, so an interrupted run never leaves a shard that reads as complete.

Shape legend: S images in the shard, V views per image, B batch of views, H/W pixel sides,
h/w storage-grid sides, Cs summary channels, Cp patch channels.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from stages.corpus.samples import decode_checked
from stages.corpus.views import render_view
from stages.extract.pooling import check_storage_grid, pool_patches
from stages.stats import Moments
from stages.teachers.preprocess import to_pixels
from stages.teachers.registry import build_teacher
from stages.teachers.spec import TeacherSpec
from store_schema.codecs import round_as_stored
from store_schema.manifest import read_manifest
from store_schema.location import as_location
from store_schema.teacher_store import open_teacher_store


STATS_BLOCK_VALUES = 1 << 23  # float64 values per statistics block (64 MiB)


@dataclass(frozen=True)
class MaskedView:
    """A view stored as invalid at extraction time (decode failure or non-finite teacher output)."""

    image_id: int
    view: int
    reason: str


@dataclass
class ShardResult:
    """What one shard's extraction produced; the driver persists `summary` / `patches` then marks it complete."""

    shard: int
    teacher: str
    num_images: int  # images in the shard
    num_bad_images: int  # marked bad in the manifest (never decoded)
    num_views: int  # views written valid
    masked: list[MaskedView]  # views masked at extraction time
    summary: Moments | None  # over valid views' summary tokens, as stored; None if the teacher has none
    patches: Moments  # over every patch token of the valid views, as stored
    seconds: dict[str, float] = field(default_factory=dict)  # decode / forward / write / stats / total
    worker: str = ""  # host:pid of the process that extracted the shard


def _forward_context(device: torch.device):
    """bf16 autocast on CUDA (how the teachers are served); exact float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


class ShardWorker:
    """Builds one teacher once and extracts whole shards of its store.

    The store at `store_path` must already exist (created by the driver with `create_teacher_store`); its
    attributes are the single source of truth for the teacher spec, storage grid and shard size.
    `spec` must describe the same teacher as the store (checked by name and architecture)."""

    def __init__(
        self,
        spec: TeacherSpec,
        *,
        store_path: Path,
        manifest_path: Path,
        checkpoint: Path | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        decode_ahead: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if decode_ahead < 0:
            raise ValueError(f"decode_ahead must be >= 0 (0 = decode inline), got {decode_ahead}")
        self.manifest = read_manifest(as_location(manifest_path))
        self.store = open_teacher_store(
            as_location(store_path),
            expect_manifest_hash=self.manifest.hash,
            expect_view_spec=self.manifest.view_spec,
            mode="r+",
        )
        if self.store.spec.to_dict() != spec.to_dict():
            raise ValueError(
                f"teacher spec {spec.name!r} differs from the spec recorded in {store_path} "
                f"({self.store.spec.name!r}); extract into a fresh store root"
            )
        self.spec = spec
        self.grid = tuple(self.store.grid)
        check_storage_grid(spec.grid, self.grid)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.teacher = build_teacher(spec, checkpoint=checkpoint, device=str(self.device)).eval()
        self.decode_ahead = decode_ahead
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="decode") if decode_ahead else None

    def describe(self) -> dict[str, str]:
        """Teacher, device and host:pid of this worker (the driver waits on it: actors are built and ready)."""
        return {"teacher": self.spec.name, "device": str(self.device),
                "worker": f"{socket.gethostname()}:{os.getpid()}"}

    def run_shard(self, k: int) -> ShardResult:
        """Extract shard k in full, write it in one call, and return its partial statistics."""
        t0 = time.perf_counter()
        lo, hi = self.store.shard_range(k)
        s, v = hi - lo, self.store.num_views
        (gh, gw), cs, cp = self.grid, self.store.summary_dim, self.store.patch_dim
        summary_SVC = np.zeros((s, v, cs), np.float32) if cs else None
        patches_SVhwC = np.zeros((s, v, gh, gw, cp), np.float32)
        valid_SV = np.zeros((s, v), bool)
        masked: list[MaskedView] = []
        secs = {"decode": 0.0, "forward": 0.0}

        views: list[np.ndarray] = []  # rendered uint8 views waiting for a batch
        slots: list[tuple[int, int]] = []  # (row in shard, view index) of each pending view
        ok_ids = [i for i in range(lo, hi) if self.manifest.ok_N[i]]
        num_bad = s - len(ok_ids)
        for image_id, (rendered, image_masked), waited in self._rendered(ok_ids):
            secs["decode"] += waited
            masked.extend(image_masked)
            row = image_id - lo
            for view, arr in enumerate(rendered):
                views.append(arr)
                slots.append((row, view))
            while len(views) >= self.batch_size:
                n = self.batch_size
                t = time.perf_counter()
                self._forward_into(views[:n], slots[:n], lo, summary_SVC, patches_SVhwC, valid_SV, masked)
                secs["forward"] += time.perf_counter() - t
                del views[:n], slots[:n]
        if views:  # the last, partial batch
            t = time.perf_counter()
            self._forward_into(views, slots, lo, summary_SVC, patches_SVhwC, valid_SV, masked)
            secs["forward"] += time.perf_counter() - t

        t = time.perf_counter()
        self.store.write_shard(k, summary_SVC=summary_SVC, patches_SVhwC=patches_SVhwC, valid_SV=valid_SV)
        secs["write"] = time.perf_counter() - t
        t = time.perf_counter()
        summary_m, patches_m = self._stored_moments(summary_SVC, patches_SVhwC, valid_SV)
        secs["stats"] = time.perf_counter() - t
        secs["total"] = time.perf_counter() - t0
        return ShardResult(
            shard=k,
            teacher=self.spec.name,
            num_images=s,
            num_bad_images=num_bad,
            num_views=int(valid_SV.sum()),
            masked=masked,
            summary=summary_m,
            patches=patches_m,
            seconds=secs,
            worker=f"{socket.gethostname()}:{os.getpid()}",
        )

    def _rendered(self, ids: list[int]) -> Iterator[tuple[int, tuple[list[np.ndarray], list[MaskedView]], float]]:
        """(image id, (views, masked views), seconds this thread spent on it) in the order of `ids`.

        With decode_ahead > 0, up to that many images are decoded and rendered ahead by one background
        thread (PIL releases the GIL while decoding and resizing), so decoding overlaps the teacher forward;
        the seconds are then the time this thread waited for the result. Order and results are the same."""
        if self._pool is None:
            for i in ids:
                t = time.perf_counter()
                out = self._render_image(i)
                yield i, out, time.perf_counter() - t
            return
        pending: deque = deque()
        it = iter(ids)
        for i in itertools.islice(it, self.decode_ahead):
            pending.append((i, self._pool.submit(self._render_image, i)))
        while pending:
            i, fut = pending.popleft()
            t = time.perf_counter()
            out = fut.result()
            waited = time.perf_counter() - t
            for j in itertools.islice(it, 1):
                pending.append((j, self._pool.submit(self._render_image, j)))
            yield i, out, waited

    def _render_image(self, image_id: int) -> tuple[list[np.ndarray], list[MaskedView]]:
        """Decode one image and render its manifest views at the teacher's resolution: (views, masked).

        A decode failure here, or bytes that differ from the manifest's sha256 (the file changed or
        vanished since the manifest was built; its views were drawn from the old hash), masks all of the
        image's views and is reported, never fatal."""
        img, reason = decode_checked(self.manifest, image_id)
        if img is None:
            return [], [MaskedView(image_id, v, f"decode: {reason}") for v in range(self.store.num_views)]
        boxes_V4 = self.manifest.view_boxes_NV4[image_id]
        flips_V = self.manifest.view_flips_NV[image_id]
        res = self.spec.resolution
        return [render_view(img, boxes_V4[v], bool(flips_V[v]), res) for v in range(self.store.num_views)], []

    @torch.inference_mode()
    def _forward_into(
        self,
        views: list[np.ndarray],
        slots: list[tuple[int, int]],
        lo: int,
        summary_SVC: np.ndarray | None,
        patches_SVhwC: np.ndarray,
        valid_SV: np.ndarray,
        masked: list[MaskedView],
    ) -> None:
        """Run one batch of views through the teacher and place finite results in the shard buffers."""
        pixels_BCHW = to_pixels(np.stack(views), self.spec).to(self.device)
        with _forward_context(self.device):
            out = self.teacher(pixels_BCHW)
        patches_BhwC = pool_patches(out.patches_BhwC.float(), self.grid).cpu().numpy()
        finite_B = np.isfinite(patches_BhwC).reshape(len(views), -1).all(axis=1)
        summary_BC = None
        if summary_SVC is not None:
            if out.summary_BC is None:
                raise AssertionError(f"teacher {self.spec.name} declared summary_dim but returned no summary")
            summary_BC = out.summary_BC.float().cpu().numpy()
            finite_B &= np.isfinite(summary_BC).all(axis=1)
        for b, (row, view) in enumerate(slots):
            if not finite_B[b]:
                masked.append(MaskedView(lo + row, view, "non-finite teacher output"))
                continue  # buffers stay zero, valid stays False
            patches_SVhwC[row, view] = patches_BhwC[b]
            if summary_BC is not None:
                summary_SVC[row, view] = summary_BC[b]
            valid_SV[row, view] = True

    def _stored_moments(self, summary_SVC: np.ndarray | None, patches_SVhwC: np.ndarray,
                        valid_SV: np.ndarray) -> tuple[Moments | None, Moments]:
        """float64 moments of the valid views, of the values as stored: the in-memory buffers passed
        through `round_as_stored` (the store's own BitRound, bit-identical to what zarr wrote), so the
        shard is never read back. Views are taken in blocks of at most STATS_BLOCK_VALUES values to bound
        the float64 copy."""
        codec = self.store.codec
        cp = self.store.patch_dim
        rows, views = np.nonzero(valid_SV)
        per_view = int(np.prod(patches_SVhwC.shape[2:]))
        block = max(1, STATS_BLOCK_VALUES // max(per_view, 1))  # views per block
        patches_m = Moments.empty(cp)
        for a in range(0, len(rows), block):
            tokens_TC = patches_SVhwC[rows[a:a + block], views[a:a + block]].reshape(-1, cp)
            patches_m = patches_m.merge(Moments.from_batch(round_as_stored(tokens_TC, codec)))
        summary_m = None
        if summary_SVC is not None:
            summary_m = Moments.from_batch(round_as_stored(summary_SVC[valid_SV], codec))
        return summary_m, patches_m
