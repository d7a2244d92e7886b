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

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stages.corpus.images import inspect_image
from stages.corpus.views import render_view
from stages.extract.pooling import check_storage_grid, pool_patches
from stages.stats import Moments
from stages.teachers.preprocess import to_pixels
from stages.teachers.registry import build_teacher
from stages.teachers.spec import TeacherSpec
from store_schema.manifest import read_manifest
from store_schema.teacher_store import open_teacher_store


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
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.manifest = read_manifest(Path(manifest_path))
        self.store = open_teacher_store(
            Path(store_path),
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
        num_bad = 0
        for row, image_id in enumerate(range(lo, hi)):
            if not self.manifest.ok_N[image_id]:
                num_bad += 1
                continue
            t = time.perf_counter()
            rendered = self._render_image(image_id, masked)
            secs["decode"] += time.perf_counter() - t
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
        summary_m, patches_m = self._stored_moments(k)
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

    def _render_image(self, image_id: int, masked: list[MaskedView]) -> list[np.ndarray]:
        """Decode one image and render its manifest views at the teacher's resolution.

        A decode failure here, or bytes that differ from the manifest's sha256 (the file changed or
        vanished since the manifest was built; its views were drawn from the old hash), masks all of the
        image's views and is reported, never fatal."""
        m = self.manifest
        rec = inspect_image(m.image_path(image_id), pixel_limit=m.pixel_limit, min_side=m.min_side)
        reason = rec.reason
        if rec.ok and rec.sha256 != m.sha256[image_id]:
            reason = f"content changed since the manifest (sha256 {rec.sha256[:12]} != {m.sha256[image_id][:12]})"
        if reason:
            masked.extend(MaskedView(image_id, v, f"decode: {reason}") for v in range(self.store.num_views))
            return []
        img = rec.rgb
        boxes_V4 = self.manifest.view_boxes_NV4[image_id]
        flips_V = self.manifest.view_flips_NV[image_id]
        res = self.spec.resolution
        return [render_view(img, boxes_V4[v], bool(flips_V[v]), res) for v in range(self.store.num_views)]

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

    def _stored_moments(self, k: int) -> tuple[Moments | None, Moments]:
        """float64 moments of the valid views, computed from the shard read back from disk (values as
        stored, after BitRound), merged image by image to bound memory."""
        summary_SVC, patches_SVhwC, valid_SV = self.store.read_shard(k)
        cp = self.store.patch_dim
        patches_m = Moments.empty(cp)
        for row in range(valid_SV.shape[0]):
            if valid_SV[row].any():
                patches_m = patches_m.merge(Moments.from_batch(patches_SVhwC[row][valid_SV[row]].reshape(-1, cp)))
        summary_m = None
        if summary_SVC is not None:
            summary_m = Moments.from_batch(summary_SVC[valid_SV])
        return summary_m, patches_m
