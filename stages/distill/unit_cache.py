"""Which loader worker reads which unit, when a unit can be dropped, and the bounded cache of decoded units.

Stage two of offline agglomerative distillation (AM-RADIO arXiv 2312.06709) reads each teacher's stored
targets unit by unit (a unit = U consecutive images, one shard when the stores agree). Here:

* `EpochPlan`: for one epoch and one rank, each unit's owner among the n loader workers (units in order of
  first use, dealt round-robin, so the workers share every shuffle block), the first and last batch of the
  rank that needs it, and each worker's peak cache size. A worker reads only the units it owns, once per
  epoch, and drops a unit after the last batch that needs it.
* `UnitCache`: one worker's decoded units, in the compact dtype (bf16 bit patterns as uint16, see
  store_schema.shard_reader), in buffers recycled from dropped units (no fresh page faults per read).
  A complete shard whose image with a valid view has no stored chunk is refused (a lost chunk must not
  train as zeros). It also keeps the unit's decoded images for the student's views: each image is
  decoded once per epoch per rank (at the reduced JPEG scale all its views allow), not once per sample,
  and dropped with its unit. With a student-view store (store_schema/view_store.py, `pipeline views`) the
  views are read with the unit instead (one read per unit per epoch, recycled buffers), the same pixels
  without the decode.

Shape legend: M samples, U images per unit, V views, h/w grid, C channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.corpus.samples import load_checked_for_views
from stages.corpus.views import render_view
from store_schema.errors import StoreCorruptionError
from store_schema.shard_reader import ShardReader


def format_bytes(n: float) -> str:
    """Bytes as a short human string (GiB / MiB / KiB)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class EpochPlan:
    """One rank's reading plan for one epoch (see the module docstring).

    order_M2: the epoch's global sample order; owner / first / last: per unit id (int64 [num_units],
    -1 where a unit is not used by this rank from the start position on); peak_bytes_W: per worker.
    """

    order_M2: np.ndarray
    owner: np.ndarray
    first: np.ndarray
    last: np.ndarray
    peak_bytes_W: np.ndarray
    peak_units_W: np.ndarray

    @property
    def peak_bytes(self) -> int:
        return int(self.peak_bytes_W.sum())


