"""The in-process shard worker of stage one: decode, crop, teacher forward, statistics, whole-shard write.

Stage one of agglomerative distillation (AM-RADIO, arXiv 2312.06709) runs every frozen teacher once over
the corpus; PHI-S (arXiv 2410.01680) fits each teacher's normalizer from the mean and covariance of its
outputs. This worker produces both for one shard of one teacher's store: the stored features (bf16 bit
patterns) and float64 partial `Moments` of the values *as stored*, per split of the manifest, which the
driver persists and folds exactly.

Where the work runs (so that a GPU never waits for the host):
- host, on `cpu_threads` threads: decoding, sha256 check and view rendering of the next images
  (`decode_ahead` images ahead), and compressing / writing a finished shard (zarr's codec pool, Blosc
  releases the GIL) while the next shard's forwards run: two `run_shard` calls may run at once (a Ray
  actor with max_concurrency 2, or the driver's two threads without Ray); forwards take turns on one lock.
- the teacher's device: uint8 -> float pixel normalization (the host ships 1 byte per pixel, from pinned
  memory, non-blocking), the forward, pooling to the storage grid, the codec's rounding (bit-identical
  to numcodecs BitRound) and the float64 statistics (`DeviceMoments`). The stored 16-bit values stay in
  a device buffer of the whole shard and come back to the host once per shard, into a reused pinned
  buffer (one DMA); the shard file is then written by the direct shard writer
  (store_schema/shard_writer.py), its inner chunks compressed on `cpu_threads` threads.

No Ray here: the shard runner (stages/orchestrate/shards.py) makes this class a Ray actor for
stages/extract/driver.py, and the same class runs in-process
where Ray is absent (the GPU machine). The worker never marks a shard complete; the driver does that after
writing the shard's statistics, so an interrupted run never leaves a shard that reads as complete.

Shape legend: S images in the shard, V views per image, B batch of views, H/W pixel sides,
h/w storage-grid sides, Cs summary channels, Cp patch channels, T tokens.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import zarr

from stages.corpus.samples import decode_checked
from stages.corpus.views import render_teacher_view, render_view
from stages.extract.device_stats import DeviceMoments
from stages.extract.pooling import check_storage_grid, pool_patches
from stages.stats import Moments
from stages.teachers.preprocess import pixels_on_device, zero_padding
from stages.teachers.resize import content_tokens
from stages.teachers.registry import build_teacher
from stages.teachers.spec import TeacherSpec
from store_schema.codecs import float32_bits_high_half, torch_bitround
from store_schema.layout import STATS_SPLITS
from store_schema.manifest import read_manifest
from store_schema.location import as_location
from store_schema.teacher_store import open_teacher_store


@dataclass(frozen=True)
class MaskedView:
    """A view stored as invalid at extraction time (decode failure or non-finite teacher output)."""

    image_id: int
    view: int
    reason: str


@dataclass
class ShardResult:
    """What one shard's extraction produced; the driver persists `stats` then marks the shard complete."""

    shard: int
    teacher: str
    num_images: int  # images in the shard
    num_bad_images: int  # marked bad in the manifest (never decoded)
    num_views: int  # views written valid
    masked: list[MaskedView]  # views masked at extraction time
    stats: dict[str, dict[str, Moments]]  # kind -> split ("train" / "val") -> moments of the stored values
    seconds: dict[str, float] = field(default_factory=dict)  # wall s: decode / stage / device / fetch / write / total
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process CPU s of the same phases
    worker: str = ""  # host:pid of the process that extracted the shard
    batch_size: int = 0  # views per forward the shard was computed at
    backoffs: list[tuple[int, int]] = field(default_factory=list)  # (from, to): out of memory, shard redone

    def moments(self, kind: str) -> Moments | None:
        """One kind's moments over both splits (train merged with val); None if the teacher lacks it."""
        if kind not in self.stats:
            return None
        return Moments.merge_all((self.stats[kind][sp] for sp in STATS_SPLITS), dim=self.stats[kind]["train"].dim)

    @property
    def summary(self) -> Moments | None:
        return self.moments("summary")

    @property
    def patches(self) -> Moments:
        m = self.moments("patches")
        assert m is not None
        return m


