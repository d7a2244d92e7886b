"""<root>/student_views/<size>px.zarr: the manifest's views rendered once at the student's input size.

Stage two of offline agglomerative distillation (AM-RADIO, arXiv 2312.06709) shows the student the same
crop and flip of an image that each teacher saw (the manifest's fixed views, FKD arXiv 2112.01528).
Decoding the image file and rendering that view again every epoch costs the loader about as much CPU as
reading all four paper teachers' targets (docs/STAGE_TWO.md), so `pipeline views --size S` renders every
view once, with the loader's own code (`stages.corpus.samples.load_checked_for_views` +
`stages.corpus.views.render_view`: the same pixels, bit for bit), into this store, and the loader reads
them like targets (`store_schema.shard_reader`, one read per unit per epoch).

Layout (standard Zarr v3, like a teacher store): `views` uint8 [N, V, S, S, 3] sharded by `shard_size`
images, one image per inner chunk (Blosc lz4, crc32c); `valid` bool [N] (the image's views were rendered;
False: it no longer decoded or changed since the manifest, and the loader decodes it, failing as it would
without this store); `shards/complete` uint8 [num shards], set after a shard's data, so an interrupted
render resumes at the first missing shard and never reads a half-written one as done.

Shape legend: N images, V views, S view side in pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from store_schema import layout, location
from store_schema.errors import StoreMismatchError, StoreNotFoundError, StoreReadOnlyError
from store_schema.atomic_create import build_then_rename
from store_schema.io_errors import write_guard
from store_schema.manifest import Manifest
from store_schema.shard_writer import ShardWriter
from store_schema.teacher_store import _json_norm, code_version

# What the pixels are a function of besides the manifest: bump when the rendering recipe changes.
RENDER_RECIPE = {"version": 1, "decode": "PIL, JPEG draft at the scale every view of the image allows",
                 "resample": "bicubic", "flip": "after resize"}
VIEW_CODEC = {"cname": "lz4", "clevel": 5, "shuffle": "noshuffle"}  # uint8 pixels: speed over size
_NOT_COMPLETE = "the shard is not marked complete (complete shards are kept)"


def _render_attr() -> dict[str, Any]:
    return {**RENDER_RECIPE, "pillow": PIL.__version__}


def create_view_store(path: Path | str, *, manifest: Manifest, size: int, shard_size: int) -> "ViewStore":
    """Create the student-view store for a manifest at `size`, or reopen a compatible one (idempotent).

    An existing store of another manifest, view spec, size, shard size or rendering recipe raises
    StoreMismatchError naming the expected and the found value (remove it, or render into another root)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    attrs = _json_norm({
        "schema_version": layout.SCHEMA_VERSION, "code_version": code_version(), "kind": layout.VIEW_STORE_KIND,
        "manifest_hash": manifest.hash, "view_spec": manifest.view_spec.to_dict(), "size": int(size),
        "shard_size": int(shard_size), "num_images": manifest.num_images,
        "num_views": manifest.view_spec.num_views, "render": _render_attr(),
    })
    path = location.as_location(path)
    if location.is_file(layout.store_file(path, layout.ZARR_JSON)):
        store = open_view_store(path, expect_manifest_hash=manifest.hash, mode="r+")
        for key in ("view_spec", "size", "shard_size", "num_images", "num_views"):
            if store.attrs[key] != attrs[key]:
                raise StoreMismatchError(path, key, expected=attrs[key], found=store.attrs[key])
        found = {k: v for k, v in store.attrs["render"].items() if k != "pillow"}
        if found != _json_norm(RENDER_RECIPE):
            raise StoreMismatchError(path, "render", expected=RENDER_RECIPE, found=store.attrs["render"],
                                     hint="the views were rendered by another recipe: remove the store and "
                                          "run `pipeline views` again")
        return store
    if location.is_url(path):
        raise ValueError(f"student views are rendered into a local or shared filesystem root, not {path}; the "
                         "loader decodes the images instead when no view store exists")
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise StoreMismatchError(path, "store", expected="a zarr v3 group or nothing",
                                 found="a non-empty folder without zarr.json")
    build_then_rename(path, lambda tmp: _create_arrays(tmp, attrs), what=f"the new view store {path}")
    return open_view_store(path, mode="r+")


