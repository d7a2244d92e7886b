"""Re-encode an existing teacher store without running the teacher again, in parallel over shards on dask.

Storage is a first-class cost of an offline AM-RADIO store (arXiv 2312.06709): SAM-H's 64×64×1280 patch grid
is ≈10 MB per image in bf16. A store already extracted can be pooled to a coarser grid (adaptive average
pooling, as extraction's `--storage-grid` does), moved to another codec or stripped of mantissa bits
(BitRound, Klöwer et al. 2021) here, and the PHI-S normalizers (arXiv 2410.01680) are then fitted from the
new store's statistics, recomputed from its new stored values.

Parallelism: the source arrays are opened as `dask.array`s with `chunks=` the shard shape, so each
block is exactly one zarr shard (one task per shard, never one per inner chunk); one delayed task per
destination shard reads its source block, pools, writes the whole destination shard, reads it back and
writes its moments, then marks it complete. Tasks run on dask's threaded scheduler here, or on Ray's dask
scheduler (`ray.util.dask.ray_dask_get`) when Ray is up, e.g. on a cluster where every node sees the roots.

Completion protocol (as stage one's): a destination shard counts only once its complete flag is set, which
happens after its data and statistics; a killed run leaves shards either complete or not, and a re-run
transcodes exactly the incomplete ones. Writing a whole shard again is idempotent. The destination records
the source store's fingerprint (`layout.TRANSCODED_FROM_ATTR`); a re-run against a source whose stored
values changed is refused rather than mixed.

Shape legend: S images in a shard, V views, h/w source grid, gh/gw destination grid, C channels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.stats import Moments
from store_schema import layout, location
from store_schema.codecs import CodecSpec, decode_from_store
from store_schema.errors import StoreMismatchError
from store_schema.manifest import read_manifest
from store_schema.teacher_store import TeacherStore, create_teacher_store, open_teacher_store

if TYPE_CHECKING:
    from store_schema.lease import LeaseOptions

SCHEDULERS = ("threads", "sync", "ray")
STATS_BLOCK_VALUES = 1 << 24  # float64 copy bound when the moments of one shard are taken


@dataclass
class TranscodeReport:
    """What one `transcode_store` did."""

    teacher: str
    source: Path
    dest: Path
    computed_shards: list[int]
    skipped_shards: list[int]  # complete before this run started
    grid: tuple[int, int]
    codec: CodecSpec
    seconds: float
    scheduler: str
    source_bytes: int = 0
    dest_bytes: int = 0
    dest_bits_per_value: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary_line(self) -> str:
        ratio = self.source_bytes / self.dest_bytes if self.dest_bytes else 0.0
        return (f"transcode {self.teacher}: {self.source} -> {self.dest}, grid {self.grid[0]}x{self.grid[1]}, "
                f"keepbits {self.codec.keepbits}, {self.codec.compressor}:{self.codec.clevel}; "
                f"{len(self.computed_shards)} shards computed, {len(self.skipped_shards)} skipped "
                f"({self.scheduler}), {self.seconds:.1f} s; {self.source_bytes / 2**20:.2f} -> "
                f"{self.dest_bytes / 2**20:.2f} MiB ({ratio:.2f}x smaller), {self.dest_bits_per_value:.2f} bits/value")


def provenance(source: TeacherStore) -> dict[str, Any]:
    """What the destination records about its source: where it was and its fingerprint."""
    return {"store": str(source.path), "fingerprint": source.fingerprint()}


def transcode_store(src_root: Path, teacher: str, dst_root: Path, *, lease: LeaseOptions | None = None,
                    **options: Any) -> TranscodeReport:
    """`_transcode_store` under the destination store's lease (store_schema/lease.py): a second transcode,
    or an extraction, into the same destination fails naming the holder (or waits: LeaseOptions(wait=True))."""
    from store_schema.lease import Lease

    dst_path = layout.teacher_store_path(dst_root, teacher)
    with Lease(dst_path, purpose=f"transcode {teacher} from {src_root}", options=lease):
        return _transcode_store(src_root, teacher, dst_root, **options)


def _transcode_store(src_root: Path, teacher: str, dst_root: Path, *, storage_grid: tuple[int, int] | None = None,
                     codec: CodecSpec | None = None, scheduler: str = "threads", workers: int = 2) -> TranscodeReport:
    """Transcode `<src_root>/<teacher>.zarr` into `<dst_root>/<teacher>.zarr` (resumable, shard by shard).

    storage_grid: the destination's patch grid (default: the source's; only pooling, never upsampling).
    codec: the destination's codec (default: the source's). The manifest is copied to dst_root (or must
    already be the same there). The source must be complete. ValueError / StoreMismatchError on mistakes."""
    from stages.extract.inspect import storage_footprint
    from stages.extract.pooling import check_storage_grid

    t0 = time.perf_counter()
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    src_path, dst_path = layout.teacher_store_path(src_root, teacher), layout.teacher_store_path(dst_root, teacher)
    same = (src_path == dst_path if location.is_url(src_path) or location.is_url(dst_path)
            else Path(src_path).resolve() == Path(dst_path).resolve())
    if same:
        raise ValueError(f"--to must be another store root than --root ({src_root}); a store is never "
                         "re-encoded in place")
    src = open_teacher_store(src_path, mode="r")
    pending_src = src.pending_shards()
    if len(pending_src):
        raise ValueError(f"source store {src.path} has {len(pending_src)} incomplete shard(s) of {src.num_shards}; "
                         "finish its extraction (`pipeline extract`) before transcoding it")
    src.require_stored(reader="transcoding")  # a lost chunk would be transcoded as zeros, marked complete
    grid = tuple(int(g) for g in (storage_grid or src.grid))
    try:
        check_storage_grid(src.grid, grid)
    except ValueError as e:
        raise ValueError(f"--storage-grid for the {src.grid[0]}x{src.grid[1]} store {src.path}: {e}") from None
    codec = codec or src.codec
    manifest = _copy_manifest(src_root, dst_root, src.manifest_hash)
    dst = create_teacher_store(dst_path, spec=src.spec, weights_identity=src.weights_identity, manifest=manifest,
                               shard_size=src.shard_size, storage_grid=grid, codec=codec)
    _record_provenance(dst, provenance(src))
    skipped = [int(k) for k in dst.completed_shards()]
    pending = [int(k) for k in dst.pending_shards()]
    if pending:
        _run_tasks(src, dst, pending, scheduler=scheduler, workers=workers)
        dst.fold_stats()  # fold what the tasks left unfolded (every shard, on object stores)
    src_bytes, _ = storage_footprint(src)
    dst_bytes, bits = storage_footprint(dst)
    return TranscodeReport(teacher, src.path, dst.path, pending, skipped, grid, codec, time.perf_counter() - t0,
                           scheduler if pending else "nothing to do", src_bytes, dst_bytes, bits)


def _copy_manifest(src_root: Path, dst_root: Path, expect_hash: str):
    """The source's manifest at dst_root (copied byte for byte when absent), checked against the store."""
    src_m, dst_m = layout.manifest_path(src_root), layout.manifest_path(dst_root)
    if not location.is_file(dst_m):
        location.write_bytes(dst_m, location.read_bytes(src_m))  # byte for byte: the same hash
    manifest = read_manifest(dst_m)
    if manifest.hash != expect_hash:
        raise StoreMismatchError(dst_m, "manifest_hash", expected=expect_hash, found=manifest.hash)
    return manifest


