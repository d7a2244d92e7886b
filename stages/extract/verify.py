"""Integrity check of a teacher store: corrupted bytes, completion state vs data, statistics vs data.

The feature store of agglomerative distillation (AM-RADIO arXiv 2312.06709; statistics for PHI-S, arXiv
2410.01680) is read by every training run, so damage must be found before training, with the image ids it
affects. Every chunk ends in a crc32c checksum (the sharding index too), so a flipped byte fails on read;
a shard whose file vanished reads as fill values, which the stored statistics' counts expose.

Checks per shard k:
- complete: the shard reads back (else the damaged images are found by reading image by image); its
  stored statistics' counts match its valid views; with `recompute_stats` its stored mean and M2 match the
  moments recomputed from the data (rtol 1e-9).
- not complete: its images are "missing" (a re-run of extract writes them); not damage, but a store with
  missing images is not `complete`, which is what training needs (`pipeline store verify` exits non-zero
  unless told the store is still being filled).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stages.stats import Moments
from store_schema.errors import StoreCorruptionError
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


@dataclass
class VerifyReport:
    """Verdicts of every shard of one store.

    `ok`: no image is damaged (missing images allowed: a store still being filled is ok). `complete`: ok
    and no image is missing (every shard complete), what a training run needs."""

    teacher: str
    path: str
    shards: list[ShardCheck]

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
        return not any(s.status == "damaged" for s in self.shards)

    @property
    def complete(self) -> bool:
        return self.ok and not self.missing_shards

    def format(self) -> str:
        bad = [s for s in self.shards if s.status == "damaged"]
        lines = [f"{self.teacher} ({self.path}): {len(self.shards) - len(bad) - len(self.missing_shards)} ok, "
                 f"{len(bad)} damaged, {len(self.missing_shards)} incomplete of {len(self.shards)} shards"]
        for s in bad:
            lines.append(f"  shard {s.shard} DAMAGED images {s.damaged_ids}: {'; '.join(s.problems)}")
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


def _stats_problems(store: TeacherStore, k: int, data: tuple, recompute: bool) -> list[str]:
    """Compare shard k's stored statistics with its data; returns descriptions of each mismatch."""
    summary_SVC, patches_SVhwC, valid_SV = data
    h, w = store.grid
    problems = []
    tokens = {"summary": None if summary_SVC is None else summary_SVC[valid_SV],
              "patches": patches_SVhwC[valid_SV].reshape(-1, store.patch_dim)}
    expected_count = {"summary": int(valid_SV.sum()), "patches": int(valid_SV.sum()) * h * w}
    for kind in store.kinds:
        stored = store.shard_stats(k, kind)
        if stored.count != expected_count[kind]:
            problems.append(f"{kind} stats count {stored.count} != {expected_count[kind]} from valid views")
            continue
        if recompute and stored.count and not _moments_close(stored, Moments.from_batch(tokens[kind])):
            problems.append(f"{kind} stats differ from the stored data")
    return problems


def verify_store(store: TeacherStore, *, recompute_stats: bool = True) -> VerifyReport:
    """Read every shard of `store` and check it against its completion flag and statistics."""
    checks = []
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
        try:
            problems = _stats_problems(store, k, data, recompute_stats)
        except _READ_ERRORS as e:
            problems = [f"stats unreadable: {e}"]
        if problems:  # data read fine but disagrees with its statistics: the whole shard is suspect
            checks.append(ShardCheck(k, "damaged", list(range(lo, hi)), problems))
        else:
            checks.append(ShardCheck(k, "ok"))
    return VerifyReport(store.spec.name, str(store.path), checks)
