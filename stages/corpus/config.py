"""The corpus stage's settings (`pipeline corpus`, params.yaml's `corpus:` section): the stored views of
offline distillation (AM-RADIO, arXiv 2312.06709) and the rules that mark an image bad or held out.

The one place these defaults are declared: the command's option defaults and params.yaml's missing keys
both come from `CorpusConfig()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.corpus.build_manifest import DEFAULT_VAL_FRACTION
from stages.corpus.build_runner import FILES_PER_TASK
from stages.corpus.images import DEFAULT_PIXEL_LIMIT, MIN_SIDE
from store_schema.manifest import ViewSpec


@dataclass(frozen=True)
class CorpusConfig:
    """source: folder / list / Parquet of images or WebDataset tar shards (no default: an input). views:
    stored views per image (view 0 is the full image); view_seed: seed of the view draw; val_fraction: share of images (by content hash)
    in the val split; min_side / pixel_limit: smaller / larger images are recorded as bad; files_per_task: image
    files per unit of the build (a Ray task; each WebDataset tar shard is one unit whatever its size)."""

    source: Path | None = None
    views: int = ViewSpec.num_views
    view_seed: int = ViewSpec.seed
    val_fraction: float = DEFAULT_VAL_FRACTION
    min_side: int = MIN_SIDE
    pixel_limit: int = DEFAULT_PIXEL_LIMIT
    files_per_task: int = FILES_PER_TASK