def _record_provenance(dst: TeacherStore, prov: dict[str, Any]) -> None:
    """Write the source fingerprint into a new destination, or check it on a resumed one."""
    found = dst.attrs.get(layout.TRANSCODED_FROM_ATTR)
    if found is None:
        if len(dst.completed_shards()):
            raise StoreMismatchError(dst.path, layout.TRANSCODED_FROM_ATTR, expected=prov["store"],
                                     found="absent (a store with shards written by something else)")
        dst.group.update_attributes({layout.TRANSCODED_FROM_ATTR: prov})
        dst.attrs[layout.TRANSCODED_FROM_ATTR] = prov
    elif found["fingerprint"] != prov["fingerprint"]:
        raise StoreMismatchError(dst.path, f"{layout.TRANSCODED_FROM_ATTR}.fingerprint of source {prov['store']}",
                                 expected=found["fingerprint"], found=prov["fingerprint"])


def _run_tasks(src: TeacherStore, dst: TeacherStore, pending: list[int], *, scheduler: str, workers: int) -> None:
    """One dask task per pending shard, over dask arrays whose blocks are the source's zarr shards."""
    import dask
    import dask.array as da

    def as_dask(arr):
        return da.from_zarr(arr, chunks=arr.shards or arr.chunks)  # one block (task) per shard

    patches, valid = as_dask(src.patches), as_dask(src.valid)
    summary = as_dask(src.summary) if src.summary is not None else None
    assert patches.numblocks[0] == src.num_shards and valid.numblocks[0] == src.num_shards
    task = dask.delayed(transcode_shard, pure=False)
    tasks = [task(str(dst.path), k, None if summary is None else summary.blocks[k], patches.blocks[k],
                  valid.blocks[k]) for k in pending]
    if scheduler == "ray":
        from ray.util.dask import ray_dask_get

        dask.compute(*tasks, scheduler=ray_dask_get)
    else:
        dask.compute(*tasks, scheduler="threads" if scheduler == "threads" else "sync", num_workers=workers)


