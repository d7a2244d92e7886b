"""Store-fed loader for stage two of offline agglomerative distillation (AM-RADIO arXiv 2312.06709;
stored fixed views in the manner of FKD, arXiv 2112.01528; targets normalized as in PHI-S arXiv 2410.01680).

A sample is one (image, view) pair of a manifest split whose image is ok and whose view is valid in every
selected teacher's store. Stores with shards not marked complete are refused: their statistics (and so the
persisted normalizers) would describe part of the data. For each sample the loader decodes
the image (stages.corpus.samples: decoded as the manifest did, its bytes checked against the manifest's
sha256 so a file changed since extraction is refused), renders the stored view (crop box + flip) at the
student's resolution, reads every teacher's stored summary and patch targets for that view and applies the
teacher's fitted normalizer.

Shuffling without one shard read per sample. Images are grouped into *units* of U consecutive images
(U = the largest shard size among the stores, so a unit is one shard when the stores agree). Each epoch,
with a generator seeded by (seed, epoch): permute the unit order; cut it into blocks of `shuffle_block`
units; permute the samples inside each block; concatenate. A loader process reads a unit's targets once
(one contiguous read per store) the first time a batch needs it and keeps the decoded arrays until the
batches have moved past its block, so each process reads every shard once per epoch and holds at most the
blocks one batch spans. Samples are thus mixed across `shuffle_block` shards at a time, and across the
whole corpus at block granularity.

Global batches and ranks. Global batch b of an epoch is order[b·G : (b+1)·G], G = batch_size × world_size
(the remainder of an epoch is dropped, so every rank sees the same number of batches); rank r takes the
r-th slice of B. Ranks therefore never overlap, and the union of the ranks' batches is exactly the batch
one process would draw with batch size G. Data-loader worker w of n produces the batches k with
(k − k₀) mod n = w, counted from the start batch k₀; torch's DataLoader collects workers round-robin, so
batches arrive in order. The order depends only on (seed, epoch), never on the worker count, and a
`LoaderState(epoch, position)` (global batches consumed in the epoch) resumes it exactly.

Shape legend: B batch, H/W pixel sides, h/w teacher grid, C channels, M samples, N images, V views.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from stages.corpus.samples import render_samples
from stages.normalize import NormVariant, kind_variant, load_or_fit
from stages.stats import Moments
from store_schema.codecs import bulk_io
from store_schema.location import as_location
from store_schema.layout import TOKEN_KINDS, hadamard_cache_dir, manifest_path, normalizer_path, teacher_store_path
from store_schema.manifest import Manifest, read_manifest
from store_schema.teacher_store import TeacherStore, open_teacher_store


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
        self.normalizers = {t: self._fit(t) for t in self.teachers}

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

    def _fit(self, teacher: str) -> dict[str, Any]:
        store = self.stores[teacher]
        kinds = [k for k in TOKEN_KINDS if k != "summary" or store.summary_dim > 0]
        fits = {}
        for k in kinds:
            variant = kind_variant(self.norm, k, self.summary_loss)
            stats, split = normalizer_moments(store, k)
            path = normalizer_path(self.root, teacher, k, variant.value, stats.content_hash())
            fits[k] = load_or_fit(path, variant, stats, hadamard_cache=hadamard_cache_dir(self.root),
                                  keepbits=store.codec.keepbits, split=split)
        return fits

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
        for store in self.stores.values():  # every shard is complete (checked when the set was opened)
            ok_NV &= np.asarray(store.valid[:], bool)
        return np.argwhere(ok_NV).astype(np.int64)


def normalizer_moments(store: TeacherStore, kind: str) -> tuple[Moments, str]:
    """(moments a normalizer is fitted from, the manifest split they cover): the train split's, so that
    no held-out image shapes the targets the student is scored against.

    The one place that picks the fitting statistics. Per-split moments come from stage one
    (``TeacherStore.stats(kind, split="train")``); a store written before stage one kept them has only
    whole-store moments, which are used and recorded as split "all" in the normalizer file (the report
    and ``pipeline store info`` print the split).
    """
    import inspect

    if "split" in inspect.signature(store.stats).parameters:
        return store.stats(kind, split="train"), "train"
    return store.stats(kind), "all"


def epoch_order(samples_M2: np.ndarray, *, unit_size: int, shuffle_block: int, seed: int,
                epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's sample order (see the module docstring) and each sample's block index in that order."""
    rng = np.random.default_rng([seed, epoch])
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
    """Endless stream of this rank's batches (dicts of tensors), from a LoaderState onwards.

    Each batch: image_BHW3 uint8, image_B / view_B int64, epoch / position ints (the global batch it is),
    and per teacher t: "<t>/patches" float32 [B, h, w, Cp] and "<t>/summary" float32 [B, Cs] (if any),
    normalized with the teacher's fitted normalizer.
    """

    def __init__(self, stores: StoreSet, *, split: str, batch_size: int, img_size: int, seed: int,
                 shuffle_block: int = 4, rank: int = 0, world_size: int = 1,
                 start: LoaderState = LoaderState()) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.stores, self.split = stores, split
        self.batch_size, self.img_size, self.seed = batch_size, img_size, seed
        self.shuffle_block, self.rank, self.world_size, self.start = shuffle_block, rank, world_size, start
        self.samples_M2 = stores.samples(split)
        G = batch_size * world_size
        self.batches_per_epoch = len(self.samples_M2) // G
        if self.batches_per_epoch == 0:
            raise ValueError(f"split {split!r} has {len(self.samples_M2)} usable (image, view) samples, fewer "
                             f"than one global batch of {G} (batch_size {batch_size} x world size {world_size})")
        if not 0 <= start.position < self.batches_per_epoch:
            raise ValueError(f"loader position {start.position} outside an epoch of {self.batches_per_epoch}")
        self._cache: dict[int, dict[str, tuple[np.ndarray | None, np.ndarray]]] = {}

    def epoch_samples(self, epoch: int) -> np.ndarray:
        """The global sample order of one epoch (int64 [M, 2]), before dropping the remainder."""
        return epoch_order(self.samples_M2, unit_size=self.stores.unit_size, shuffle_block=self.shuffle_block,
                           seed=self.seed, epoch=epoch)[0]

    def rank_slice(self, position: int) -> slice:
        """The slice of an epoch's order that is this rank's part of global batch `position`."""
        g0 = position * self.batch_size * self.world_size + self.rank * self.batch_size
        return slice(g0, g0 + self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, position, k = self.start.epoch, self.start.position, 0
        U = self.stores.unit_size
        while True:
            order_M2, block_M = epoch_order(self.samples_M2, unit_size=U, shuffle_block=self.shuffle_block,
                                            seed=self.seed, epoch=epoch)
            self._cache.clear()
            unit_block = dict(zip((order_M2[:, 0] // U).tolist(), block_M.tolist()))
            for b in range(position, self.batches_per_epoch):
                if k % n_workers == worker:
                    sl = self.rank_slice(b)
                    low_block = int(block_M[sl].min())
                    # Units of earlier blocks are not needed again this epoch: drop their arrays.
                    for u in [u for u in self._cache if unit_block[u] < low_block]:
                        del self._cache[u]
                    yield self._make_batch(order_M2[sl], epoch, b)
                k += 1
            epoch, position = epoch + 1, 0

    def _make_batch(self, pairs_B2: np.ndarray, epoch: int, position: int) -> dict[str, Any]:
        m = self.stores.manifest
        image_BHW3 = render_samples(m, pairs_B2, self.img_size)
        batch: dict[str, Any] = {
            "image_BHW3": torch.from_numpy(image_BHW3),
            "image_B": torch.from_numpy(pairs_B2[:, 0].copy()),
            "view_B": torch.from_numpy(pairs_B2[:, 1].copy()),
            "epoch": epoch, "position": position,
        }
        U = self.stores.unit_size
        for t in self.stores.teachers:
            summary, patches = [], []
            for i, v in pairs_B2:
                s_UVC, p_UVhwC = self._unit(t, int(i) // U)
                patches.append(p_UVhwC[i % U, v])
                if s_UVC is not None:
                    summary.append(s_UVC[i % U, v])
            norms = self.stores.normalizers[t]
            batch[f"{t}/patches"] = _normalize(norms["patches"], np.stack(patches))
            if summary:
                batch[f"{t}/summary"] = _normalize(norms["summary"], np.stack(summary))
        return batch

    def _unit(self, teacher: str, u: int) -> tuple[np.ndarray | None, np.ndarray]:
        entry = self._cache.setdefault(u, {})
        if teacher not in entry:
            store = self.stores.stores[teacher]
            a, b = u * self.stores.unit_size, min((u + 1) * self.stores.unit_size, store.num_images)
            with bulk_io():  # a unit is many one-image inner chunks: decode them in one batch
                summary = np.asarray(store.summary[a:b], np.float32) if store.summary_dim > 0 else None
                entry[teacher] = (summary, np.asarray(store.patches[a:b], np.float32))
        return entry[teacher]


def _normalize(normalizer: Any, y_BD: np.ndarray) -> torch.Tensor:
    """Apply a fitted normalizer along the last dim, in float32."""
    out = normalizer.apply(torch.from_numpy(np.ascontiguousarray(y_BD, np.float32)))
    return out.to(torch.float32)


def make_loader(dataset: StoreBatches, *, num_workers: int, prefetch_factor: int = 2,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over whole batches (batch_size=None) with `num_workers` prefetching processes."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)


# Student input normalization (ImageNet mean / std, the convention of timm's ViTs and of RADIO).
STUDENT_MEAN = (0.485, 0.456, 0.406)
STUDENT_STD = (0.229, 0.224, 0.225)


def student_pixels(image_BHW3: torch.Tensor, *, device: torch.device | str) -> torch.Tensor:
    """uint8 views [B, H, W, 3] -> normalized float pixels [B, 3, H, W] on `device` (done there, so loader
    workers ship 4x fewer bytes)."""
    x_BCHW = image_BHW3.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(STUDENT_MEAN, device=x_BCHW.device).view(1, 3, 1, 1)
    std = torch.tensor(STUDENT_STD, device=x_BCHW.device).view(1, 3, 1, 1)
    return (x_BCHW - mean) / std