def _create_arrays(path: Path, attrs: dict) -> None:
    N, V, S, U = attrs["num_images"], attrs["num_views"], attrs["size"], attrs["shard_size"]
    group = zarr.open_group(path, mode="w-", zarr_format=3, attributes=attrs)
    group.create_array(layout.VIEWS, shape=(N, V, S, S, 3), chunks=(1, V, S, S, 3), shards=(U, V, S, S, 3),
                       dtype="uint8", fill_value=0, dimension_names=layout.DIMS_VIEWS,
                       compressors=[BloscCodec(**VIEW_CODEC), Crc32cCodec()])
    exact = dict(compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle"), Crc32cCodec()])
    group.create_array(layout.VALID, shape=(N,), chunks=(U,), dtype="bool", fill_value=False,
                       dimension_names=("image",), **exact)
    group.create_array(layout.SHARDS_COMPLETE, shape=(-(-N // U),), chunks=(1,), dtype="uint8", fill_value=0,
                       dimension_names=("shard",), **exact)


def open_view_store(path: Path | str, *, expect_manifest_hash: str | None = None, mode: str = "r") -> "ViewStore":
    """Open an existing student-view store; StoreNotFoundError when there is none, StoreMismatchError when
    it is not one (missing attributes, another schema) or not of the expected manifest."""
    path = location.as_location(path)
    if mode not in ("r", "r+"):
        raise ValueError(f"unknown mode {mode!r}; valid modes: r, r+")
    if not location.is_file(layout.store_file(path, layout.ZARR_JSON)):
        raise StoreNotFoundError(f"no student-view store at {path} (expected a zarr v3 group with zarr.json; "
                                 "`pipeline views --size S` renders one)")
    group = zarr.open_group(path, mode=mode, zarr_format=3)
    attrs = dict(group.attrs)
    missing = [k for k in layout.VIEW_STORE_ATTRS if k not in attrs]
    if missing or attrs.get("kind") != layout.VIEW_STORE_KIND:
        raise StoreMismatchError(path, "required attributes", expected=list(layout.VIEW_STORE_ATTRS),
                                 found=sorted(attrs))
    if attrs["schema_version"] != layout.SCHEMA_VERSION:
        raise StoreMismatchError(path, "schema_version", expected=layout.SCHEMA_VERSION, found=attrs["schema_version"])
    if expect_manifest_hash is not None and attrs["manifest_hash"] != expect_manifest_hash:
        raise StoreMismatchError(path, "manifest_hash", expected=expect_manifest_hash, found=attrs["manifest_hash"],
                                 hint="the views were rendered from another manifest: remove the store and run "
                                      "`pipeline views` again")
    return ViewStore(path, group, attrs, writable=mode == "r+")


class ViewStore:
    """Typed view of one <size>px.zarr. Build it with create_view_store / open_view_store."""

    def __init__(self, path: Path | str, group: zarr.Group, attrs: dict, *, writable: bool) -> None:
        self.path, self.group, self.attrs, self.writable = location.as_location(path), group, attrs, writable
        self.manifest_hash: str = attrs["manifest_hash"]
        self.size = int(attrs["size"])
        self.shard_size = int(attrs["shard_size"])
        self.num_images = int(attrs["num_images"])
        self.num_views = int(attrs["num_views"])
        self.num_shards = -(-self.num_images // self.shard_size)
        self.views: zarr.Array = group[layout.VIEWS]
        self.valid: zarr.Array = group[layout.VALID]
        self._complete: zarr.Array = group[layout.SHARDS_COMPLETE]
        want = (self.num_images, self.num_views, self.size, self.size, 3)
        if tuple(self.views.shape) != want or str(self.views.dtype) != "uint8":
            raise StoreMismatchError(self.path, "views array", expected=f"uint8{list(want)}",
                                     found=f"{self.views.dtype}{list(self.views.shape)}")
        self._writer: ShardWriter | None = None

    def __repr__(self) -> str:
        return (f"ViewStore({self.path}, size={self.size}, images={self.num_images}, views={self.num_views}, "
                f"shards={len(self.completed_shards())}/{self.num_shards} complete)")

    def shard_range(self, k: int) -> tuple[int, int]:
        """Images [start, end) of shard k."""
        if not 0 <= k < self.num_shards:
            raise ValueError(f"shard {k} out of range [0, {self.num_shards})")
        return k * self.shard_size, min((k + 1) * self.shard_size, self.num_images)

    def write_shard(self, k: int, views_SVHW3: np.ndarray, valid_S: np.ndarray) -> None:
        """Write all images of shard k (clears its complete flag first; idempotent)."""
        if not self.writable:
            raise StoreReadOnlyError(f"{self.path} was opened read-only; open it with mode='r+' to write")
        a, b = self.shard_range(k)
        want = (b - a, self.num_views, self.size, self.size, 3)
        if views_SVHW3.shape != want or views_SVHW3.dtype != np.uint8:
            raise ValueError(f"shard {k} of {self.path} holds uint8{list(want)}, got "
                             f"{views_SVHW3.dtype}{list(views_SVHW3.shape)}")
        if valid_S.shape != (b - a,):
            raise ValueError(f"valid_S must have shape {(b - a,)}, got {valid_S.shape}")
        with write_guard(self.path, f"shard {k} of {self.path}", kept=_NOT_COMPLETE):
            if self._complete[k] == 1:
                self._complete[k] = 0
            if self._writer is None:
                self._writer = ShardWriter(self.views)
            self._writer.write(k, views_SVHW3)
            self.valid[a:b] = np.asarray(valid_S, bool)

    def mark_complete(self, k: int) -> None:
        """Mark shard k complete (the driver calls this after the shard's data)."""
        if not self.writable:
            raise StoreReadOnlyError(f"{self.path} was opened read-only; open it with mode='r+' to write")
        self.shard_range(k)
        with write_guard(self.path, f"the complete flag of shard {k} of {self.path}", kept=_NOT_COMPLETE):
            self._complete[k] = 1

    def completed_shards(self) -> np.ndarray:
        return np.flatnonzero(np.asarray(self._complete[:]) == 1)

    def pending_shards(self) -> np.ndarray:
        return np.flatnonzero(np.asarray(self._complete[:]) != 1)

    @property
    def complete(self) -> bool:
        return len(self.pending_shards()) == 0

    def fingerprint(self) -> dict[str, Any]:
        """What the store holds, in a few bytes (a DVC receipt)."""
        return {"manifest_hash": self.manifest_hash, "size": self.size, "shard_size": self.shard_size,
                "render": self.attrs["render"], "complete_shards": [int(k) for k in self.completed_shards()],
                "invalid_images": int(self.num_images - np.count_nonzero(self.valid[:]))}