def transcode_shard(dst_path: str, k: int, summary_SVC: np.ndarray | None, patches_SVhwC: np.ndarray,
                    valid_SV: np.ndarray) -> int:
    """Write destination shard k from the source shard's values (one dask task): pool, write the whole
    shard, read it back, write its moments of the values as stored, mark it complete. Returns k."""
    import torch

    from stages.extract.pooling import pool_patches

    dst = open_teacher_store(location.as_location(dst_path), mode="r+")
    summary_SVC = None if summary_SVC is None else decode_from_store(summary_SVC)  # bf16 bits -> float32
    patches_SVhwC = decode_from_store(patches_SVhwC)
    S, V = valid_SV.shape
    if tuple(patches_SVhwC.shape[2:4]) != dst.grid:
        flat = torch.from_numpy(np.ascontiguousarray(patches_SVhwC, np.float32)).reshape(S * V, *patches_SVhwC.shape[2:])
        patches_SVhwC = pool_patches(flat, dst.grid).reshape(S, V, *dst.grid, dst.patch_dim).numpy()
    patches_SVhwC = np.where(valid_SV[:, :, None, None, None], patches_SVhwC, 0.0).astype(np.float32)
    dst.write_shard(k, summary_SVC=summary_SVC, patches_SVhwC=patches_SVhwC, valid_SV=valid_SV)
    stored_summary, stored_patches, stored_valid = dst.read_shard(k)  # statistics of the values as stored
    lo, hi = dst.shard_range(k)
    split_S = dst.image_split()[lo:hi]
    for p, split in enumerate(layout.STATS_SPLITS):  # one partial per split, as stage one writes them
        in_split_SV = stored_valid & (split_S == p)[:, None]
        for kind, m in shard_moments(stored_summary, stored_patches, in_split_SV,
                                     dst.content_mask(np.arange(lo, hi))).items():
            dst.write_shard_stats(k, kind, m, split=split)
    dst.mark_complete(k)
    return k


def shard_moments(summary_SVC: np.ndarray | None, patches_SVhwC: np.ndarray,
                  valid_SV: np.ndarray, content_SVhw: np.ndarray | None = None) -> dict[str, Moments]:
    """float64 moments of the valid views of one shard, per token kind (patches in bounded blocks);
    content_SVhw (a padded teacher's content tokens, TeacherStore.content_mask): padded tokens not counted."""
    rows, views = np.nonzero(valid_SV)
    C = patches_SVhwC.shape[-1]
    per_view = int(np.prod(patches_SVhwC.shape[2:]))
    block = max(1, STATS_BLOCK_VALUES // max(per_view, 1))
    patches = Moments.empty(C)
    for a in range(0, len(rows), block):
        r, v = rows[a:a + block], views[a:a + block]
        x = patches_SVhwC[r, v] if content_SVhw is None else patches_SVhwC[r, v][content_SVhw[r, v]]
        patches = patches.merge(Moments.from_batch(x.reshape(-1, C)))
    out = {"patches": patches}
    if summary_SVC is not None:
        out["summary"] = Moments.from_batch(summary_SVC[valid_SV])
    return out
