"""manifest.parquet: one row per image, with its fixed views; columns, read / write and content hash.

The store records a fixed set of views per image (crop box + flip, drawn deterministically from a seed)
shared by all teachers, so stage two samples among stored views (FKD, Shen & Xing, arXiv 2112.01528, as
used for offline agglomerative distillation, AM-RADIO arXiv 2312.06709). The file is written
deterministically, so its sha256 (the manifest hash) identifies the corpus + views a store was built from.

Shape legend: N images, V views per image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store_schema import location

from store_schema.errors import DamagedManifestError, ManifestError, StoreNotFoundError

STATUS_OK, STATUS_BAD = "ok", "bad"
SPLITS = ("train", "val")
_META_KEYS = ("view_spec", "source", "image_root", "pixel_limit", "min_side", "val_fraction")

# Evaluation datasets (`pipeline corpus --layout imagefolder|ade20k|voc|depth`, stages/corpus/layouts.py)
# add these string columns after the base ones ("" where a row has none: no label, no mask, ...) and the
# key-value metadata DATASET_KEY (JSON: layout, name, classes, class_names, mask_offset, depth_scale,
# intrinsics, normals; see DatasetInfo). Paths are relative to image_root, like uri. A manifest without
# DATASET_KEY has exactly the base columns, so manifests of training corpora read back (and hash) unchanged.
DATASET_COLUMNS: tuple[str, ...] = ("label", "mask_uri", "depth_uri", "normals_uri")
DATASET_KEY = "dataset"


@dataclass(frozen=True)
class ViewSpec:
    """How the V views of each image are drawn (RandomResizedCrop-style in normalized coordinates)."""

    num_views: int = 1
    seed: int = 0
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.scale}")
        if len(self.ratio) != 2 or not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {self.ratio}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")

    def to_dict(self) -> dict[str, Any]:
        return {"num_views": int(self.num_views), "seed": int(self.seed), "scale": list(self.scale),
                "ratio": list(self.ratio), "flip_p": float(self.flip_p)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViewSpec":
        return cls(num_views=int(d["num_views"]), seed=int(d["seed"]), scale=tuple(d["scale"]),
                   ratio=tuple(d["ratio"]), flip_p=float(d["flip_p"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def manifest_schema(num_views: int, *, dataset: bool = False) -> pa.Schema:
    """The Arrow schema of manifest.parquet for V views (with DATASET_COLUMNS for an evaluation dataset)."""
    return pa.schema([
        ("id", pa.int64()), ("uri", pa.string()), ("sha256", pa.string()), ("size_bytes", pa.int64()),
        ("width", pa.int32()), ("height", pa.int32()), ("mode", pa.string()), ("split", pa.string()),
        ("status", pa.string()), ("reason", pa.string()),
        ("view_boxes", pa.list_(pa.float64(), 4 * num_views)),
        ("view_flips", pa.list_(pa.bool_(), num_views)),
        *([(c, pa.string()) for c in DATASET_COLUMNS] if dataset else []),
    ])


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset layout records about the whole dataset (the manifest's DATASET_KEY metadata).

    classes: class labels in class-id order (imagefolder: the class folders; ade20k / voc: mask value
    ``mask_offset + k`` is class k); class_names: the names used in prompts (same order). mask_offset:
    ADE20k stores class k as k + 1 with 0 = "other" (ignored, as the usual protocol does: -1 becomes
    255), VOC stores k with 255 = boundary (ignored). depth_scale: metres per unit of the 16-bit depth
    PNGs; intrinsics: {fx, fy, cx, cy} in pixels (needed to derive normals from depth); normals: "dataset"
    (normals PNGs given) or "from depth"."""

    layout: str
    name: str
    classes: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    mask_offset: int = 0
    depth_scale: float | None = None
    intrinsics: dict[str, float] | None = None
    normals: str | None = None

    def to_json(self) -> str:
        return json.dumps({"layout": self.layout, "name": self.name, "classes": list(self.classes),
                           "class_names": list(self.class_names), "mask_offset": self.mask_offset,
                           "depth_scale": self.depth_scale, "intrinsics": self.intrinsics,
                           "normals": self.normals}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetInfo":
        d = json.loads(text)
        return cls(layout=d["layout"], name=d["name"], classes=tuple(d["classes"]),
                   class_names=tuple(d["class_names"]), mask_offset=int(d["mask_offset"]),
                   depth_scale=d["depth_scale"], intrinsics=d["intrinsics"], normals=d["normals"])


@dataclass(frozen=True)
class ManifestRow:
    """One image as the manifest records it (id is assigned by write_manifest from the sorted uris)."""

    uri: str
    sha256: str
    size_bytes: int
    width: int
    height: int
    mode: str
    split: str
    status: str
    reason: str
    boxes_V4: np.ndarray
    flips_V: np.ndarray
    label: str = ""  # DATASET_COLUMNS, written only for an evaluation dataset
    mask_uri: str = ""
    depth_uri: str = ""
    normals_uri: str = ""


def write_manifest(path: Path, rows: list[ManifestRow], *, view_spec: ViewSpec, source: str,
                   image_root: str, pixel_limit: int, min_side: int, val_fraction: float,
                   before_write: Callable[[str], None] | None = None, dataset: DatasetInfo | None = None) -> str:
    """Write manifest.parquet deterministically (rows sorted by uri, no timestamps); returns its hash.

    before_write(new_hash) runs before the file is touched (it may raise to keep the old manifest).

    image_root: folder the relative uris resolve against, relative to the manifest's folder (or absolute).
    dataset: an evaluation dataset's layout facts; adds DATASET_COLUMNS and the DATASET_KEY metadata.
    """
    rows = sorted(rows, key=lambda r: r.uri)
    uris = [r.uri for r in rows]
    if len(set(uris)) != len(uris):
        dup = sorted({u for u in uris if uris.count(u) > 1})
        raise ValueError(f"duplicate uris in the manifest: {dup[:5]}")
    V = view_spec.num_views
    for r in rows:
        assert r.boxes_V4.shape == (V, 4) and r.flips_V.shape == (V,), r.uri
        assert r.split in SPLITS and r.status in (STATUS_OK, STATUS_BAD), r.uri
    schema = manifest_schema(V, dataset=dataset is not None)
    columns = {
        "id": np.arange(len(rows), dtype=np.int64), "uri": uris, "sha256": [r.sha256 for r in rows],
        "size_bytes": [r.size_bytes for r in rows], "width": [r.width for r in rows],
        "height": [r.height for r in rows], "mode": [r.mode for r in rows], "split": [r.split for r in rows],
        "status": [r.status for r in rows], "reason": [r.reason for r in rows],
        "view_boxes": [r.boxes_V4.astype(np.float64).reshape(-1).tolist() for r in rows],
        "view_flips": [r.flips_V.astype(bool).tolist() for r in rows],
    }
    meta = {"view_spec": view_spec.to_json(), "source": source, "image_root": image_root,
            "pixel_limit": str(int(pixel_limit)), "min_side": str(int(min_side)),
            "val_fraction": repr(float(val_fraction))}
    if dataset is not None:
        columns.update({c: [getattr(r, c) for r in rows] for c in DATASET_COLUMNS})
        meta[DATASET_KEY] = dataset.to_json()
    table = pa.table(columns, schema=schema.with_metadata(meta))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=False, use_dictionary=False)
    data = sink.getvalue().to_pybytes()
    if before_write is not None:
        before_write(hashlib.sha256(data).hexdigest())
    location.write_bytes(location.as_location(path), data)  # whole or not at all
    return manifest_hash(path)


