"""Integrity check of a teacher store: corrupted bytes, completion state vs data, statistics vs data.

The feature store of agglomerative distillation (AM-RADIO arXiv 2312.06709; statistics for PHI-S, arXiv
2410.01680) is read by every training run, so damage must be found before training, with the image ids it
affects. Every chunk ends in a crc32c checksum (the sharding index too), so a flipped byte fails on read;
a shard whose file vanished reads as fill values, which the stored statistics' counts expose.

Checks per shard k:
- complete: the shard reads back (else the damaged images are found by reading image by image); its
  stored statistics' counts (kept per shard and split) match its valid views; with `recompute_stats`,
  while its partial is not yet folded into the store's totals, its stored mean and M2 match the moments
  recomputed from the data (rtol 1e-9).
- not complete: its images are "missing" (a re-run of extract writes them); not damage, but a store with
  missing images is not `complete`, which is what training needs (`pipeline store verify` exits non-zero
  unless told the store is still being filled).
With `recompute_stats`, the store's merged statistics per split are also recomputed from the data,
streaming shard by shard in the store's own merge order (O(C²) memory), and must match (rtol 1e-9); a
mismatch there is reported for the store as a whole (folded totals no longer say which shard).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stages.stats import Moments
from store_schema.errors import StoreCorruptionError
from store_schema.layout import STATS_SPLITS
from store_schema.stats_ledger import sketch
from store_schema.teacher_store import TeacherStore

_READ_ERRORS = (StoreCorruptionError, ValueError, RuntimeError, OSError)


@dataclass
class ShardCheck:
    """Verdict on one shard: status is "ok", "damaged" or "incomplete" (its images are then `missing_ids`)."""

    shard: int
    status: str
    damaged_ids: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing_ids: list[int] = field(default_factory=list)


def manifest_problem(store: TeacherStore, root) -> str | None:
    """Why `store` does not belong to the manifest at `root` (None when it does): the store records the hash
    of the manifest it was built from, and a store copied into another corpus's root must not pass."""
    from store_schema.errors import StoreNotFoundError
    from store_schema.layout import manifest_path
    from store_schema.manifest import manifest_hash

    try:
        found = manifest_hash(manifest_path(root))
    except StoreNotFoundError:
        return (f"no manifest.parquet at {root}: the store was built from manifest {store.manifest_hash[:12]}..., "
                "which is not there; restore it (`pipeline corpus` with the store's corpus and options)")
    if found == store.manifest_hash:
        return None
    return (f"built from manifest {store.manifest_hash[:12]}... but {manifest_path(root)} is {found[:12]}... (another "
            "corpus, or a manifest rebuilt with other options): its image ids do not match this root's images. "
            "Move the store to the root of its own manifest, restore that manifest, or re-extract into this root")


@dataclass
class VerifyReport:
    """Verdicts of every shard of one store.

    `ok`: no image is damaged (missing images allowed: a store still being filled is ok). `complete`: ok
    and no image is missing (every shard complete), what a training run needs."""

    teacher: str
    path: str
    shards: list[ShardCheck]
    stats_problems: list[str] = field(default_factory=list)  # store-level: merged statistics vs data
    manifest_problem: str | None = None  # the root's manifest is not the store's (see `manifest_problem`)

    @property
    def damaged_ids(self) -> list[int]:
        return sorted(i for s in self.shards for i in s.damaged_ids)

    @property
    def missing_shards(self) -> list[int]:
        return [s.shard for s in self.shards if s.status == "incomplete"]

    @property
    def missing_ids(self) -> list[int]:
        """Image ids whose data is not in the store yet (their shard is not complete)."""
        return sorted(i for s in self.shards for i in s.missing_ids)

    @property
    def ok(self) -> bool:
        return (not any(s.status == "damaged" for s in self.shards) and not self.stats_problems
                and self.manifest_problem is None)

    @property
    def complete(self) -> bool:
        return self.ok and not self.missing_shards

    def format(self) -> str:
        bad = [s for s in self.shards if s.status == "damaged"]
        lines = [f"{self.teacher} ({self.path}): {len(self.shards) - len(bad) - len(self.missing_shards)} ok, "
                 f"{len(bad)} damaged, {len(self.missing_shards)} incomplete of {len(self.shards)} shards"]
        for s in bad:
            lines.append(f"  shard {s.shard} DAMAGED images {s.damaged_ids}: {'; '.join(s.problems)}")
        if bad:
            lines.append(f"  repair: pipeline extract --teacher {self.teacher} --root ROOT --redo-shards "
                         f"{','.join(str(s.shard) for s in bad)} (or `pipeline store verify --repair`)")
        for p in self.stats_problems:
            lines.append(f"  STATISTICS DAMAGED: {p}")
        if self.manifest_problem is not None:
            lines.append(f"  WRONG MANIFEST: {self.manifest_problem}")
        if self.missing_shards:
            lines.append(f"  MISSING {len(self.missing_ids)} images {format_id_ranges(self.missing_ids)} "
                         f"(incomplete shards {self.missing_shards}; re-run extract to write them)")
        return "\n".join(lines)


def format_id_ranges(ids: list[int]) -> str:
    """Sorted image ids as compact inclusive ranges: [0, 1, 2, 3, 8, 10, 11] -> "0-3, 8, 10-11"."""
    parts, start = [], None
    for a, b in zip(ids, [*ids[1:], None]):
        start = a if start is None else start
        if b != a + 1:
            parts.append(str(a) if start == a else f"{start}-{a}")
            start = None
    return ", ".join(parts)


