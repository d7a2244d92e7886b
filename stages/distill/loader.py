"""Store-fed loader for stage two of offline agglomerative distillation (AM-RADIO arXiv 2312.06709;
stored fixed views in the manner of FKD, arXiv 2112.01528; targets normalized as in PHI-S arXiv 2410.01680).

A sample is one (image, view) pair of a manifest split whose image is ok and whose view is valid in every
selected teacher's store. Stores with shards not marked complete are refused: their statistics (and so the
persisted normalizers) would describe part of the data. For each sample the loader takes the student's
view (crop box + flip at the student's resolution) from the student-view store `pipeline views` rendered
once, or renders it from the image (stages.corpus.samples: decoded as the manifest did, its bytes checked
against the manifest's sha256 so a file changed since extraction is refused; the same pixels either way,
stages/distill/view_source.py), and reads every teacher's stored summary and patch targets for that view.

Shuffling without one shard read per sample. Images are grouped into *units* of U consecutive images
(U = the largest shard size among the stores, so a unit is one shard when the stores agree). Each epoch,
with a generator seeded by (seed, epoch): permute the unit order; cut it into blocks of `shuffle_block`
units; permute the samples inside each block; concatenate. Samples are thus mixed across
`shuffle_block` shards at a time, and across the whole corpus at block granularity.

Global batches and ranks. Global batch b of an epoch is order[b·G : (b+1)·G], G = batch_size × world_size
(the remainder of an epoch is dropped, so every rank sees the same number of batches); rank r takes the
r-th slice of B. Ranks therefore never overlap, and the union of the ranks' batches is exactly the batch
one process would draw with batch size G. The order depends only on (seed, epoch), never on the worker
count, and a `LoaderState(epoch, position)` (global batches consumed in the epoch) resumes it exactly.

Workers own units (stages/distill/unit_cache.py). Each unit used by a rank in an epoch is owned by one of
its n loader workers (units dealt round-robin in order of first use), which reads it once (one read per
shard per rank per epoch, whatever n), keeps it decoded in the compact dtype under the `loader_memory`
budget and drops it after the last batch that needs it. For every batch each worker yields a *piece*:
the batch's samples from its own units (views rendered, targets gathered); torch's DataLoader collects
workers round-robin, so the n pieces of a batch arrive together and `make_loader` joins them.

Targets leave the loader as stored, in the compact dtype: bf16 bit patterns (uint16) when the store's
values are bf16-exact, else float32, about 2x fewer bytes than float32 through shared memory, pinning and
the host-to-device copy. The training step widens them and applies each teacher's fitted normalizer on
its device (one batched matmul per teacher and token kind); loader workers never run a normalizer.

Shape legend: B batch, H/W pixel sides, h/w teacher grid, C channels, M samples, N images, V views.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from stages.distill.unit_cache import EpochPlan, UnitCache, format_bytes, plan_epoch
from stages.distill.view_source import resolve_view_store
from stages.normalize import NormVariant
from stages.normalize.store_fit import fit_store_normalizers
from store_schema.location import as_location
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.manifest import Manifest, read_manifest
from store_schema.shard_reader import compact_dtype_of
from store_schema.teacher_store import TeacherStore, open_teacher_store

DEFAULT_LOADER_MEMORY = 8 * 2**30  # bytes of decoded units one rank's loader may hold (all workers)


@dataclass(frozen=True)
class LoaderState:
    """Where the sample stream stands: `position` global batches of epoch `epoch` have been consumed."""

    epoch: int = 0
    position: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoaderState":
        return cls(epoch=int(d["epoch"]), position=int(d["position"]))


class StoreSet:
    """The manifest plus the selected teachers' stores, checked to agree, and their fitted normalizers.

    normalizers[teacher][kind] for kind in ("summary", "patches"); "summary" is absent for a teacher
    without summary tokens. The patch normalizer is ``norm``'s; the summary normalizer is ``norm``'s only
    with summary_loss "variant", else the identity (cosine on raw summaries, AM-RADIO), so the loader never
    normalizes summaries for a raw-cosine summary loss. Fitted normalizers are persisted at
    store_schema.layout.normalizer_path and reused (load_or_fit refuses a stored fit from other statistics).
    """

    def __init__(self, root: Path, teachers: tuple[str, ...] | list[str], *, norm: NormVariant,
                 summary_loss: str = "cosine") -> None:
        self.root = as_location(root)
        self.teachers = tuple(teachers)
        self.norm = NormVariant(norm)
        self.summary_loss = summary_loss
        self.stores: dict[str, TeacherStore] = {t: open_teacher_store(teacher_store_path(self.root, t))
                                                for t in self.teachers}
        self.manifest: Manifest = read_manifest(manifest_path(self.root))
        self._check_agreement()
        self.normalizers = {t: fit_store_normalizers(self.root, t, s, norm=self.norm, summary_loss=summary_loss)
                            for t, s in self.stores.items()}
        self.valid_NV: dict[str, np.ndarray] = {t: np.asarray(s.valid[:], bool) for t, s in self.stores.items()}

    @property
    def frames(self) -> dict[str, np.ndarray]:
        """{teacher: float [N, V, 4]} for the teachers with their own resize rule (not a squash): where their
        input lies in each view (stages/teachers/resize.py); what aligns predictions and masks padding."""
        return {t: f for t, s in self.stores.items() if (f := s.frames_NV4) is not None}

    def _check_agreement(self) -> None:
        for t, s in self.stores.items():
            pending = [int(k) for k in s.pending_shards()]
            if pending:
                raise ValueError(f"store {s.path} is not complete: shards {pending[:10]}"
                                 f"{' ...' if len(pending) > 10 else ''} of {s.num_shards} are not marked complete; "
                                 f"finish it with `pipeline extract --teacher {t}` before training from it")
        first = self.teachers[0]
        ref = self.stores[first]
        for t in self.teachers[1:]:
            s = self.stores[t]
            if s.manifest_hash != ref.manifest_hash:
                raise ValueError(f"stores were built from different manifests: {first!r} has manifest hash "
                                 f"{ref.manifest_hash}, {t!r} has {s.manifest_hash}; re-extract one of them")
            if s.view_spec != ref.view_spec:
                raise ValueError(f"stores use different view specs: {first!r} has {ref.view_spec}, {t!r} "
                                 f"has {s.view_spec}")
        m = self.manifest
        if ref.manifest_hash != m.hash:
            raise ValueError(f"the manifest on disk ({m.path}, hash {m.hash}) is not the one the stores were "
                             f"built from (hash {ref.manifest_hash})")
        if ref.view_spec != m.view_spec:
            raise ValueError(f"the manifest's view spec {m.view_spec} differs from the stores' {ref.view_spec}")

    def subset(self, teachers: tuple[str, ...]) -> "StoreSet":
        """The same opened stores and fitted normalizers, restricted to `teachers` (a resolution partition's
        stores, stages/distill/partitions.py): nothing is opened or fitted again."""
        unknown = sorted(set(teachers) - set(self.teachers))
        if unknown:
            raise ValueError(f"stores {unknown} are not in this store set ({list(self.teachers)})")
        sub = object.__new__(StoreSet)
        sub.__dict__.update(self.__dict__)
        sub.teachers = tuple(teachers)
        sub.stores = {t: self.stores[t] for t in teachers}
        sub.normalizers = {t: self.normalizers[t] for t in teachers}
        sub.valid_NV = {t: self.valid_NV[t] for t in teachers}
        return sub

    @property
    def unit_size(self) -> int:
        """Images per read unit: the largest shard size among the stores."""
        return max(s.shard_size for s in self.stores.values())

    def samples(self, split: str) -> np.ndarray:
        """Eligible (image, view) pairs of a split, sorted: int64 [M, 2]."""
        ids = self.manifest.split_ids(split)
        V = self.manifest.view_spec.num_views
        ok_NV = np.zeros((self.manifest.num_images, V), bool)
        ok_NV[ids] = True
        for valid_NV in self.valid_NV.values():  # every shard is complete (checked when the set was opened)
            ok_NV &= valid_NV
        return np.argwhere(ok_NV).astype(np.int64)

    @property
    def unit_nbytes(self) -> int:
        """Bytes of one decoded unit, every teacher and token kind, in the compact dtype the loader holds."""
        total = 0
        for store in self.stores.values():
            for array in ([store.summary] if store.summary is not None else []) + [store.patches]:
                total += int(np.prod(array.shape[1:])) * compact_dtype_of(array).itemsize
        return total * self.unit_size


def epoch_order(samples_M2: np.ndarray, *, unit_size: int, shuffle_block: int, seed: int,
                epoch: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's sample order (see the module docstring) and each sample's block index in that order.
    stream: which of a run's sample streams (resolution partition p > 0 draws its own order)."""
    rng = np.random.default_rng([seed, epoch] if stream == 0 else [seed, epoch, stream])
    unit_M = samples_M2[:, 0] // unit_size
    units = np.unique(unit_M)
    units = units[rng.permutation(len(units))]
    order, block = [], []
    for bi, start in enumerate(range(0, len(units), shuffle_block)):
        members = np.flatnonzero(np.isin(unit_M, units[start:start + shuffle_block]))
        order.append(members[rng.permutation(len(members))])
        block.append(np.full(len(members), bi, np.int64))
    if not order:
        return samples_M2[:0], np.zeros(0, np.int64)
    idx = np.concatenate(order)
    return samples_M2[idx], np.concatenate(block)


