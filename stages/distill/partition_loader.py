"""One batch per resolution partition per step (AM-RADIO arXiv 2312.06709; partitions:
stages/distill/partitions.py), and PHI-S's per-teacher batch partitions (arXiv 2410.01680).

Each partition has its own sample stream: a StoreBatches over its stores (a `StoreSet.subset` of the run's
opened stores), at its student side and batch size, from the student views pre-rendered at that side.
Partition 0 shuffles with the run's seed exactly as a single-resolution run does (its batches are those of
a run without partitions); partition p > 0 draws its own order (`stream=p`). The streams advance together,
one batch each per step; their epochs differ in length, so each keeps its own (epoch, position), all of
them in the checkpoint.

Per-teacher batch partitions (`teacher_batches: split`): teacher j of a partition with T teachers is
trained on rows [j·B/T, (j+1)·B/T) of its partition's batch only (its heads run on those rows), so each
teacher sees other images, as the PHI-S ablations train.
"""

from __future__ import annotations

from typing import Any, Iterator

from stages.distill.config import DistillConfig
from stages.distill.loader import LoaderState, StoreBatches, StoreSet, make_loader, StoreLoader


def partition_datasets(config: DistillConfig, stores: StoreSet, *, start: tuple[LoaderState, ...], rank: int,
                       world_size: int, loader_memory: int) -> list[StoreBatches]:
    """This rank's StoreBatches of every partition, from `start` (one LoaderState per partition)."""
    if len(start) != len(config.train_partitions):
        raise ValueError(f"the checkpoint holds {len(start)} loader state(s) for a run of "
                         f"{len(config.train_partitions)} partition(s)")
    out = []
    for p, (part, state) in enumerate(zip(config.train_partitions, start)):
        part_stores = stores if part.teachers == stores.teachers else stores.subset(part.teachers)
        out.append(StoreBatches(part_stores, split="train", batch_size=part.batch_size, img_size=part.img_size,
                                seed=config.seed, shuffle_block=config.shuffle_block, rank=rank,
                                world_size=world_size, start=state, loader_memory=loader_memory,
                                student_views=config.student_views, stream=p))
    return out


class PartitionLoader:
    """Iterates lists of batches, one per partition, from one StoreLoader each (advanced together)."""

    def __init__(self, loaders: list[StoreLoader]) -> None:
        self.loaders = loaders

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        its = [iter(loader) for loader in self.loaders]
        while True:
            batches = []
            for it in its:
                batch = next(it, None)
                if batch is None:
                    return
                batches.append(batch)
            yield batches


def make_partition_loader(datasets: list[StoreBatches], *, num_workers: int, prefetch_factor: int,
                          pin_memory: bool) -> PartitionLoader:
    return PartitionLoader([make_loader(ds, num_workers=num_workers, prefetch_factor=prefetch_factor,
                                        pin_memory=pin_memory) for ds in datasets])


def states_after(datasets: list[StoreBatches], batches: list[dict[str, Any]]) -> tuple[LoaderState, ...]:
    """Every partition's LoaderState once `batches` (one per partition) have been consumed."""
    out = []
    for ds, batch in zip(datasets, batches):
        position = batch["position"] + 1
        out.append(LoaderState(batch["epoch"], position) if position < ds.batches_per_epoch
                   else LoaderState(batch["epoch"] + 1, 0))
    return tuple(out)


def teacher_rows(teachers: tuple[str, ...], batch: int) -> dict[str, slice]:
    """PHI-S per-teacher batch partitions: teacher j of T gets rows [j·B//T, (j+1)·B//T)."""
    T = len(teachers)
    return {t: slice(j * batch // T, (j + 1) * batch // T) for j, t in enumerate(teachers)}