MANIFEST_RECOVERY = ("Rebuild it with `pipeline corpus SOURCE --out ROOT` and the options it was built with (a "
                     "manifest is written deterministically: the same corpus and options give the same bytes, "
                     "so the stores built from it stay valid), or restore it from a backup")


def manifest_hash(path: Path) -> str:
    """sha256 (hex) of the manifest file's bytes."""
    path = location.as_location(path)
    if not location.is_file(path):
        raise StoreNotFoundError(f"no manifest at {path}")
    return hashlib.sha256(location.read_bytes(path)).hexdigest()


class Manifest:
    """Read-only view of manifest.parquet. Use read_manifest(path) to build one."""

    def __init__(self, path: Path, table: pa.Table, digest: str) -> None:
        self.path = location.as_location(path)
        self.hash = digest
        self.table = table
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise ManifestError(f"{path}: missing key-value metadata {missing}")
        self.metadata: dict[str, str] = meta
        self.view_spec = ViewSpec.from_dict(json.loads(meta["view_spec"]))
        self.source: str = meta["source"]
        self.image_root: Path = _image_root(self.path, meta["image_root"])
        self.pixel_limit = int(meta["pixel_limit"])
        self.min_side = int(meta["min_side"])
        self.val_fraction = float(meta["val_fraction"])
        self.dataset: DatasetInfo | None = (DatasetInfo.from_json(meta[DATASET_KEY]) if DATASET_KEY in meta
                                            else None)
        self._validate()
        N, V = table.num_rows, self.view_spec.num_views
        self.num_images: int = N
        self.ids: np.ndarray = table.column("id").to_numpy()
        self.uris: list[str] = table.column("uri").to_pylist()
        self.sha256: list[str] = table.column("sha256").to_pylist()
        self.ok_N: np.ndarray = np.asarray(table.column("status").to_pylist()) == STATUS_OK
        self.split: np.ndarray = np.asarray(table.column("split").to_pylist(), dtype=str)
        self.reasons: list[str] = table.column("reason").to_pylist()
        boxes = table.column("view_boxes").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        flips = table.column("view_flips").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self.view_boxes_NV4: np.ndarray = np.asarray(boxes, np.float64).reshape(N, V, 4)
        self.view_flips_NV: np.ndarray = np.asarray(flips, bool).reshape(N, V)
        # evaluation datasets only (None otherwise): per row, "" where the row has none
        cols = {c: table.column(c).to_pylist() if self.dataset else None for c in DATASET_COLUMNS}
        self.labels: list[str] | None = cols["label"]
        self.mask_uris: list[str] | None = cols["mask_uri"]
        self.depth_uris: list[str] | None = cols["depth_uri"]
        self.normals_uris: list[str] | None = cols["normals_uri"]

    def _validate(self) -> None:
        expected = manifest_schema(self.view_spec.num_views, dataset=self.dataset is not None)
        found = self.table.schema.remove_metadata()
        if not found.equals(expected):
            raise ManifestError(f"{self.path}: schema mismatch: expected {expected}, found {found}")
        ids = self.table.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(len(ids))):
            raise ManifestError(f"{self.path}: ids are not 0..N-1 in order")

    def image_path(self, i: int) -> Path:
        """Filesystem path of image i (relative uris resolve against image_root)."""
        return self.image_root / self.uris[i]

    def dataset_path(self, column: str, i: int) -> Path | None:
        """Filesystem path of row i's mask / depth / normals file (a DATASET_COLUMNS path column), None when
        the row has none or the manifest is not an evaluation dataset."""
        values = {"mask_uri": self.mask_uris, "depth_uri": self.depth_uris, "normals_uri": self.normals_uris}[column]
        return self.image_root / values[i] if values and values[i] else None

    def split_ids(self, split: str, *, ok_only: bool = True) -> np.ndarray:
        """Ids of one split ("train" / "val"), by default only images with status ok."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        mask = self.split == split
        if ok_only:
            mask &= self.ok_N
        return self.ids[mask]

    def __repr__(self) -> str:
        return (f"Manifest({self.path}, images={self.num_images}, ok={int(self.ok_N.sum())}, "
                f"views={self.view_spec.num_views}, hash={self.hash[:12]})")


def _image_root(manifest: location.Location, image_root: str) -> Path:
    """The folder relative uris resolve against: image_root is absolute, or relative to a local manifest."""
    if Path(image_root).is_absolute():
        return Path(image_root)
    if location.is_url(manifest):
        raise ManifestError(f"{manifest}: image_root {image_root!r} is relative, which a manifest on object "
                            "storage cannot resolve; rebuild it with `pipeline corpus` (writes absolute paths)")
    return Path(manifest).parent / image_root


def read_manifest(path: Path) -> Manifest:
    """Read and validate manifest.parquet (a local file or an fsspec URL); the hash is the sha256 of the
    file bytes. Truncated or altered bytes raise DamagedManifestError naming the file and how to rebuild it."""
    path = location.as_location(path)
    if not location.is_file(path):
        raise StoreNotFoundError(f"no manifest at {path}")
    data = location.read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:  # truncated or altered bytes: parquet cannot decode it
        raise DamagedManifestError(path, f"parquet cannot read it ({str(e).splitlines()[0][:160]})",
                                   MANIFEST_RECOVERY) from e
    try:
        return Manifest(path, table, digest)
    except ManifestError as e:
        raise DamagedManifestError(path, str(e).removeprefix(f"{path}: "), MANIFEST_RECOVERY) from e
    except (KeyError, ValueError, TypeError) as e:  # metadata that parses but holds nonsense
        raise DamagedManifestError(path, f"its metadata does not parse ({e})", MANIFEST_RECOVERY) from e
