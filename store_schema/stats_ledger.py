"""Bounded, resumable statistics of one teacher store: per-shard partials folded into running totals.

PHI-S (arXiv 2410.01680) fits every normalizer from the float64 mean and covariance of a teacher's
outputs; stage one computes them per shard (Chan et al. 1979 partials, `stages.stats.Moments`). Keeping a
C x C partial per shard does not scale (DINOv2-g: 37.7 MB per shard, ~147 GB at a million images), so
the store keeps partials only until they can be *folded*: totals(F) is the sequential merge of the
partials of shards 0, 1, ..., F-1, in shard order, and shard F is folded once it and every shard before
it are complete. Because `Moments.merge` is applied in the same order whatever the timing, the totals of
a store are a fixed function of its set of complete shards: a killed and resumed run's statistics are
bit-identical to an uninterrupted run's, and equal to merging every shard's partial in shard order.

Statistics are kept per split of the manifest ("train", "val"; a normalizer fitted on "train" never
sees the held-out images) and merged train-then-val for "all".

Crash safety (the completion protocol of docs/ARCHITECTURE.md): a shard's partials are written before
its complete flag; a fold writes the new totals into the slot that is not live, then flips
`stats/folded` = (F, slot) in one chunk write, then clears the folded partials. A kill at any point
leaves either the old or the new totals live, and partials that are still needed are never cleared first.

Disk: at most (fold_every + shards completed out of order) partials plus two total slots; memory: one
partial and one total at a time.

Shape legend: K shards, P splits, C channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from stages.stats import Moments
from store_schema import layout

FOLD_LOCK = ".fold.lock"  # in <store>/stats/ of a local store
DEFAULT_FOLD_EVERY = 16  # shards: partials kept on disk at most ~ this many (plus out-of-order ones)
_EXACT = dict(compressors=[Crc32cCodec()])  # float64 moments do not compress; checksum only


def create_stats_arrays(group: zarr.Group, dims: dict[str, int], num_shards: int) -> None:
    """Create the statistics arrays of a new store for token kinds `dims` (kind -> channels, > 0)."""
    P = len(layout.STATS_SPLITS)
    for kind, C in dims.items():
        for level, K in (("shard", num_shards), ("total", 2)):
            group.create_array(layout.stats_array(kind, "count", level), shape=(K, P), chunks=(1, P),
                               dtype="int64", fill_value=0, dimension_names=(level, "split"), **_EXACT)
            group.create_array(layout.stats_array(kind, "mean", level), shape=(K, P, C), chunks=(1, 1, C),
                               dtype="float64", fill_value=0.0, dimension_names=(level, "split", "channel"),
                               **_EXACT)
            group.create_array(layout.stats_array(kind, "m2", level), shape=(K, P, C, C),
                               chunks=(1, 1, C, C), dtype="float64", fill_value=0.0,
                               dimension_names=(level, "split", "channel", "channel_t"), **_EXACT)
        group.create_array(layout.stats_array(kind, "sketch", "shard"), shape=(num_shards, P, 2), chunks=(1, P, 2),
                           dtype="float64", fill_value=0.0, dimension_names=("shard", "split", "field"), **_EXACT)
    group.create_array(layout.STATS_FOLDED, shape=(2,), chunks=(2,), dtype="int64", fill_value=0,
                       dimension_names=("field",), **_EXACT)


def expected_stats_arrays(dims: dict[str, int], num_shards: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every statistics array, for validation."""
    P = len(layout.STATS_SPLITS)
    out: dict[str, tuple[tuple[int, ...], str]] = {layout.STATS_FOLDED: ((2,), "int64")}
    for kind, C in dims.items():
        for level, K in (("shard", num_shards), ("total", 2)):
            out[layout.stats_array(kind, "count", level)] = ((K, P), "int64")
            out[layout.stats_array(kind, "mean", level)] = ((K, P, C), "float64")
            out[layout.stats_array(kind, "m2", level)] = ((K, P, C, C), "float64")
        out[layout.stats_array(kind, "sketch", "shard")] = ((num_shards, P, 2), "float64")
    return out


def sketch(m: Moments) -> tuple[float, float]:
    """What is kept of a shard's partial after folding: (sum of its mean vector, trace of its M2)."""
    return float(m.mean_D.sum()), float(np.trace(m.m2_DD))


def _split_index(split: str) -> int:
    if split not in layout.STATS_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(layout.STATS_SPLITS)}")
    return layout.STATS_SPLITS.index(split)