def _forward_context(device: torch.device):
    """bf16 autocast on CUDA (how the teachers are served); exact float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


class _Clock:
    """Wall and process-CPU seconds per phase of one shard."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def add(self, phase: str, wall: float, cpu: float) -> None:
        self.wall[phase] = self.wall.get(phase, 0.0) + wall
        self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu

    def phase(self, name: str):
        clock = self

        class _Ctx:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.add(name, time.perf_counter() - self.t, time.process_time() - self.c)

        return _Ctx()


class _HostBuffers:
    """Host copies of device shard buffers: on CUDA, reused pinned buffers filled by one non-blocking copy
    (a DMA, no host CPU per byte); on a CPU device the tensor itself (already in host memory)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def to_host(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return x
        key = (tuple(x.shape), x.dtype)
        with self._lock:
            free = self._free.setdefault(key, [])
            buf = free.pop() if free else None
        if buf is None:
            buf = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        with torch.cuda.device(x.device):  # the copy and the event on the source device's current stream
            buf.copy_(x, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        done.synchronize()
        return buf

    def release(self, buf: torch.Tensor | None) -> None:
        if buf is None or self.device.type == "cpu":
            return
        with self._lock:
            self._free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)


class ShardWorker:
    """Builds one teacher once and extracts whole shards of its store.

    The store at `store_path` must already exist (created by the driver with `create_teacher_store`); its
    attributes are the single source of truth for the teacher spec, storage grid and shard size.
    `spec` must describe the same teacher as the store (checked by name and architecture).
    `cpu_threads`: host threads this worker may keep busy (Ray's `cpus_per_worker`): decode threads
    (when decode_ahead > 0) and zarr's codec pool in a fresh process. `teacher`: an already built module
    honouring the teacher contract (benchmarks pass a stand-in); default: built from the spec."""

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
        cpu_threads: int = 1,
        teacher: torch.nn.Module | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if decode_ahead < 0:
            raise ValueError(f"decode_ahead must be >= 0 (0 = decode inline), got {decode_ahead}")
        if cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {cpu_threads}")
        # zarr sizes its codec thread pool on first use; in a fresh (Ray actor) process that is now, so
        # chunk-parallel compression uses the CPUs this worker was granted and no more.
        zarr.config.set({"threading.max_workers": max(cpu_threads, 1)})
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
        if teacher is None:
            teacher = build_teacher(spec, checkpoint=checkpoint, device=str(self.device))
        self.teacher = teacher.to(self.device).eval()
        self.decode_ahead = decode_ahead
        self.cpu_threads = cpu_threads
        self._pool = (ThreadPoolExecutor(cpu_threads, thread_name_prefix="decode") if decode_ahead else None)
        self._device_lock = threading.Lock()  # forwards of concurrent run_shard calls take turns
        self._split_N = self.store.image_split()
        codec = self.store.codec
        self._stored_dtype = np.dtype(codec.stored_dtype)
        self._keepbits = codec.keepbits
        self.store.set_write_threads(cpu_threads)  # chunk-parallel compression on the granted CPUs
        self._pinned = _HostBuffers(self.device)
        self._frames = self.store.frames_NV4  # None for a squash teacher (stages/teachers/resize.py)

    def _as_stored(self, x: torch.Tensor) -> np.ndarray:
        """A host tensor of the shard's stored values as the numpy array the store writes (no copy)."""
        a = x.numpy()
        return a.view(np.uint16) if self._stored_dtype == np.uint16 else a

    def describe(self) -> dict[str, str]:
        """Teacher, device and host:pid of this worker (the driver waits on it: actors are built and ready)."""
        return {"teacher": self.spec.name, "device": str(self.device),
                "worker": f"{socket.gethostname()}:{os.getpid()}"}

    def run_shard(self, k: int) -> ShardResult:
        """Extract shard k in full, write it in one call, and return its partial statistics per split.

        Out of device memory (`torch.cuda.OutOfMemoryError`): the worker's batch size is halved (down to 1,
        for this and every later shard) and the shard is redone whole from its first image, so no shard
        ever mixes batches from two attempts and its arrays equal a run at the smaller batch. The result
        lists each back-off (`ShardResult.backoffs`) for the driver to record in the store and print."""
        backoffs: list[tuple[int, int]] = []
        while True:
            batch = self.batch_size
            try:
                result = self._run_shard_at(k, batch)
            except torch.cuda.OutOfMemoryError as e:
                if batch <= 1:
                    raise torch.cuda.OutOfMemoryError(
                        f"teacher {self.spec.name} runs out of memory on {self.device} even at batch size 1 "
                        f"(shard {k}): {str(e).splitlines()[0] if str(e) else 'out of memory'}") from None
                smaller = max(1, batch // 2)
                with self._device_lock:  # a concurrent shard that hit the same limit halves only once
                    self.batch_size = min(self.batch_size, smaller)
                backoffs.append((batch, self.batch_size))
                del e  # the traceback holds the failed attempt's device buffers
                self._free_device_memory()
                continue
            result.backoffs = backoffs
            return result

    def _free_device_memory(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _run_shard_at(self, k: int, batch_size: int) -> ShardResult:
        """One attempt at shard k with `batch_size` views per forward."""
        t0, c0 = time.perf_counter(), time.process_time()
        clock = _Clock()
        lo, hi = self.store.shard_range(k)
        s, v = hi - lo, self.store.num_views
        (gh, gw), cs, cp = self.grid, self.store.summary_dim, self.store.patch_dim
        # The shard's stored values stay on the teacher's device until the shard is done, then come back
        # in one copy (a DMA into pinned memory on CUDA; no copy at all on a CPU device).
        dev_dtype = torch.int16 if self._stored_dtype == np.uint16 else torch.float32
        summary_SVC = torch.zeros((s, v, cs), dtype=dev_dtype, device=self.device) if cs else None
        patches_SVhwC = torch.zeros((s, v, gh, gw, cp), dtype=dev_dtype, device=self.device)
        valid_SV = np.zeros((s, v), bool)
        masked: list[MaskedView] = []
        acc = {(kind, sp): DeviceMoments(dim, self.device)
               for kind, dim in (("summary", cs), ("patches", cp)) if dim for sp in STATS_SPLITS}

        views: list[np.ndarray] = []  # rendered uint8 views waiting for a batch
        slots: list[tuple[int, int]] = []  # (row in shard, view index) of each pending view
        ok_ids = [i for i in range(lo, hi) if self.manifest.ok_N[i]]
        num_bad = s - len(ok_ids)
        buffers = (summary_SVC, patches_SVhwC, valid_SV)
        for image_id, (rendered, image_masked), waited, cpu in self._rendered(ok_ids):
            clock.add("decode", waited, cpu)
            masked.extend(image_masked)
            row = image_id - lo
            for view, arr in enumerate(rendered):
                views.append(arr)
                slots.append((row, view))
            while len(views) >= batch_size:
                n = batch_size
                self._forward_into(views[:n], slots[:n], lo, buffers, acc, masked, clock)
                del views[:n], slots[:n]
        if views:  # the last, partial batch
            self._forward_into(views, slots, lo, buffers, acc, masked, clock)

        with clock.phase("fetch"):  # back to the host: the shard's 16-bit values, in one copy
            host = [self._pinned.to_host(x) if x is not None else None for x in (summary_SVC, patches_SVhwC)]
        try:
            with clock.phase("write"):  # outside the device lock: the next shard's forwards run meanwhile
                summary_np, patches_np = (None if x is None else self._as_stored(x) for x in host)
                self.store.write_shard(k, summary_SVC=summary_np, patches_SVhwC=patches_np, valid_SV=valid_SV)
        finally:
            for x in host:
                self._pinned.release(x)
        stats: dict[str, dict[str, Moments]] = {}
        for (kind, sp), m in acc.items():
            stats.setdefault(kind, {})[sp] = m.to_moments()
        clock.wall["total"] = time.perf_counter() - t0
        clock.cpu["total"] = time.process_time() - c0
        return ShardResult(
            shard=k,
            teacher=self.spec.name,
            num_images=s,
            num_bad_images=num_bad,
            num_views=int(valid_SV.sum()),
            masked=masked,
            stats=stats,
            seconds=clock.wall,
            cpu_seconds=clock.cpu,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            batch_size=batch_size,
        )

    def _rendered(self, ids: list[int]) -> Iterator[tuple[int, tuple[list[np.ndarray], list[MaskedView]], float, float]]:
        """(image id, (views, masked views), wall s, CPU s this thread spent on it) in the order of `ids`.

        With decode_ahead > 0, up to that many images are decoded and rendered ahead by `cpu_threads`
        background threads (PIL releases the GIL while decoding and resizing), so decoding overlaps the
        teacher forward; the seconds are then the time this thread waited. Order and results are the same."""
        if self._pool is None:
            for i in ids:
                t, c = time.perf_counter(), time.process_time()
                out = self._render_image(i)
                yield i, out, time.perf_counter() - t, time.process_time() - c
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
            yield i, out, waited, 0.0

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
        if self._frames is None:  # squash: the view box resized to the square input
            return [render_view(img, boxes_V4[v], bool(flips_V[v]), res) for v in range(self.store.num_views)], []
        return [render_teacher_view(img, boxes_V4[v], bool(flips_V[v]), res, self._frames[image_id, v])
                for v in range(self.store.num_views)], []

    @torch.inference_mode()
    def _forward_into(self, views: list[np.ndarray], slots: list[tuple[int, int]], lo: int, buffers: tuple,
                      acc: dict[tuple[str, str], DeviceMoments], masked: list[MaskedView], clock: _Clock) -> None:
        """Run one batch of views through the teacher; place finite results (as stored) in the shard
        buffers and add them to the device statistics of their split."""
        summary_SVC, patches_SVhwC, valid_SV = buffers
        dev = self.device
        with self._device_lock:
            with clock.phase("stage"):  # host: stack the uint8 views, pin, ship (1 byte per pixel)
                u8_BHW3 = torch.from_numpy(np.stack(views))
                if dev.type == "cuda":
                    u8_BHW3 = u8_BHW3.pin_memory()
                u8_BHW3 = u8_BHW3.to(dev, non_blocking=True)
                rows_B = np.array([r for r, _ in slots])
                split_B = torch.from_numpy(self._split_N[lo + rows_B].astype(np.int64)).to(dev, non_blocking=True)
                frames_B4 = None if self._frames is None else self._frames[lo + rows_B, [v for _, v in slots]]
            with clock.phase("device"):  # on the teacher's device: normalize, forward, pool, round, stats
                pixels_BCHW = pixels_on_device(u8_BHW3, self.spec)
                content_Bhw = None
                if frames_B4 is not None:
                    pixels_BCHW = zero_padding(pixels_BCHW, frames_B4, self.spec.resolution)
                    content_Bhw = content_tokens(frames_B4, self.grid).to(dev)
                with _forward_context(dev):
                    out = self.teacher(pixels_BCHW)
                patches_BhwC = torch_bitround(pool_patches(out.patches_BhwC.float(), self.grid), self._keepbits)
                B = patches_BhwC.shape[0]
                finite_B = torch.isfinite(patches_BhwC).view(B, -1).all(dim=1)
                summary_BC = None
                if summary_SVC is not None:
                    if out.summary_BC is None:
                        raise AssertionError(f"teacher {self.spec.name} declared summary_dim but returned no summary")
                    summary_BC = torch_bitround(out.summary_BC.float(), self._keepbits)
                    finite_B &= torch.isfinite(summary_BC).all(dim=1)
                for p, sp in enumerate(STATS_SPLITS):
                    keep_B = finite_B & (split_B == p)
                    if content_Bhw is None:
                        acc[("patches", sp)].update(patches_BhwC[keep_B].reshape(-1, patches_BhwC.shape[-1]))
                    else:  # padded tokens are stored but never counted
                        acc[("patches", sp)].update(patches_BhwC[keep_B[:, None, None] & content_Bhw])
                    if summary_BC is not None:
                        acc[("summary", sp)].update(summary_BC[keep_B])
                # into the shard's device buffers; a non-finite view stays zero (and invalid)
                rows_t = torch.as_tensor(rows_B, device=dev)
                views_t = torch.as_tensor([v for _, v in slots], device=dev)
                for buf, x in ((patches_SVhwC, patches_BhwC), (summary_SVC, summary_BC)):
                    if buf is None:
                        continue
                    if self._stored_dtype == np.uint16:
                        x = float32_bits_high_half(x)
                    buf[rows_t, views_t] = x.masked_fill(~finite_B.view(B, *([1] * (x.dim() - 1))), 0)
            with clock.phase("fetch"):  # back to the host now: only the finite flags (B booleans)
                finite = finite_B.cpu().numpy()
        for b, (row, view) in enumerate(slots):
            if not finite[b]:
                masked.append(MaskedView(lo + row, view, "non-finite teacher output"))
                continue  # buffers stay zero, valid stays False
            valid_SV[row, view] = True
