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
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Sequence
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
# add these string columns after the others ("" where a row has none: no label, no mask, ...) and the
# key-value metadata DATASET_KEY (JSON: layout, name, classes, class_names, mask_offset, depth_scale,
# intrinsics, normals; see DatasetInfo). Paths are relative to image_root, like uri. A manifest without
# DATASET_KEY has no such columns, so manifests of training corpora read back (and hash) unchanged.
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


# Columns of a manifest whose images live inside WebDataset tar shards ("located" manifests): the shard
# (relative to image_root, or absolute), the member's name, the byte range of its data inside the shard
# (so a reader fetches one image with one ranged read, never a tar scan), and the sample's sidecar
# members (.json / .txt / .cls) as one JSON object {extension: text}, "" when there are none.
LOCATED_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("shard", pa.string()), ("member", pa.string()), ("offset", pa.int64()), ("length", pa.int64()),
    ("sidecars", pa.string()),
)
ROW_GROUP_ROWS = 65_536  # rows per Parquet row group: a reader or the build never holds more than a few


def manifest_schema(num_views: int, *, located: bool = False, dataset: bool = False) -> pa.Schema:
    """The Arrow schema of manifest.parquet for V views; `located` adds LOCATED_COLUMNS (tar members),
    `dataset` DATASET_COLUMNS (an evaluation dataset's labels and annotation paths), in that order.

    A manifest of plain image files keeps the original columns, so its bytes (and hash) are unchanged."""
    return pa.schema([
        ("id", pa.int64()), ("uri", pa.string()), ("sha256", pa.string()), ("size_bytes", pa.int64()),
        ("width", pa.int32()), ("height", pa.int32()), ("mode", pa.string()), ("split", pa.string()),
        ("status", pa.string()), ("reason", pa.string()),
        ("view_boxes", pa.list_(pa.float64(), 4 * num_views)),
        ("view_flips", pa.list_(pa.bool_(), num_views)),
        *(LOCATED_COLUMNS if located else ()),
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
    shard: str = ""  # located manifests only (tar members): see LOCATED_COLUMNS
    member: str = ""
    offset: int = 0
    length: int = 0
    sidecars: str = ""
    label: str = ""  # evaluation datasets only: see DATASET_COLUMNS
    mask_uri: str = ""
    depth_uri: str = ""
    normals_uri: str = ""


def rows_table(rows: list[ManifestRow], *, num_views: int, located: bool, dataset: bool = False) -> pa.Table:
    """The rows as an Arrow table of the manifest's columns without `id`, in the given order."""
    V = num_views
    for r in rows:
        assert r.boxes_V4.shape == (V, 4) and r.flips_V.shape == (V,), r.uri
        assert r.split in SPLITS and r.status in (STATUS_OK, STATUS_BAD), r.uri
    columns = {
        "uri": [r.uri for r in rows], "sha256": [r.sha256 for r in rows],
        "size_bytes": [r.size_bytes for r in rows], "width": [r.width for r in rows],
        "height": [r.height for r in rows], "mode": [r.mode for r in rows], "split": [r.split for r in rows],
        "status": [r.status for r in rows], "reason": [r.reason for r in rows],
        "view_boxes": [r.boxes_V4.astype(np.float64).reshape(-1).tolist() for r in rows],
        "view_flips": [r.flips_V.astype(bool).tolist() for r in rows],
    }
    if located:
        for name, _ in LOCATED_COLUMNS:
            columns[name] = [getattr(r, name) for r in rows]
    if dataset:
        columns.update({c: [getattr(r, c) for r in rows] for c in DATASET_COLUMNS})
    schema = manifest_schema(V, located=located, dataset=dataset)
    return pa.table(columns, schema=pa.schema([f for f in schema if f.name != "id"]))


def write_manifest(path: Path, rows: list[ManifestRow], *, view_spec: ViewSpec, source: str,
                   image_root: str, pixel_limit: int, min_side: int, val_fraction: float,
                   before_write: Callable[[str], None] | None = None, located: bool = False,
                   dataset: DatasetInfo | None = None) -> str:
    """Write manifest.parquet deterministically (rows sorted by uri, no timestamps); returns its hash.

    before_write(new_hash) runs before the file is touched (it may raise to keep the old manifest).

    image_root: folder the relative uris resolve against, relative to the manifest's folder (or absolute).
    dataset: an evaluation dataset's layout facts; adds DATASET_COLUMNS and the DATASET_KEY metadata.
    """
    rows = sorted(rows, key=lambda r: r.uri)
    meta = manifest_metadata(view_spec=view_spec, source=source, image_root=image_root,
                             pixel_limit=pixel_limit, min_side=min_side, val_fraction=val_fraction, dataset=dataset)
    with ManifestWriter(path, num_views=view_spec.num_views, metadata=meta, located=located,
                        dataset=dataset is not None) as writer:
        writer.write(rows_table(rows, num_views=view_spec.num_views, located=located, dataset=dataset is not None))
        return writer.finish(before_write=before_write)


def manifest_metadata(*, view_spec: ViewSpec, source: str, image_root: str, pixel_limit: int, min_side: int,
                      val_fraction: float, dataset: DatasetInfo | None = None) -> dict[str, str]:
    """The key-value metadata manifest.parquet carries (every key of _META_KEYS; DATASET_KEY for an
    evaluation dataset)."""
    meta = {"view_spec": view_spec.to_json(), "source": source, "image_root": image_root,
            "pixel_limit": str(int(pixel_limit)), "min_side": str(int(min_side)),
            "val_fraction": repr(float(val_fraction))}
    if dataset is not None:
        meta[DATASET_KEY] = dataset.to_json()
    return meta


class ManifestWriter:
    """Writes manifest.parquet from row tables that arrive in uri order (ids assigned here, 0..N-1), in row
    groups of ROW_GROUP_ROWS, so a manifest of any size is written with a few row groups in memory.

    The file is built in a temporary file and only replaces `path` in `finish` (renamed into place
    locally, one upload on an object store), after `before_write(hash)` had its say; deterministic bytes
    (no timestamps), so the same rows give the same hash. Uris must be strictly increasing (sorted and
    unique): a table that breaks the order is a ValueError. `located` / `dataset`: the table has
    LOCATED_COLUMNS / DATASET_COLUMNS (with `dataset`, `metadata` carries DATASET_KEY)."""

    def __init__(self, path: Path | str, *, num_views: int, metadata: dict[str, str], located: bool,
                 dataset: bool = False) -> None:
        import tempfile

        if dataset != (DATASET_KEY in metadata):
            raise ValueError(f"dataset columns ({dataset}) and the {DATASET_KEY!r} metadata go together")
        self.path = location.as_location(path)
        self.schema = manifest_schema(num_views, located=located, dataset=dataset).with_metadata(metadata)
        local = not location.is_url(self.path)
        if local:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="manifest.", suffix=".parquet.tmp",
                                   dir=str(Path(self.path).parent) if local else None)
        os.close(fd)
        self._tmp = Path(tmp)
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema, compression="zstd", write_statistics=False,
                                        use_dictionary=False)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.num_rows = 0
        self._last_uri: str | None = None

    def write(self, table: pa.Table) -> None:
        """Append rows (a table of the manifest's columns without `id`, sorted by uri)."""
        if table.num_rows == 0:
            return
        uris = table.column("uri")
        first, last = uris[0].as_py(), uris[-1].as_py()
        if self._last_uri is not None and first <= self._last_uri:
            raise ValueError(f"manifest rows out of order or duplicated: {first!r} after {self._last_uri!r}")
        if table.num_rows > 1:
            import pyarrow.compute as pc

            u = uris.combine_chunks()
            if not pc.all(pc.greater(u[1:], u[:-1])).as_py():
                raise ValueError(f"manifest rows out of order or duplicated between {first!r} and {last!r}")
        self._last_uri = last
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, n: int) -> None:
        both = pa.concat_tables(self._pending)
        head, rest = both.slice(0, n), both.slice(n)
        ids = pa.array(np.arange(self.num_rows, self.num_rows + head.num_rows, dtype=np.int64))
        head = head.add_column(0, "id", ids).cast(self.schema)
        self._writer.write_table(head, row_group_size=max(1, head.num_rows))
        self.num_rows += head.num_rows
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def finish(self, *, before_write: Callable[[str], None] | None = None) -> str:
        """Close the file, check it with before_write(hash), put it in place; returns its hash."""
        if self._pending_rows or self.num_rows == 0:
            self._flush(self._pending_rows)
        self._writer.close()
        self._writer = None
        digest = hashlib.sha256()
        with open(self._tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        if before_write is not None:
            before_write(digest.hexdigest())
        if location.is_url(self.path):
            fs, inner = location.filesystem(self.path)
            fs.put_file(str(self._tmp), inner)  # the object appears whole or not at all
            self._tmp.unlink()
        else:
            self._tmp.replace(self.path)
        return digest.hexdigest()

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)