class StatsLedger:
    """The statistics arrays of one store: write partials, fold them, read merged totals (streaming)."""

    def __init__(self, group: zarr.Group, path: Any, dims: dict[str, int], num_shards: int,
                 fold_every: int) -> None:
        if fold_every < 1:
            raise ValueError(f"stats_fold_every must be >= 1, got {fold_every}")
        self.group, self.path, self.dims = group, path, dict(dims)
        self.num_shards, self.fold_every = num_shards, fold_every
        self._totals: tuple[tuple[int, int], dict[tuple[str, str], Moments]] | None = None

    # ---- reading ------------------------------------------------------------------------------------
    def folded(self) -> tuple[int, int]:
        """(F, slot): shards 0..F-1 are folded into total slot `slot`."""
        f, slot = (int(x) for x in np.asarray(self.group[layout.STATS_FOLDED][:]))
        return f, slot

    def _read(self, kind: str, level: str, row: int, split: str) -> Moments:
        p = _split_index(split)
        count = int(self.group[layout.stats_array(kind, "count", level)][row, p])
        if count == 0:
            C = self.dims[kind]
            return Moments.empty(C)
        return Moments(count, np.asarray(self.group[layout.stats_array(kind, "mean", level)][row, p], np.float64),
                       np.asarray(self.group[layout.stats_array(kind, "m2", level)][row, p], np.float64))

    def shard_count(self, k: int, kind: str, split: str) -> int:
        """Token count of shard k's partial (kept after folding, for verification)."""
        return int(self.group[layout.stats_array(kind, "count", "shard")][k, _split_index(split)])

    def shard_sketch(self, k: int, kind: str, split: str) -> tuple[float, float]:
        """(sum of the mean vector, trace of M2) of shard k's partial (kept after folding)."""
        s = np.asarray(self.group[layout.stats_array(kind, "sketch", "shard")][k, _split_index(split)])
        return float(s[0]), float(s[1])

    def shard(self, k: int, kind: str, split: str) -> Moments:
        """Shard k's partial; only while it is not folded into the totals."""
        f, _ = self.folded()
        if k < f:
            raise ValueError(f"{self.path}: the statistics of shard {k} are folded into the store's totals "
                             f"(shards 0..{f - 1}); per-shard statistics exist only for shards >= {f}")
        return self._read(kind, "shard", k, split)

    def total(self, kind: str, split: str) -> Moments:
        """The live folded total of one kind and split (shards 0..F-1)."""
        (f, slot), totals = self._live_totals()
        return totals[(kind, split)]

    def _live_totals(self) -> tuple[tuple[int, int], dict[tuple[str, str], Moments]]:
        state = self.folded()
        if self._totals is None or self._totals[0] != state:
            f, slot = state
            totals = {(kind, split): (self._read(kind, "total", slot, split) if f else Moments.empty(C))
                      for kind, C in self.dims.items() for split in layout.STATS_SPLITS}
            self._totals = (state, totals)
        return self._totals

    def merged(self, kind: str, split: str, complete_K: np.ndarray) -> Moments:
        """Totals of shards 0..F-1, then each complete shard >= F merged in shard order (O(C²) memory).

        The same sequence of merges as folding them would do, so folding never changes the result."""
        f, slot = self.folded()
        m = self._read(kind, "total", slot, split) if f else Moments.empty(self.dims[kind])
        for k in np.flatnonzero(complete_K[f:]) + f:
            m = m.merge(self.shard(int(k), kind, split))
        return m

    def parts(self, kind: str, split: str, complete_K: np.ndarray) -> Iterator[Moments]:
        """The pieces `merged` merges, in order (for streaming consumers)."""
        f, slot = self.folded()
        yield self._read(kind, "total", slot, split) if f else Moments.empty(self.dims[kind])
        for k in np.flatnonzero(complete_K[f:]) + f:
            yield self.shard(int(k), kind, split)

    # ---- writing ------------------------------------------------------------------------------------
    def write_shard(self, k: int, kind: str, split: str, m: Moments) -> None:
        """Store shard k's partial of one kind and split (before its complete flag)."""
        f, _ = self.folded()
        if k < f:
            raise ValueError(f"{self.path}: shard {k} is already folded into the store's statistics "
                             f"(shards 0..{f - 1}); a folded shard is redone only through `pipeline extract "
                             f"--redo-shards {k}`, which unfolds the statistics first")
        p = _split_index(split)
        self.group[layout.stats_array(kind, "mean", "shard")][k, p] = m.mean_D
        self.group[layout.stats_array(kind, "m2", "shard")][k, p] = m.m2_DD
        sketches = self.group[layout.stats_array(kind, "sketch", "shard")]
        srow = np.asarray(sketches[k])
        srow[p] = sketch(m)
        sketches[k] = srow
        counts = self.group[layout.stats_array(kind, "count", "shard")]
        row = np.asarray(counts[k])
        row[p] = m.count
        counts[k] = row

    def fold(self, complete_K: np.ndarray, *, force: bool = False) -> int:
        """Fold the complete prefix of shards into the totals; returns F after the fold.

        Folds when at least `fold_every` shards are ready, when every shard is complete, or when
        `force` (end of a run) - so a store's partials stay bounded while writes stay rare. Writers in
        several threads or processes (dask transcode tasks) take turns on a lock file next to the
        statistics of a local store; on an object store (no locks) only a forced fold by the single
        driver folds."""
        if not isinstance(self.path, Path):
            return self._fold(complete_K, force=force) if force else self.folded()[0]
        import fcntl

        lock = self.path / "stats" / FOLD_LOCK
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                return self._fold(complete_K, force=force)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _fold(self, complete_K: np.ndarray, *, force: bool) -> int:
        f, slot = self.folded()
        end = f
        while end < self.num_shards and complete_K[end]:
            end += 1
        if end == f or not (force or end - f >= self.fold_every or end == self.num_shards):
            return f
        _, totals = self._live_totals()
        totals = dict(totals)
        for kind in self.dims:
            for split in layout.STATS_SPLITS:
                m = totals[(kind, split)]
                for k in range(f, end):
                    m = m.merge(self.shard(k, kind, split))
                totals[(kind, split)] = m
        new = 1 - slot
        for (kind, split), m in totals.items():
            self._write_row(kind, "total", new, split, m)
        self.group[layout.STATS_FOLDED][:] = np.array([end, new], np.int64)  # the commit point
        self._totals = ((end, new), totals)
        P = len(layout.STATS_SPLITS)
        zero = {kind: (np.zeros((P, C)), np.zeros((C, C))) for kind, C in self.dims.items()}
        for k in range(f, end):  # clear the folded partials (zarr deletes chunks equal to the fill value)
            for kind in self.dims:
                self.group[layout.stats_array(kind, "mean", "shard")][k] = zero[kind][0]
                for p in range(len(layout.STATS_SPLITS)):
                    self.group[layout.stats_array(kind, "m2", "shard")][k, p] = zero[kind][1]
        return end

    def unfold(self, partial_of) -> int:
        """Undo the folding: give every folded shard its partial back and empty the totals (F = 0), so that
        folded shards can be redone. `partial_of(k)` returns {(kind, split): Moments} for shard k < F
        (recomputed by the caller, e.g. from the stored values), or None for a shard the caller has marked
        not complete (it is being redone); each count must equal the one kept for that shard, else
        ValueError (the data no longer matches its statistics). Returns the former F.

        Crash safety: the partials are written into rows that folded totals make unused, and the flip of
        `stats/folded` to (0, slot) is the commit point; a kill before it leaves the old totals live."""
        if not isinstance(self.path, Path):
            return self._unfold(partial_of)
        import fcntl

        with open(self.path / "stats" / FOLD_LOCK, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                return self._unfold(partial_of)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _unfold(self, partial_of) -> int:
        f, slot = self.folded()
        for k in range(f):
            parts = partial_of(k)
            if parts is None:  # a shard being redone (its complete flag is cleared): no partial needed
                continue
            for kind in self.dims:
                for split in layout.STATS_SPLITS:
                    m = parts[(kind, split)]
                    kept = self.shard_count(k, kind, split)
                    if m.count != kept:
                        raise ValueError(f"{self.path}: shard {k} {kind} {split} has {m.count} valid tokens but its "
                                         f"statistics counted {kept}: its data changed; redo it too")
                    p = _split_index(split)
                    self.group[layout.stats_array(kind, "mean", "shard")][k, p] = m.mean_D
                    self.group[layout.stats_array(kind, "m2", "shard")][k, p] = m.m2_DD
        self.group[layout.STATS_FOLDED][:] = np.array([0, slot], np.int64)  # the commit point
        self._totals = None
        return f

    def clear_shard(self, k: int) -> None:
        """Empty shard k's partials (count 0, every kind and split); only for shards not folded."""
        for kind, C in self.dims.items():
            for split in layout.STATS_SPLITS:
                self.write_shard(k, kind, split, Moments.empty(C))

    def _write_row(self, kind: str, level: str, row: int, split: str, m: Moments) -> None:
        p = _split_index(split)
        self.group[layout.stats_array(kind, "mean", level)][row, p] = m.mean_D
        self.group[layout.stats_array(kind, "m2", level)][row, p] = m.m2_DD
        counts = self.group[layout.stats_array(kind, "count", level)]
        r = np.asarray(counts[row])
        r[p] = m.count
        counts[row] = r

    def nbytes_on_disk(self) -> int:
        """Bytes of every statistics file of the store (local stores; object stores: through zarr)."""
        if isinstance(self.path, Path):
            root = self.path / "stats"
            return (sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != FOLD_LOCK)
                    if root.is_dir() else 0)
        return sum(int(self.group[name].nbytes_stored()) for name in self._array_names())

    def _array_names(self) -> list[str]:
        names = [layout.STATS_FOLDED]
        for kind in self.dims:
            names += [layout.stats_array(kind, f, lv) for lv in layout.STATS_LEVELS for f in ("count", "mean", "m2")]
            names.append(layout.stats_array(kind, "sketch", "shard"))
        return names
