"""On-disk caches of evaluation: a run's student features over a dataset, a dataset's training targets.

Evaluation at the papers' scale (PHI-S arXiv 2410.01680, AM-RADIO arXiv 2312.06709: ImageNet-1k kNN over
1.28M images, ADE20k probes over 20,210 feature maps) cannot hold its features in memory, and probes run
many passes over them. Both caches are Zarr v3 groups of arrays over the N images of a dataset manifest,
filled block by block (``block_size`` images; a block's complete flag is written after its data, so an
interrupted fill resumes at the first incomplete block) and keyed: the group's ``key`` attribute holds
what its values are a function of (for a feature cache the run's fingerprint and checkpoint step and the
manifest hash; for targets the manifest hash and the side). A cache whose key differs is stale: it is
removed and filled again, never read.

Arrays of more than two dimensions (feature maps, target maps) hold one image per inner chunk inside
block-sized shards; vectors (summaries) one block per chunk. Values as given (the feature cache stores
feature maps as bf16 bit patterns, ``store_schema.codecs``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from store_schema.atomic_create import build_then_rename

COMPLETE = "blocks/complete"
_COMPRESSORS = [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"), Crc32cCodec()]


class BlockCache:
    """A keyed Zarr group of per-image arrays filled block by block. Use `open_block_cache`."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path, self.group = Path(path), group
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.num_images: int = int(self.attrs["num_images"])
        self.block_size: int = int(self.attrs["block_size"])
        self.num_blocks: int = -(-self.num_images // self.block_size)

    def array(self, name: str) -> zarr.Array:
        return self.group[name]

    def block_range(self, k: int) -> tuple[int, int]:
        return k * self.block_size, min((k + 1) * self.block_size, self.num_images)

    def incomplete_blocks(self) -> list[int]:
        done = np.asarray(self.group[COMPLETE][:], bool)
        return [int(k) for k in np.flatnonzero(~done)]

    def write_block(self, k: int, values: dict[str, np.ndarray]) -> None:
        """Write every array's rows of block k, then mark it complete."""
        lo, hi = self.block_range(k)
        for name, v in values.items():
            self.group[name][lo:hi] = v
        self.group[COMPLETE][k] = 1

    def read(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any order) of one array."""
        return read_rows(self.group[name], ids)


def read_rows(array: zarr.Array, ids: np.ndarray, *index: Any) -> np.ndarray:
    """array[ids, *index] for ids in any order, read as one slice per run of consecutive ids (zarr's
    orthogonal indexing with an integer array is ~20x slower than slices on sharded arrays here)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    breaks = np.flatnonzero(np.diff(sorted_ids) != 1) + 1
    parts = [array[(slice(int(run[0]), int(run[-1]) + 1), *index)] for run in np.split(sorted_ids, breaks) if len(run)]
    if not parts:
        return np.empty((0, *array[(slice(0, 0), *index)].shape[1:]), array.dtype)
    values = np.concatenate(parts) if len(parts) > 1 else parts[0]
    out = np.empty_like(values)
    out[order] = values
    return out


def open_block_cache(path: Path, *, kind: str, key: dict[str, Any], num_images: int, block_size: int,
                     arrays: dict[str, tuple[tuple[int, ...], str]]) -> tuple[BlockCache, str]:
    """(cache, what happened: "reused" | "created" | "invalidated (<key field> changed)").

    arrays: name -> (per-image shape, dtype). An existing cache of the same kind and key is reused as it
    is (its complete blocks kept); one with another key or layout is removed and created afresh."""
    path = Path(path)
    attrs = {"kind": kind, "key": _json_safe(key), "num_images": int(num_images), "block_size": int(block_size),
             "arrays": {n: [list(s), d] for n, (s, d) in arrays.items()}}
    what = "created"
    if (path / "zarr.json").is_file():
        found = dict(zarr.open_group(path, mode="r", zarr_format=3).attrs)
        if all(found.get(k) == attrs[k] for k in attrs):
            return BlockCache(path, zarr.open_group(path, mode="r+", zarr_format=3)), "reused"
        changed = sorted({k for k in attrs["key"] if found.get("key", {}).get(k) != attrs["key"][k]}) or ["layout"]
        what = f"invalidated ({', '.join(changed)} changed)"
        shutil.rmtree(path)
    elif path.exists():
        shutil.rmtree(path)  # a folder without zarr.json: an interrupted creation of ours
    build_then_rename(path, lambda tmp: _create(tmp, attrs, arrays), what=f"the evaluation cache {path}")
    return BlockCache(path, zarr.open_group(path, mode="r+", zarr_format=3)), what


def _create(path: Path, attrs: dict, arrays: dict[str, tuple[tuple[int, ...], str]]) -> None:
    N, U = attrs["num_images"], attrs["block_size"]
    group = zarr.open_group(path, mode="w-", zarr_format=3, attributes=attrs)
    for name, (shape, dtype) in arrays.items():
        if len(shape) <= 1:
            group.create_array(name, shape=(N, *shape), chunks=(U, *shape), dtype=dtype, fill_value=0,
                               compressors=_COMPRESSORS)
        else:
            group.create_array(name, shape=(N, *shape), chunks=(1, *shape), shards=(U, *shape), dtype=dtype,
                               fill_value=0, compressors=_COMPRESSORS)
    group.create_array(COMPLETE, shape=(-(-N // U),), chunks=(1,), dtype="uint8", fill_value=0,
                       compressors=_COMPRESSORS)


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(d, sort_keys=True, default=str))