class StoreBatches(IterableDataset):
    """Stream of this rank's batch *pieces* from a LoaderState on, endless unless `epochs` is given (see the
    module docstring).

    Loader worker w of n yields, for every global batch from the start on, one piece: the rank's samples
    of that batch whose unit w owns (possibly none). `make_loader` joins the n pieces of a batch. A piece
    holds rows_R (int64: the samples' rows in the rank's batch), image_RHW3 uint8 (the student's views),
    image_R / view_R int64, epoch / position ints, and per teacher t and token kind k a tensor "<t>/<k>" of
    the stored values in the compact dtype (torch.uint16 bf16 bit patterns, or float32), [R, h, w, C] or
    [R, C]: never normalized here (the training step does that on its device).
    """

    def __init__(self, stores: StoreSet, *, split: str, batch_size: int, img_size: int, seed: int,
                 shuffle_block: int = 4, rank: int = 0, world_size: int = 1,
                 start: LoaderState = LoaderState(), loader_memory: int = DEFAULT_LOADER_MEMORY,
                 epochs: int | None = None, student_views: str = "auto", stream: int = 0) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.stores, self.split = stores, split
        self.batch_size, self.img_size, self.seed = batch_size, img_size, seed
        self.shuffle_block, self.rank, self.world_size, self.start = shuffle_block, rank, world_size, start
        self.stream = stream  # the partition index: partition p > 0 shuffles with its own generator
        self.loader_memory = int(loader_memory)
        self.epochs = epochs  # stop after this many epochs (counted from start.epoch); None: endless
        self.samples_M2 = stores.samples(split)
        G = batch_size * world_size
        self.batches_per_epoch = len(self.samples_M2) // G
        if self.batches_per_epoch == 0:
            raise ValueError(f"split {split!r} has {len(self.samples_M2)} usable (image, view) samples, fewer "
                             f"than one global batch of {G} (batch_size {batch_size} x world size {world_size})")
        if not 0 <= start.position < self.batches_per_epoch:
            raise ValueError(f"loader position {start.position} outside an epoch of {self.batches_per_epoch}")
        self.num_units = -(-stores.manifest.num_images // stores.unit_size)
        self.unit_reads = 0  # units read by this process (all teachers), for tests and benchmarks
        self.image_decodes = 0  # images decoded by this process for student views, likewise
        self.view_reads = 0  # units of pre-rendered student views read by this process, likewise
        # the student's views: read from <root>/student_views/<img_size>px.zarr, or decoded (view_source.py)
        self.views, self.views_note = resolve_view_store(stores.root, stores.manifest, img_size, student_views)
        self.views_valid_N = None if self.views is None else np.asarray(self.views.valid[:], bool)
        self.piece_slots = 4  # target buffers each producer recycles; make_loader sets prefetch_factor + 2

    @property
    def unit_nbytes(self) -> int:
        """Bytes one cached unit holds: every teacher's targets, plus its stored student views if read."""
        extra = 0
        if self.views is not None:
            extra = self.stores.unit_size * self.stores.manifest.view_spec.num_views * self.img_size ** 2 * 3
        return self.stores.unit_nbytes + extra

    def epoch_samples(self, epoch: int) -> np.ndarray:
        """The global sample order of one epoch (int64 [M, 2]), before dropping the remainder."""
        return epoch_order(self.samples_M2, unit_size=self.stores.unit_size, shuffle_block=self.shuffle_block,
                           seed=self.seed, epoch=epoch, stream=self.stream)[0]

    def rank_slice(self, position: int) -> slice:
        """The slice of an epoch's order that is this rank's part of global batch `position`."""
        g0 = position * self.batch_size * self.world_size + self.rank * self.batch_size
        return slice(g0, g0 + self.batch_size)

    def plan(self, epoch: int, *, start: int, n_workers: int) -> EpochPlan:
        """This rank's reading plan of an epoch from batch `start` on, checked against the memory budget."""
        plan = plan_epoch(self.epoch_samples(epoch), unit_size=self.stores.unit_size, num_units=self.num_units,
                          batch_size=self.batch_size, world_size=self.world_size, rank=self.rank,
                          batches=self.batches_per_epoch, start=start, n_workers=n_workers,
                          unit_nbytes=self.unit_nbytes)
        if plan.peak_bytes > self.loader_memory:
            s = self.stores
            raise ValueError(
                f"the loader's decoded-unit cache needs {format_bytes(plan.peak_bytes)} (rank {self.rank}, epoch "
                f"{epoch}: up to {int(plan.peak_units_W.sum())} units live at once over {n_workers} worker(s), about "
                f"one shuffle block of {self.shuffle_block} units; a unit is {s.unit_size} images x "
                f"{s.manifest.view_spec.num_views} views of {', '.join(s.teachers)} = "
                f"{format_bytes(self.unit_nbytes)} in the compact dtype), more than the loader memory budget "
                f"{format_bytes(self.loader_memory)}. Raise --loader-memory (distill.loader_memory) to at least "
                f"{format_bytes(plan.peak_bytes)}, or lower --shuffle-block")
        return plan

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, position = self.start.epoch, self.start.position
        U = self.stores.unit_size
        cache = UnitCache(self.stores, unit_size=U, views=self.views, views_valid_N=self.views_valid_N)
        ring = _PieceRing(cache, self.batch_size, self.img_size, self.piece_slots, shared=info is not None)
        while self.epochs is None or epoch < self.start.epoch + self.epochs:
            plan = self.plan(epoch, start=position, n_workers=n_workers)
            for u in cache.live_units():
                cache.drop(u)
            for b in range(position, self.batches_per_epoch):
                pairs_B2 = plan.order_M2[self.rank_slice(b)]
                unit_B = pairs_B2[:, 0] // U
                for u in [u for u in cache.live_units() if plan.last[u] < b]:
                    cache.drop(u)  # not needed again this epoch
                rows_R = np.flatnonzero(plan.owner[unit_B] == worker)
                piece = self._piece(cache, ring.next(), pairs_B2[rows_R], rows_R, epoch, b)
                self.unit_reads, self.image_decodes, self.view_reads = cache.reads, cache.decodes, cache.view_reads
                yield piece
            epoch, position = epoch + 1, 0

    def _piece(self, cache: UnitCache, slot: dict[tuple[str, str], torch.Tensor], pairs_R2: np.ndarray,
               rows_R: np.ndarray, epoch: int, position: int) -> dict[str, Any]:
        U = self.stores.unit_size
        R = len(pairs_R2)
        image_t = slot[_IMAGE][:R]
        cache.student_views(pairs_R2, self.img_size, image_t.numpy())
        piece: dict[str, Any] = {
            "rows_R": torch.from_numpy(rows_R.astype(np.int64)),
            "image_RHW3": image_t,
            "image_R": torch.from_numpy(pairs_R2[:, 0].copy()),
            "view_R": torch.from_numpy(pairs_R2[:, 1].copy()),
            "epoch": epoch, "position": position,
        }
        for key in cache.readers:
            out_t = slot[key][:R]
            out = out_t.numpy()
            for r, (i, v) in enumerate(pairs_R2.tolist()):
                out[r] = cache.get(i // U)[key][i % U, v]
            piece[f"{key[0]}/{key[1]}"] = out_t
        return piece


_IMAGE = ("", "image")  # the ring slot's key for the student views


class _PieceRing:
    """A producer's recycled target (and student view) buffers, `slots` batches' worth, in shared memory for
    worker processes.

    Fresh multi-megabyte buffers per batch cost more in page faults than the copy into them (measured: 1.16
    vs 0.24 ms per SAM-H sample), and a tensor already in shared memory crosses to the main process as a
    handle, not a copy. A slot is rewritten `slots` pieces later; the DataLoader asks a worker for a new
    piece only when the main process takes one, so with slots = prefetch_factor + 2 a slot is reused only
    after the batch that held it has been consumed (copied to the device or pinned)."""

    def __init__(self, cache: UnitCache, batch_size: int, img_size: int, slots: int, *, shared: bool) -> None:
        self.cache, self.batch_size, self.slots, self.shared = cache, batch_size, slots, shared
        self.img_size = img_size
        self.buffers: list[dict[tuple[str, str], torch.Tensor]] = []
        self.k = 0

    def next(self) -> dict[tuple[str, str], torch.Tensor]:
        if len(self.buffers) < self.slots:
            shapes = {key: ((self.batch_size, *r.item_shape[1:]), r.compact) for key, r in self.cache.readers.items()}
            shapes[_IMAGE] = ((self.batch_size, self.img_size, self.img_size, 3), np.dtype(np.uint8))
            slot = {}
            for key, (shape, dtype) in shapes.items():
                t = torch.from_numpy(np.zeros(shape, dtype))
                slot[key] = t.share_memory_() if self.shared else t
            self.buffers.append(slot)
            return slot
        slot = self.buffers[self.k % self.slots]
        self.k += 1
        return slot


def join_pieces(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """One rank batch from its n pieces (one per loader worker).

    image_BHW3 / image_B / view_B are in batch order (image_BHW3 is the batch's own copy: the pieces'
    student views live in the producers' recycled buffers). Targets stay in pieces, "targets": {"<t>/<k>":
    [tensors]}, concatenated and put in batch order on the training device by `targets_on_device`
    (order_B: batch row i is row order_B[i] of the concatenated pieces; None when already in order), so
    the host never copies the large target arrays again."""
    epochs = {(p["epoch"], p["position"]) for p in pieces}
    if len(epochs) != 1:
        raise RuntimeError(f"loader pieces of different batches were joined: {sorted(epochs)}")
    pieces = [p for p in pieces if len(p["rows_R"])] or pieces[:1]
    rows = torch.cat([p["rows_R"] for p in pieces]) if len(pieces) > 1 else pieces[0]["rows_R"]
    in_order = bool(torch.equal(rows, torch.arange(len(rows))))
    order_B = None if in_order else torch.argsort(rows)

    def host(name: str) -> torch.Tensor:
        x = torch.cat([p[name] for p in pieces]) if len(pieces) > 1 else pieces[0][name]
        return x if order_B is None else x.index_select(0, order_B)

    keys = [k for k in pieces[0] if "/" in k]
    image = host("image_RHW3")
    if len(pieces) == 1 and order_B is None:
        image = image.clone()  # ~0.15 MB per sample: cheap, and callers may keep the batch
    return {"image_BHW3": image, "image_B": host("image_R"), "view_B": host("view_R"),
            "epoch": pieces[0]["epoch"], "position": pieces[0]["position"], "order_B": order_B,
            "targets": {k: [p[k] for p in pieces] for k in keys}}


def targets_on_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The batch's stored targets on `device`, in batch order, widened to float32 there (bf16 bits are
    exact in float32): {"<t>/patches": [B, h, w, C], "<t>/summary": [B, C]}. Copies are non-blocking
    (from pinned memory when the loader pins)."""
    device = torch.device(device)
    order = None if batch["order_B"] is None else batch["order_B"].to(device, non_blocking=True)
    out = {}
    for key, parts in batch["targets"].items():
        on = [p.to(device, non_blocking=True) for p in parts]
        x = on[0] if len(on) == 1 else torch.cat(on)
        if order is not None:
            x = x.index_select(0, order)
        out[key] = x.view(torch.bfloat16).float() if x.dtype == torch.uint16 else x.float()
    if device.type == "cuda" and batch.get("pinned_in_place"):
        # the copies read the producers' recycled buffers asynchronously: StoreLoader waits for this
        # event before a producer may rewrite them (see _InPlacePinner)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(device))
        batch["copied"] = done
    return out


class StoreLoader:
    """Iterates whole rank batches: a DataLoader over the pieces of `dataset`, joined per batch, their
    target buffers page-locked in place when `pin` (CUDA)."""

    def __init__(self, dataset: StoreBatches, loader: DataLoader, n_workers: int, *, pin: bool = False) -> None:
        self.dataset, self.loader, self.n_workers = dataset, loader, n_workers
        arrays = sum(len(s.kinds) for s in dataset.stores.stores.values())
        self.pinner = _InPlacePinner(n_workers * dataset.piece_slots * arrays) if pin else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = iter(self.loader)
        held: deque[dict[str, Any]] = deque()
        while True:
            # Taking a piece lets its producer start the piece prefetch_factor batches ahead, into the slot
            # of the batch two before this one: that batch's asynchronous copies must be done by then.
            while len(held) > 1:
                done = held.popleft().get("copied")
                if done is not None:
                    done.synchronize()
            pieces = []
            for _ in range(self.n_workers):
                try:
                    pieces.append(next(it))
                except StopIteration:
                    return
            batch = join_pieces(pieces)
            if self.pinner is not None:
                self.pinner.pin(batch)
                held.append(batch)
            yield batch


class _InPlacePinner:
    """Page-locks the producers' recycled target buffers where they are (cudaHostRegister, once per buffer),
    so a batch's stored targets go to the device by DMA straight from the buffers the loader gathered
    them into: no copy into separately pinned memory (measured on the host as `pin copy` in
    benchmarks/stage_two_cost.py, ~0.8-1.1 ms·core per sample at the papers' shapes).

    A worker's buffers are shared memory; torch maps a shared buffer that arrives again to the storage
    still alive for it, so keeping each registered storage alive here makes the recycled buffers arrive
    already pinned. Their number is bounded (workers x slots x arrays); more means buffers are not being
    recycled, an internal error. The small per-batch tensors (student views, ids) are pinned by copy."""

    def __init__(self, max_buffers: int) -> None:
        if not torch.cuda.is_available():
            raise ValueError("pin_memory needs a CUDA device (none is available); run with pin_memory=False")
        self.max_buffers = max_buffers
        self.registered: dict[int, torch.UntypedStorage] = {}

    def pin(self, batch: dict[str, Any]) -> None:
        for parts in batch["targets"].values():
            for p in parts:
                self._register(p)
        batch["image_BHW3"] = batch["image_BHW3"].pin_memory()
        if batch["order_B"] is not None:
            batch["order_B"] = batch["order_B"].pin_memory()
        batch["pinned_in_place"] = True

    def _register(self, t: torch.Tensor) -> None:
        if t.is_pinned():
            return
        storage = t.untyped_storage()
        if len(self.registered) >= self.max_buffers:
            raise RuntimeError(f"the loader page-locked {len(self.registered)} target buffers, its bound: the "
                               "producers' buffers are not arriving as the recycled ones (internal error)")
        rc = int(torch.cuda.cudart().cudaHostRegister(storage.data_ptr(), storage.nbytes(), 0))
        if rc != 0:
            raise RuntimeError(f"cudaHostRegister of a {storage.nbytes()}-byte loader buffer failed (cudaError "
                               f"{rc}); run with pin_memory=False to copy batches without page-locking")
        self.registered[storage.data_ptr()] = storage

    def __del__(self) -> None:
        # Unregister before the buffers are freed: a later buffer mapped at the same address (the next
        # loader in this process) must be registrable again.
        for ptr in list(getattr(self, "registered", {})):
            torch.cuda.cudart().cudaHostUnregister(ptr)
        self.registered = {}


def make_loader(dataset: StoreBatches, *, num_workers: int, prefetch_factor: int = 2,
                pin_memory: bool = False) -> StoreLoader:
    """Whole batches from `num_workers` prefetching processes (0: in this process), pinned when asked
    (CUDA: the recycled target buffers are page-locked in place, `_InPlacePinner`).

    The memory budget of the starting epoch is checked here, before any worker starts. A batch's raw
    target tensors ("targets") live in recycled buffers: consume them (`targets_on_device`) before
    fetching prefetch_factor + 1 more batches; keep copies to hold them longer."""
    n = max(1, num_workers)
    dataset.plan(dataset.start.epoch, start=dataset.start.position, n_workers=n)
    dataset.piece_slots = prefetch_factor + 2
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, **kwargs)
    return StoreLoader(dataset, loader, n, pin=pin_memory)