def _damaged_images(store: TeacherStore, lo: int, hi: int) -> list[int]:
    """Image ids in [lo, hi) whose data fails to read (checksum or decode errors)."""
    bad = []
    for i in range(lo, hi):
        try:
            store.read_images(np.array([i]))
        except _READ_ERRORS:
            bad.append(i)
    return bad


def _moments_close(a: Moments, b: Moments, rtol: float = 1e-9) -> bool:
    """Equal up to rtol, relative to b's scale (a mean is compared on the scale of its std too)."""
    std_scale = float(np.sqrt(np.abs(np.diag(b.m2_DD)).max() / b.count))
    mean_scale = max(float(np.abs(b.mean_D).max()), std_scale, 1e-300)
    m2_scale = max(float(np.abs(b.m2_DD).max()), 1e-300)
    return (a.count == b.count and float(np.abs(a.mean_D - b.mean_D).max()) <= rtol * mean_scale
            and float(np.abs(a.m2_DD - b.m2_DD).max()) <= rtol * m2_scale)


def _sketch_close(stored: tuple[float, float], m: Moments, rtol: float = 1e-9) -> bool:
    """A folded shard's kept (sum of mean, trace of M2) against its data's moments."""
    mean_sum, trace = sketch(m)
    spread = float(np.sqrt(max(trace, 0.0) / m.count * m.dim))
    return (abs(stored[0] - mean_sum) <= rtol * max(abs(mean_sum), spread, 1e-300)
            and abs(stored[1] - trace) <= rtol * max(abs(trace), 1e-300))


def _shard_tokens(store: TeacherStore, k: int, data: tuple, split_N: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """(kind, split) -> the valid stored tokens of shard k, as the statistics count them."""
    summary_SVC, patches_SVhwC, valid_SV = data
    lo, hi = store.shard_range(k)
    content_SVhw = store.content_mask(np.arange(lo, hi))  # padded tokens are never counted
    out = {}
    for p, split in enumerate(STATS_SPLITS):
        keep_SV = valid_SV & (split_N[lo:hi] == p)[:, None]
        if content_SVhw is None:
            out[("patches", split)] = patches_SVhwC[keep_SV].reshape(-1, store.patch_dim)
        else:
            out[("patches", split)] = patches_SVhwC[keep_SV[:, :, None, None] & content_SVhw]
        if summary_SVC is not None:
            out[("summary", split)] = summary_SVC[keep_SV]
    return out


def _stats_problems(store: TeacherStore, k: int, tokens: dict, recompute: bool, folded: int) -> list[str]:
    """Compare shard k's stored statistics with its data; returns descriptions of each mismatch."""
    problems = []
    for (kind, split), x in tokens.items():
        count = store.shard_count(k, kind, split)
        if count != x.shape[0]:
            problems.append(f"{kind} {split} stats count {count} != {x.shape[0]} from valid views")
            continue
        if recompute and count:
            m = Moments.from_batch(x)
            if k >= folded and not _moments_close(store.shard_stats(k, kind, split), m):
                problems.append(f"{kind} {split} stats differ from the stored data")
            elif not _sketch_close(store.ledger.shard_sketch(k, kind, split), m):
                problems.append(f"{kind} {split} stats sketch differs from the stored data")
    return problems


def verify_store(store: TeacherStore, *, recompute_stats: bool = True, root=None) -> VerifyReport:
    """Read every shard of `store` and check it against its completion flag and statistics; with `root`,
    also that root's manifest is the one the store was built from."""
    checks = []
    split_N = store.image_split()
    folded = store.ledger.folded()[0]
    recomputed: dict[tuple[str, str], Moments] = {}  # streamed in the store's merge order (shard order)
    for k in range(store.num_shards):
        lo, hi = store.shard_range(k)
        try:
            complete = store.is_complete(k)
        except _READ_ERRORS as e:
            checks.append(ShardCheck(k, "damaged", list(range(lo, hi)), [f"complete flag unreadable: {e}"]))
            continue
        if not complete:
            checks.append(ShardCheck(k, "incomplete", missing_ids=list(range(lo, hi))))
            continue
        try:
            data = store.read_shard(k)
        except _READ_ERRORS as e:
            ids = _damaged_images(store, lo, hi) or list(range(lo, hi))
            checks.append(ShardCheck(k, "damaged", ids, [f"unreadable: {e}"]))
            continue
        tokens = _shard_tokens(store, k, data, split_N)
        if recompute_stats:
            for key, x in tokens.items():
                m = Moments.from_batch(x)
                recomputed[key] = recomputed[key].merge(m) if key in recomputed else m
        try:
            problems = _stats_problems(store, k, tokens, recompute_stats, folded)
        except _READ_ERRORS as e:
            problems = [f"stats unreadable: {e}"]
        if problems:  # data read fine but disagrees with its statistics: the whole shard is suspect
            checks.append(ShardCheck(k, "damaged", list(range(lo, hi)), problems))
        else:
            checks.append(ShardCheck(k, "ok"))
    report = VerifyReport(store.key, str(store.path), checks,
                          manifest_problem=None if root is None else manifest_problem(store, root))
    if recompute_stats and not any(c.status == "damaged" for c in checks):
        for (kind, split), m in recomputed.items():
            try:
                stored = store.stats(kind, split)
            except _READ_ERRORS as e:
                report.stats_problems.append(f"{kind} {split} statistics unreadable: {e}")
                continue
            if m.count and not _moments_close(stored, m):
                report.stats_problems.append(f"{kind} {split} merged statistics differ from the stored data "
                                             "(re-extract into a fresh store)")
    return report