MANIFEST_RECOVERY = ("Rebuild it with `pipeline corpus SOURCE --out ROOT` and the options it was built with (a "
                     "manifest is written deterministically: the same corpus and options give the same bytes, "
                     "so the stores built from it stay valid), or restore it from a backup")


def manifest_hash(path: Path) -> str:
    """sha256 (hex) of the manifest file's bytes."""
    path = location.as_location(path)
    if not location.is_file(path):
        raise StoreNotFoundError(f"no manifest at {path}")
    return hashlib.sha256(location.read_bytes(path)).hexdigest()


class ArrowStrings(Sequence):
    """A read-only sequence of str backed by one Arrow string column: one buffer instead of a Python object
    per row (a 1,000,000-image manifest's uris and hashes take tens of MB, not hundreds), shared by forked
    loader workers without copy-on-write of per-row objects. Indexing gives a str; `==` compares with any
    sequence of str."""

    def __init__(self, column: pa.ChunkedArray | pa.Array) -> None:
        self._arr = column  # chunks (row groups) kept as they are: combining them would copy every string

    def __len__(self) -> int:
        return len(self._arr)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._arr[i].to_pylist()  # a slice of a chunked array is zero-copy
        if isinstance(i, (np.integer, int)):
            i = int(i)
            if i < 0:
                i += len(self._arr)
            if not 0 <= i < len(self._arr):
                raise IndexError(f"index {i} out of range for {len(self._arr)} rows")
            return self._arr[i].as_py()
        raise TypeError(f"indices must be integers or slices, not {type(i).__name__}")

    def __iter__(self) -> Iterator[str]:
        step = ROW_GROUP_ROWS
        for lo in range(0, len(self._arr), step):
            yield from self._arr[lo:lo + step].to_pylist()

    def __contains__(self, value: object) -> bool:
        import pyarrow.compute as pc

        return isinstance(value, str) and bool(pc.any(pc.equal(self._arr, value)).as_py() or False)

    def index(self, value: object, start: int = 0, stop: int | None = None) -> int:
        import pyarrow.compute as pc

        hit = pc.index(self._arr, value, start=start, end=stop).as_py() if isinstance(value, str) else -1
        if hit < 0:
            raise ValueError(f"{value!r} is not in the manifest")
        return hit

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ArrowStrings):
            return self._arr.equals(other._arr)
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable-looking sequence semantics: not hashable, like a list

    def __repr__(self) -> str:
        return f"ArrowStrings({len(self)} rows)"


