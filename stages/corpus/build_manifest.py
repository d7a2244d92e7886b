"""Build manifest.parquet from a corpus SOURCE: folders, lists, Parquet, WebDataset tar shards, any fsspec URL.

The first stage of offline agglomerative distillation (AM-RADIO, arXiv 2312.06709): fix the image set,
each image's content hash, train/val split and its V views, so every teacher store is built from the
same rows. The source is listed (stages/corpus/sources.py), cut into units that decode every image once
on Ray or in this process (stages/corpus/build_runner.py, resumable), and the parts are merged into the
manifest in uri order. Broken files and members are recorded with a reason, never fatal.

An evaluation dataset in its released layout (`dataset_layout`, stages/corpus/layouts.py) goes the same
way: the layout gives the images with their splits, labels and annotation paths, the units check each
image's annotations where they decode it, and the manifest gets the dataset's columns and metadata.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stages.corpus.build_runner import (FILES_PER_TASK, PartsReport, drop_stale_parts, merge_parts, plan_units,
                                        run_parts)
from stages.corpus.images import DEFAULT_PIXEL_LIMIT, MIN_SIDE
from stages.corpus.layouts import check_layout, dataset_source, parse_dataset
from stages.corpus.sources import list_source
from stages.corpus.units import CorpusOptions, split_of  # noqa: F401 - split_of: the split rule's one home
from store_schema import layout
from store_schema.location import as_location, is_file, is_url
from store_schema.manifest import Manifest, ManifestWriter, ViewSpec, manifest_metadata, read_manifest

DEFAULT_VAL_FRACTION = 0.2


@dataclass
class CorpusReport:
    """What one build did: the manifest, and how many parts were built now or reused."""

    manifest: Manifest
    parts: PartsReport
    units: int
    seconds: float
    stale_parts_removed: int = 0


def build_manifest(source: str | Path, *, out_dir: Path | str, view_spec: ViewSpec = ViewSpec(),
                   pixel_limit: int = DEFAULT_PIXEL_LIMIT, min_side: int = MIN_SIDE,
                   val_fraction: float = DEFAULT_VAL_FRACTION, workers: int | None = 0,
                   ray_address: str | None = None, files_per_task: int = FILES_PER_TASK,
                   dataset_layout: str = "files") -> Manifest:
    """Decode every image of SOURCE once and write <out_dir>/manifest.parquet deterministically (in this
    process by default; `workers` > 0 or None runs the units on Ray). Returns the manifest as read back."""
    return build_corpus(source, out_dir=out_dir, view_spec=view_spec, pixel_limit=pixel_limit, min_side=min_side,
                        val_fraction=val_fraction, workers=workers, ray_address=ray_address,
                        files_per_task=files_per_task, dataset_layout=dataset_layout).manifest


def build_corpus(source: str | Path, *, out_dir: Path | str, view_spec: ViewSpec = ViewSpec(),
                 pixel_limit: int = DEFAULT_PIXEL_LIMIT, min_side: int = MIN_SIDE,
                 val_fraction: float = DEFAULT_VAL_FRACTION, workers: int | None = 0,
                 ray_address: str | None = None, files_per_task: int = FILES_PER_TASK,
                 on_done: Callable[[int], None] | None = None, dataset_layout: str = "files") -> CorpusReport:
    """`build_manifest`, reporting the parts built and reused (a killed build resumes from its parts).

    dataset_layout "files" (default): any source of images (stages/corpus/sources.py), splits from the
    content hash. Otherwise SOURCE is a local evaluation dataset in that released layout: splits, labels,
    annotation paths and the class list come from the layout (val_fraction is not used: 0.0 is recorded)."""
    t0 = time.perf_counter()
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if pixel_limit < 1 or min_side < 1:
        raise ValueError(f"pixel_limit and min_side must be >= 1, got {pixel_limit}, {min_side}")
    out_dir = as_location(out_dir)
    dataset = None
    if check_layout(dataset_layout) == "files":
        src = list_source(source)
    else:
        if is_url(str(source)):
            raise ValueError(f"--layout {dataset_layout} reads a local dataset folder, got {source}; copy the "
                             "dataset to a local folder first")
        parsed = parse_dataset(dataset_layout, Path(source), name=_dataset_name(out_dir))
        src, dataset, val_fraction = dataset_source(parsed, str(source)), parsed.info, 0.0
    options = CorpusOptions(view_spec, pixel_limit, min_side, val_fraction, dataset)
    units = plan_units(src, options, files_per_task=files_per_task)
    if not is_url(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    parts = run_parts(units, options, out_dir, workers=workers, ray_address=ray_address, on_done=on_done)
    meta = manifest_metadata(view_spec=view_spec, source=_portable(src.text, out_dir),
                             image_root=_portable(src.base, out_dir), pixel_limit=pixel_limit, min_side=min_side,
                             val_fraction=val_fraction, dataset=dataset)
    path = layout.manifest_path(out_dir)
    with ManifestWriter(path, num_views=view_spec.num_views, metadata=meta, located=src.has_shards,
                        dataset=dataset is not None) as writer:
        merge_parts(units, out_dir, writer, located=src.has_shards)
        writer.finish(before_write=lambda new: refuse_orphaning_stores(out_dir, new))
    removed = drop_stale_parts(out_dir, {u.key for u in units})
    return CorpusReport(read_manifest(path), parts, len(units), time.perf_counter() - t0, removed)


def _dataset_name(out_dir) -> str:
    """An evaluation dataset's name (its metrics go under bench/<name>/): the output root's folder name."""
    return str(out_dir).rstrip("/").rsplit("/", 1)[-1]


def refuse_orphaning_stores(root, new_hash: str) -> None:
    """ValueError when `root` holds teacher stores built from its current manifest and a manifest with
    another hash is about to replace it: the stores' image ids would then mean other images (extraction
    and training refuse them by hash). The same corpus and options give the same bytes, so re-running
    `pipeline corpus` unchanged is always allowed."""
    import json

    from store_schema.location import read_bytes
    from store_schema.manifest import manifest_hash

    path = layout.manifest_path(root)
    if not is_file(path):
        return
    old_hash = manifest_hash(path)
    if old_hash == new_hash:
        return
    built = []
    for name in layout.list_teacher_stores(root):
        # the store's group attributes, read as JSON: no zarr / torch import in the corpus command (with
        # pyarrow loaded, that import made the process abort at exit now and then)
        try:
            attrs = json.loads(read_bytes(layout.store_file(layout.teacher_store_path(root, name), layout.ZARR_JSON)))
            store_hash = attrs["attributes"]["manifest_hash"]
        except (OSError, ValueError, KeyError, TypeError):  # unreadable: it may still be the user's data, so it counts
            store_hash = old_hash
        if store_hash == old_hash:
            built.append(name)
    if built:
        raise ValueError(
            f"{root} holds teacher stores built from its current manifest ({old_hash[:12]}...): "
            f"{', '.join(built)}. The new corpus gives another manifest ({new_hash[:12]}...), which would orphan "
            f"them (their image ids would mean other images). Write it to a new root (`--out NEW_ROOT`), or "
            f"remove those stores first ({', '.join(str(layout.teacher_store_path(root, n)) for n in built)}); "
            f"the current manifest is kept")


def bad_summary(manifest: Manifest, *, first: int = 3) -> list[str]:
    """Lines summarizing the manifest's bad images: count per reason (the text before its first ':'), most
    frequent first, with the first few uris of each. Empty when every image is ok."""
    groups: dict[str, list[str]] = {}
    for i in np.flatnonzero(~manifest.ok_N):
        groups.setdefault(manifest.reasons[i].split(":")[0].strip() or "unknown", []).append(manifest.uris[i])
    lines = []
    for reason, uris in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        more = f", ... {len(uris) - first} more" if len(uris) > first else ""
        lines.append(f"  {len(uris)} {reason}: {', '.join(uris[:first])}{more}")
    return lines


def _portable(path: str | Path, out_dir: Path | str) -> str:
    """path relative to out_dir (so a moved corpus + manifest pair keeps its hash), posix separators;
    absolute when the manifest goes to object storage (no common folder); a URL as it is."""
    path = str(path)
    if is_url(path):
        return path
    if is_url(out_dir):
        return Path(os.path.abspath(path)).as_posix()
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()
