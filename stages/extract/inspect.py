"""What a teacher store holds: progress, footprint and the statistics PHI-S normalizers are fitted from.

PHI-S (arXiv 2410.01680) motivates normalization by how far teachers' scales are apart (global std of DFN
CLIP 0.029 vs SAM-H 5.47) and by their low rank (its Table 6: RankMe, SAM-H 776 of 1280); `store_info`
reports both from the store's merged float64 moments, without reading feature data.

Definitions used here:
- global std: the std of all values of all tokens and channels around ONE scalar mean (the
  `global_std` variant's σ_g): σ_g² = trace(Σ)/C + mean_c (μ_c − μ̄)².
- per-channel std: sqrt(diag Σ), reported as min / max over channels.
- RankMe (Garrido et al. 2023, the paper's rank measure): exp(entropy of the normalized singular values of
  the N × C token matrix as stored), exact from the moments (``stages.rankme``: σ_i = √(N λ_i) of the
  uncentred second moment Σ + μμᵀ).
- eigenvalue entropy rank: exp(entropy of the normalized covariance eigenvalues p_i = λ_i / Σλ) (Roy &
  Vetterli 2007; printed as "effective rank" before, a different and much smaller number than RankMe);
  participation ratio (Σλ)² / Σλ² is reported alongside.

Shape legend: C channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.rankme import eigen_entropy_rank, rankme_from_moments
from store_schema.teacher_store import TeacherStore


@dataclass(frozen=True)
class KindStats:
    """Summary statistics of one token kind, from the merged moments of the complete shards."""

    kind: str
    count: int  # tokens
    dim: int
    global_std: float
    channel_std_min: float
    channel_std_max: float
    rankme: float  # RankMe (Garrido et al. 2023) of the stored token matrix
    eigen_entropy_rank: float  # exp(entropy of normalized covariance eigenvalues): not RankMe
    participation_ratio: float  # (Σλ)² / Σλ²


@dataclass(frozen=True)
class StoreInfo:
    """Progress, shapes, footprint and statistics of one teacher store."""

    teacher: str
    path: str
    num_images: int
    num_views: int
    valid_views: int
    shards_complete: int
    num_shards: int
    grid: tuple[int, int]
    summary_dim: int
    resolution: int  # the teacher's input side for this store (its spec's; <teacher>@<side> stores differ)
    patch_dim: int
    codec: dict
    bytes_on_disk: int
    bits_per_value: float
    kinds: tuple[KindStats, ...]
    resize: str = "squash"  # the teacher's resize rule (stages/teachers/resize.py)
    batch_backoffs: tuple[dict, ...] = ()  # out-of-memory back-offs of its extraction


def storage_footprint(store: TeacherStore) -> tuple[int, float]:
    """(bytes of the whole store folder on disk, stored bits per feature value over the written images).

    Bits per value counts the summary and patch arrays only (their stored bytes over the number of values
    in complete shards); NaN before any shard is complete."""
    from store_schema.location import size_of_tree

    bytes_on_disk = size_of_tree(store.path)
    arrays = [a for a in (store.summary, store.patches) if a is not None]
    stored = sum(int(a.nbytes_stored()) for a in arrays)
    images = sum(store.shard_range(int(k))[1] - store.shard_range(int(k))[0] for k in store.completed_shards())
    h, w = store.grid
    values = images * store.num_views * (store.summary_dim + h * w * store.patch_dim)
    return bytes_on_disk, (8.0 * stored / values if values else float("nan"))


def kind_stats(store: TeacherStore, kind: str) -> KindStats:
    """Statistics of one token kind over the complete shards (see the module docstring for definitions)."""
    m = store.stats(kind)
    if m.count == 0:
        nan = float("nan")
        return KindStats(kind, 0, m.dim, nan, nan, nan, nan, nan, nan)
    cov_CC = m.covariance()
    var_C = np.clip(np.diag(cov_CC), 0.0, None)
    global_var = float(var_C.mean() + np.mean((m.mean_D - m.mean_D.mean()) ** 2))
    eig_C = np.clip(np.linalg.eigvalsh(cov_CC), 0.0, None)
    total = float(eig_C.sum())
    pr = total**2 / float((eig_C**2).sum()) if total > 0 else 0.0
    return KindStats(kind, m.count, m.dim, float(np.sqrt(global_var)), float(np.sqrt(var_C.min())),
                     float(np.sqrt(var_C.max())), rankme_from_moments(m), eigen_entropy_rank(eig_C), pr)


def store_info(store: TeacherStore) -> StoreInfo:
    """Everything `pipeline store info` prints for one store."""
    bytes_on_disk, bits = storage_footprint(store)
    return StoreInfo(
        teacher=store.key, path=str(store.path), num_images=store.num_images,
        num_views=store.num_views, valid_views=int(np.asarray(store.valid[:]).sum()),
        shards_complete=len(store.completed_shards()), num_shards=store.num_shards, grid=store.grid,
        summary_dim=store.summary_dim, resolution=store.spec.resolution, patch_dim=store.patch_dim,
        codec=store.codec.to_dict(),
        bytes_on_disk=bytes_on_disk, bits_per_value=bits,
        kinds=tuple(kind_stats(store, kind) for kind in store.kinds),
        resize=store.spec.resize.value, batch_backoffs=tuple(store.batch_backoffs),
    )


def format_info(info: StoreInfo) -> str:
    """Human-readable multi-line report of a StoreInfo."""
    h, w = info.grid
    lines = [
        f"{info.teacher}  ({info.path})",
        f"  teacher input {info.resolution} px; stored grid {h}x{w}",
        f"  images {info.num_images} x views {info.num_views}; valid views {info.valid_views}; "
        f"shards {info.shards_complete}/{info.num_shards} complete",
        f"  summary {[info.num_images, info.num_views, info.summary_dim] if info.summary_dim else 'none'}; "
        f"patches {[info.num_images, info.num_views, h, w, info.patch_dim]}",
        f"  on disk {info.bytes_on_disk / 2**20:.2f} MiB; "
        + (f"{info.bits_per_value:.2f} bits/value" if np.isfinite(info.bits_per_value)
           else "bits/value: none yet (no complete shard)") + f"; codec {info.codec}",
        f"  resize {info.resize}" + ("" if info.resize == "squash" else
                                     " (each view's teacher frame in `frames`; padded tokens are not counted)"),
    ]
    if info.batch_backoffs:
        steps = ", ".join(f"shard {b['shard']}: {b['from']} -> {b['to']}" for b in info.batch_backoffs[:5])
        more = f", ... {len(info.batch_backoffs) - 5} more" if len(info.batch_backoffs) > 5 else ""
        lines.append(f"  out-of-memory back-offs {len(info.batch_backoffs)} ({steps}{more})")
    for k in info.kinds:
        if k.count == 0:
            lines.append(f"  {k.kind:8s} tokens 0: no statistics yet (no complete shard with valid views)")
            continue
        lines.append(
            f"  {k.kind:8s} tokens {k.count}: global std {k.global_std:.4g}; channel std "
            f"[{k.channel_std_min:.4g}, {k.channel_std_max:.4g}]; RankMe {k.rankme:.1f} / {k.dim}; "
            f"eigenvalue entropy rank {k.eigen_entropy_rank:.1f}; participation ratio {k.participation_ratio:.1f}"
        )
    return "\n".join(lines)