class Manifest:
    """Read-only view of manifest.parquet. Use read_manifest(path) to build one.

    Per-row strings (uris, sha256, reasons, shards; an evaluation dataset's labels and annotation paths) are
    Arrow-backed (`ArrowStrings`), numbers numpy."""

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
        self.image_root: location.Location = _image_root(self.path, meta["image_root"])
        self.pixel_limit = int(meta["pixel_limit"])
        self.min_side = int(meta["min_side"])
        self.val_fraction = float(meta["val_fraction"])
        self.located: bool = "shard" in table.column_names
        self.dataset: DatasetInfo | None = (DatasetInfo.from_json(meta[DATASET_KEY]) if DATASET_KEY in meta
                                            else None)
        self._validate()
        N, V = table.num_rows, self.view_spec.num_views
        self.num_images: int = N
        self.ids: np.ndarray = table.column("id").to_numpy()
        self.uris = ArrowStrings(table.column("uri"))
        self.sha256 = ArrowStrings(table.column("sha256"))
        self.ok_N: np.ndarray = _equals(table.column("status"), STATUS_OK)
        self.split: np.ndarray = np.where(_equals(table.column("split"), "val"), "val", "train")
        self.reasons = ArrowStrings(table.column("reason"))
        boxes = table.column("view_boxes").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        flips = table.column("view_flips").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self.view_boxes_NV4: np.ndarray = np.asarray(boxes, np.float64).reshape(N, V, 4)
        self.view_flips_NV: np.ndarray = np.asarray(flips, bool).reshape(N, V)
        self.width_N: np.ndarray = table.column("width").to_numpy().astype(np.int64)  # upright, 0 if unknown
        self.height_N: np.ndarray = table.column("height").to_numpy().astype(np.int64)
        if self.located:
            self.shards = ArrowStrings(table.column("shard"))
            self.members = ArrowStrings(table.column("member"))
            self.offsets_N: np.ndarray = table.column("offset").to_numpy()
            self.lengths_N: np.ndarray = table.column("length").to_numpy()
            self.sidecars = ArrowStrings(table.column("sidecars"))
        # evaluation datasets only (None otherwise): per row, "" where the row has none
        cols = {c: ArrowStrings(table.column(c)) if self.dataset else None for c in DATASET_COLUMNS}
        self.labels: ArrowStrings | None = cols["label"]
        self.mask_uris: ArrowStrings | None = cols["mask_uri"]
        self.depth_uris: ArrowStrings | None = cols["depth_uri"]
        self.normals_uris: ArrowStrings | None = cols["normals_uri"]

    def _validate(self) -> None:
        expected = manifest_schema(self.view_spec.num_views, located=self.located, dataset=self.dataset is not None)
        found = self.table.schema.remove_metadata()
        if not found.equals(expected):
            raise ManifestError(f"{self.path}: schema mismatch: expected {expected}, found {found}")
        ids = self.table.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(len(ids))):
            raise ManifestError(f"{self.path}: ids are not 0..N-1 in order")
        bad_split = self.table.column("split").unique().to_pylist()
        if set(bad_split) - set(SPLITS):
            raise ManifestError(f"{self.path}: unknown split values {sorted(set(bad_split) - set(SPLITS))}")

    def image_path(self, i: int) -> location.Location:
        """Where image i lives: its file (relative uris resolve against image_root; a URL stays a URL), or
        for a tar member the shard that holds it (`byte_range` says where inside)."""
        rel = self.shards[i] if self.located and self.shards[i] else self.uris[i]
        if location.is_url(rel) or Path(rel).is_absolute():
            return location.as_location(rel)
        return location.join(self.image_root, rel)

    def image_location(self, i: int) -> str:
        """Image i as messages name it: the file, or `<shard>#<member>` for a tar member."""
        if self.located and self.shards[i]:
            return f"{self.image_path(i)}#{self.members[i]}"
        return str(self.image_path(i))

    def byte_range(self, i: int) -> tuple[int, int] | None:
        """(offset, length) of image i inside its tar shard; None for an image that is a whole file."""
        if self.located and self.shards[i]:
            return int(self.offsets_N[i]), int(self.lengths_N[i])
        return None

    def read_image_bytes(self, i: int) -> bytes:
        """The bytes of image i: the whole file, or one ranged read of its tar shard (never a tar scan).
        OSError when they cannot be read (or a tar member's range is no longer all there)."""
        from store_schema.image_reader import read_range, read_whole

        rng = self.byte_range(i)
        if rng is None:
            return read_whole(self.image_path(i))
        return read_range(self.image_path(i), *rng)

    def dataset_path(self, column: str, i: int) -> location.Location | None:
        """Where row i's mask / depth / normals file lives (a DATASET_COLUMNS path column, relative to
        image_root like uri); None when the row has none or the manifest is not an evaluation dataset."""
        values = {"mask_uri": self.mask_uris, "depth_uri": self.depth_uris, "normals_uri": self.normals_uris}[column]
        rel = values[i] if values is not None else ""
        if not rel:
            return None
        if location.is_url(rel) or Path(rel).is_absolute():
            return location.as_location(rel)
        return location.join(self.image_root, rel)

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


def _equals(column: pa.ChunkedArray, value: str) -> np.ndarray:
    """bool [N]: column == value, without a Python object per row."""
    import pyarrow.compute as pc

    return pc.equal(column, value).combine_chunks().to_numpy(zero_copy_only=False).astype(bool)


def _image_root(manifest: location.Location, image_root: str) -> location.Location:
    """The folder relative uris resolve against: image_root is absolute (a path or a URL), or relative to a
    local manifest."""
    if location.is_url(image_root):
        return location.as_location(image_root)
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
