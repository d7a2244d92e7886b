"""Checks stage one makes before any store is created (AM-RADIO arXiv 2312.06709: a half-made teacher store
from a typo would have to be deleted by hand): the device, the Ray cluster's resources, the teachers, the
manifest, the storage grids and the weights. Each raises ValueError (or MissingWeightsError) naming what is
wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

from stages.extract.pooling import check_storage_grid
from stages.teachers.registry import check_checkpoint, get_teacher_spec
from stages.teachers.weights import resolve_weights
from store_schema.layout import manifest_path
from store_schema.location import is_file


def check_ray_resources(resources: dict[str, float], *, workers: int, cpus_per_worker: float,
                        gpus_per_worker: float, device: str) -> None:
    """Refuse a Ray run the cluster cannot place (before any store is created)."""
    need_cpu, need_gpu = workers * cpus_per_worker, workers * gpus_per_worker
    have_cpu, have_gpu = resources.get("CPU", 0), resources.get("GPU", 0)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise ValueError(f"{workers} workers need {need_cpu:g} CPUs and {need_gpu:g} GPUs; the Ray cluster has "
                         f"{have_cpu:g} CPUs and {have_gpu:g} GPUs")
    if device.startswith("cuda") and gpus_per_worker == 0:
        raise ValueError(f"--device {device} with --gpus-per-worker 0: Ray would give the actors no GPU")


def preflight(root: Path, teachers: list[str], *, storage_grid: tuple[int, int] | None,
              checkpoint: Path | None, local_weights: bool) -> None:
    """Checks that need stage code, run before any store exists: known teachers, a manifest, a storage grid
    every teacher can pool to, and (when the workers run on this machine) weights that are here."""
    specs = [get_teacher_spec(name) for name in teachers]  # unknown names: ValueError listing the valid ones
    if not is_file(manifest_path(root)):
        raise ValueError(f"no manifest at {manifest_path(root)}; build one with `pipeline corpus` first")
    for spec in specs:
        if storage_grid is not None:
            try:
                check_storage_grid(spec.grid, storage_grid)
            except ValueError as e:
                raise ValueError(f"--storage-grid for teacher {spec.name!r}: {e}") from e
        if local_weights:
            resolve_weights(spec, checkpoint, hash_file=False)  # MissingWeightsError says how to provide them
            if checkpoint is not None:  # a file that is not this teacher's weights: refused before any store
                check_checkpoint(spec, checkpoint)