def plan_epoch(order_M2: np.ndarray, *, unit_size: int, num_units: int, batch_size: int, world_size: int,
               rank: int, batches: int, start: int, n_workers: int, unit_nbytes: int) -> EpochPlan:
    """Owners, first / last use and per-worker peak cache bytes for batches [start, batches) of one rank."""
    G = batch_size * world_size
    unit_M = order_M2[: batches * G, 0] // unit_size
    # owners: units in order of first appearance in the epoch (the permuted unit order), dealt round-robin
    _, first_pos = np.unique(unit_M, return_index=True)
    appearance = np.unique(unit_M)[np.argsort(first_pos, kind="stable")]
    owner = np.full(num_units, -1, np.int64)
    owner[appearance] = np.arange(len(appearance)) % n_workers
    pos = np.arange(len(unit_M))
    mine = ((pos % G) // batch_size == rank) & (pos // G >= start)
    u_mine, b_mine = unit_M[mine], pos[mine] // G
    first = np.full(num_units, np.iinfo(np.int64).max, np.int64)
    last = np.full(num_units, -1, np.int64)
    np.minimum.at(first, u_mine, b_mine)
    np.maximum.at(last, u_mine, b_mine)
    used = last >= 0
    first[~used] = -1
    owner[~used] = -1
    peak_units = np.zeros(n_workers, np.int64)
    for w in range(n_workers):
        sel = used & (owner == w)
        if not sel.any():
            continue
        delta = np.zeros(batches + 1, np.int64)
        np.add.at(delta, first[sel], 1)
        np.add.at(delta, last[sel] + 1, -1)
        peak_units[w] = int(np.cumsum(delta).max())
    return EpochPlan(order_M2, owner, first, last, peak_units * unit_nbytes, peak_units)


class UnitCache:
    """One loader worker's decoded units: {unit: {(teacher, kind): compact array [U, V, ...]}}."""

    def __init__(self, stores: Any, *, unit_size: int, views: Any = None, views_valid_N: np.ndarray | None = None) -> None:
        """views: the student-view store to read the views from (None: decode them); views_valid_N: its
        `valid` array, read once by the caller (not once per loader worker)."""
        self.stores, self.unit_size = stores, unit_size
        self.view_reader = None if views is None else ShardReader(views.views, store_path=views.path, name="views")
        if views is not None and views_valid_N is None:
            views_valid_N = np.asarray(views.valid[:], bool)
        self.view_valid_N = views_valid_N
        self.view_units: dict[int, np.ndarray] = {}  # unit -> uint8 [U, V, P, P, 3] views (store path)
        self.view_absent: dict[int, np.ndarray] = {}
        self._free_views: list[np.ndarray] = []
        self.readers: dict[tuple[str, str], ShardReader] = {}
        for t, store in stores.stores.items():
            for kind in store.kinds:
                array = store.summary if kind == "summary" else store.patches
                self.readers[(t, kind)] = ShardReader(array, store_path=store.path, name=kind)
        self.units: dict[int, dict[tuple[str, str], np.ndarray]] = {}
        self._free: list[dict[tuple[str, str], np.ndarray]] = []
        self.images: dict[int, dict[int, Any]] = {}  # unit -> {image id: decoded RGB image}
        self.reads = 0  # unit reads (all teachers) since this cache was made
        self.decodes = 0  # image decodes for student views since this cache was made
        self.view_reads = 0  # unit reads from the student-view store since this cache was made

    def live_units(self) -> set[int]:
        """Units holding anything (targets, decoded images or stored views)."""
        return set(self.units) | set(self.images) | set(self.view_units)

    def drop(self, u: int) -> None:
        """Forget unit u (targets and decoded images); its buffers are reused by the next read."""
        self.images.pop(u, None)
        self.view_absent.pop(u, None)
        if u in self.view_units:
            self._free_views.append(self.view_units.pop(u))
        if u in self.units:
            self._free.append(self.units.pop(u))

    def student_views(self, pairs_R2: np.ndarray, size: int, out_RHW3: np.ndarray) -> None:
        """Render the (image, view) pairs at the student's size into out_RHW3 (uint8), with the crop box
        and flip the teachers saw. An image is decoded on its first use in its unit, at the reduced JPEG
        scale that every one of its manifest views allows (so its pixels never depend on which views
        share a batch), and kept until the unit is dropped."""
        m = self.stores.manifest
        for r, (i, v) in enumerate(pairs_R2.tolist()):
            if self.view_reader is not None and self._stored_view(i, v, out_RHW3[r]):
                continue
            decoded = self.images.setdefault(i // self.unit_size, {})
            img = decoded.get(i)
            if img is None:
                img = decoded[i] = load_checked_for_views(m, i, m.view_boxes_NV4[i], size)
                self.decodes += 1
            out_RHW3[r] = render_view(img, m.view_boxes_NV4[i, v], bool(m.view_flips_NV[i, v]), size)

    def _stored_view(self, i: int, v: int, out_HW3: np.ndarray) -> bool:
        """Copy image i's view v from the student-view store into out_HW3; False when the store has no
        rendering of it (the image failed to render, or its chunk is absent), to decode it instead (an
        absent chunk may be an all-black rendering the writer left out, or a lost file: decoding is right
        for both)."""
        assert self.view_reader is not None and self.view_valid_N is not None
        if not self.view_valid_N[i]:
            return False
        u, U = i // self.unit_size, self.unit_size
        if u not in self.view_units:
            buf = self._free_views.pop() if self._free_views else np.empty(
                (U, *self.view_reader.item_shape), np.uint8)
            a = u * U
            b = min(a + U, len(self.view_valid_N))
            try:
                self.view_absent[u] = self.view_reader.read_into(a, b, buf)
            except StoreCorruptionError as e:  # its own remedy, not a teacher store's redo
                path = self.view_reader.store_path
                raise StoreCorruptionError(
                    f"the student-view store {path} is damaged ({str(e).split('; ')[0]}); it holds no targets, "
                    f"only renders: remove {path} and run `pipeline views --size {self.view_reader.item_shape[1]}` "
                    "again, or train with --student-views decode") from e
            self.view_units[u] = buf
            self.view_reads += 1
        if self.view_absent[u][i % U]:
            return False
        out_HW3[...] = self.view_units[u][i % U, v]
        return True

    def get(self, u: int) -> dict[tuple[str, str], np.ndarray]:
        """Unit u's arrays, reading them (every teacher, every token kind) when not cached."""
        if u not in self.units:
            self.units[u] = self._read(u)
        return self.units[u]

    def _buffers(self) -> dict[tuple[str, str], np.ndarray]:
        if self._free:
            return self._free.pop()
        return {key: np.empty((self.unit_size, *r.item_shape), r.compact) for key, r in self.readers.items()}

    def _read(self, u: int) -> dict[tuple[str, str], np.ndarray]:
        bufs = self._buffers()
        a = u * self.unit_size
        for (t, kind), reader in self.readers.items():
            store = self.stores.stores[t]
            b = min(a + self.unit_size, store.num_images)
            absent = reader.read_into(a, b, bufs[(t, kind)])
            if absent.any():
                valid_SV = self.stores.valid_NV[t][a:b]
                lost = np.flatnonzero(absent & valid_SV.any(axis=1)) + a
                if lost.size:
                    shards = sorted({int(i) // store.shard_size for i in lost})
                    raise StoreCorruptionError(
                        f"{store.path}: {kind} of images {lost[:10].tolist()}{' ...' if lost.size > 10 else ''} "
                        f"(shard{'s' if len(shards) > 1 else ''} {shards}) have valid views but no stored chunk, "
                        f"although the shard is marked complete: a chunk or shard file was lost. Run `pipeline "
                        f"store verify` on it, then re-extract those shards (clear their complete flag) or "
                        f"rebuild the store")
        self.reads += 1
        return bufs
