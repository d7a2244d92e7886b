"""<teacher>.zarr: create, open and a typed view of one teacher's feature store (schema v2).

The offline store of agglomerative distillation (AM-RADIO, arXiv 2312.06709; PHI-S, arXiv 2410.01680):
teacher outputs for every (image, view) are written once, shard by shard, as bf16 bit patterns (uint16;
`store_schema.codecs`), with per-shard, per-split float64 moments (Chan et al. 1979) of the values as
stored, folded into bounded running totals (`store_schema.stats_ledger`), so normalizers are fitted
without re-reading. Layout and invariants: docs/ARCHITECTURE.md "Store layout". One shard is the unit of
work of one writer; a shard counts only once `shards/complete[k] == 1`, written after its data and
statistics.

Shape legend: N images, V views, S images per shard, h/w storage grid, Cs summary / Cp patch channels,
I requested images.
"""

from __future__ import annotations

import functools
import json
import subprocess
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stages.stats import Moments
from stages.teachers.resize import ResizeRule, content_mask_NVhw, teacher_frames
from stages.teachers.spec import TeacherSpec
from store_schema import codecs as codecs_mod
from store_schema import layout, location
from store_schema.codecs import CodecSpec
from store_schema.errors import (StoreCorruptionError, StoreMismatchError, StoreNotFoundError,
                                 StoreReadOnlyError)
from store_schema.atomic_create import build_then_rename
from store_schema.io_errors import write_guard
from store_schema.manifest import Manifest, ViewSpec
from store_schema.shard_writer import ShardWriter
from store_schema.stats_ledger import (DEFAULT_FOLD_EVERY, StatsLedger, create_stats_arrays,
                                       expected_stats_arrays)

_MODES = ("r", "r+")
_NOT_COMPLETE = "the shard is not marked complete (complete shards are kept)"


def _guarded(what: str):
    """Run a shard write inside write_guard: an OSError (no space, I/O error) becomes a StorageWriteError
    naming `what` (formatted with the shard index k), the store and the free space."""
    def wrap(fn):
        @functools.wraps(fn)
        def guarded(self: "TeacherStore", k: int, *args, **kwargs):
            with write_guard(self.path, f"{what.format(k=k)} of {self.path}", kept=_NOT_COMPLETE):
                return fn(self, k, *args, **kwargs)
        return guarded
    return wrap


def code_version() -> str:
    """Package version, plus the git commit when the code runs from a git checkout."""
    try:
        version = importlib_metadata.version("agglo-distill")
    except importlib_metadata.PackageNotFoundError:
        version = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}" if sha else version


def _json_norm(x: Any) -> Any:
    """What a value looks like after a JSON round trip (tuples become lists), for comparisons."""
    return json.loads(json.dumps(x))


def create_teacher_store(path: Path, *, spec: TeacherSpec, weights_identity: dict, manifest: Manifest,
                         shard_size: int, storage_grid: tuple[int, int], codec: CodecSpec,
                         stats_fold_every: int = DEFAULT_FOLD_EVERY) -> "TeacherStore":
    """Create <teacher>.zarr for a manifest, or reopen an existing compatible one (idempotent).

    An existing store whose teacher spec, weights, manifest hash, view spec, codec, storage grid or
    shard size differs raises StoreMismatchError naming the expected and the found value.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    grid = (int(storage_grid[0]), int(storage_grid[1]))
    if min(grid) < 1:
        raise ValueError(f"storage_grid must be positive, got {storage_grid}")
    if manifest.num_images < 1:
        raise ValueError(f"manifest {manifest.path} has no images")
    attrs = {
        "schema_version": layout.SCHEMA_VERSION, "code_version": code_version(),
        "teacher": spec.to_dict(), "weights": weights_identity, "manifest_hash": manifest.hash,
        "view_spec": manifest.view_spec.to_dict(), "codec": codec.to_dict(), "storage_grid": list(grid),
        "shard_size": int(shard_size), "num_images": manifest.num_images,
        "num_views": manifest.view_spec.num_views, "stats_fold_every": int(stats_fold_every),
    }
    if stats_fold_every < 1:
        raise ValueError(f"stats_fold_every must be >= 1, got {stats_fold_every}")
    attrs = _json_norm(attrs)
    path = location.as_location(path)
    remote = location.is_url(path)
    if remote and location.is_file(layout.store_file(path, layout.ZARR_JSON)) and not _created(path):
        location.remove_tree(path)  # a creation killed before its marker: nothing in it can count
    if location.is_file(layout.store_file(path, layout.ZARR_JSON)):
        store = open_teacher_store(path, expect_manifest_hash=manifest.hash,
                                   expect_view_spec=manifest.view_spec, mode="r+")
        for key in ("teacher", "weights", "codec", "storage_grid", "shard_size", "num_images", "num_views"):
            same = (CodecSpec.from_dict(store.attrs[key]) == CodecSpec.from_dict(attrs[key]) if key == "codec"
                    else store.attrs[key] == attrs[key])  # a codec recorded before a field existed: its default
            if not same:
                raise StoreMismatchError(path, key, expected=attrs[key], found=store.attrs[key])
        return store
    if location.list_dir(path):
        raise StoreMismatchError(path, "store", expected="a zarr v3 group or nothing",
                                 found="a non-empty folder without zarr.json")
    if remote:
        # No atomic rename on object stores: build the group at its final path and write the creation
        # marker last; a store without the marker is removed and rebuilt by the next create.
        _create_arrays(path, attrs, spec=spec, codec=codec, manifest=manifest)
        location.write_bytes(layout.store_file(path, layout.CREATED_MARKER), b"{}\n")
        return open_teacher_store(path, mode="r+")
    def build(tmp: Path) -> None:
        _create_arrays(tmp, attrs, spec=spec, codec=codec, manifest=manifest)
        location.write_bytes(layout.store_file(tmp, layout.CREATED_MARKER), b"{}\n")

    build_then_rename(path, build, what=f"the new store {path}")  # never a half-made store at its name
    return open_teacher_store(path, mode="r+")


def _created(path) -> bool:
    return location.is_file(layout.store_file(path, layout.CREATED_MARKER))


def _create_arrays(path: Path, attrs: dict, *, spec: TeacherSpec, codec: CodecSpec, manifest: Manifest) -> None:
    N, V, S = attrs["num_images"], attrs["num_views"], attrs["shard_size"]
    h, w = attrs["storage_grid"]
    n_shards = -(-N // S)
    group = zarr.open_group(path, mode="w-", zarr_format=3, attributes=attrs)
    feat = dict(dtype=codec.stored_dtype, fill_value=0, filters=codecs_mod.float_filters(codec),
                compressors=codecs_mod.compressors(codec))
    exact = dict(compressors=codecs_mod.compressors(CodecSpec(keepbits=None)))
    if spec.summary_dim > 0:
        Cs = spec.summary_dim
        group.create_array(layout.SUMMARY, shape=(N, V, Cs), chunks=(1, V, Cs), shards=(S, V, Cs),
                           dimension_names=layout.DIMS_SUMMARY, **feat)
    Cp = spec.patch_dim
    group.create_array(layout.PATCHES, shape=(N, V, h, w, Cp), chunks=(1, V, h, w, Cp),
                       shards=(S, V, h, w, Cp), dimension_names=layout.DIMS_PATCHES, **feat)
    group.create_array(layout.VALID, shape=(N, V), chunks=(S, V), dtype="bool", fill_value=False,
                       dimension_names=layout.DIMS_VALID, **exact)
    group.create_array(layout.SHARDS_COMPLETE, shape=(n_shards,), chunks=(1,), dtype="uint8",
                       fill_value=0, dimension_names=("shard",), **exact)
    split_N = np.array([layout.STATS_SPLITS.index(str(x)) for x in manifest.split], np.uint8)
    group.create_array(layout.IMAGE_SPLIT, shape=(N,), chunks=(S,), dtype="uint8", fill_value=0,
                       dimension_names=("image",), **exact)[:] = split_N
    dims = {kind: C for kind, C in (("summary", spec.summary_dim), ("patches", Cp)) if C > 0}
    create_stats_arrays(group, dims, n_shards)
    if spec.resize != ResizeRule.SQUASH:  # where each view's teacher input lies (padding, centre crop)
        frames_NV4 = teacher_frames(spec.resize, spec.resolution, manifest.view_boxes_NV4, manifest.width_N,
                                    manifest.height_N)
        group.create_array(layout.FRAMES, shape=(N, V, 4), chunks=(S, V, 4), dtype="float64", fill_value=0.0,
                           dimension_names=layout.DIMS_FRAMES, **exact)[:] = frames_NV4


def open_teacher_store(path: Path, *, expect_manifest_hash: str | None = None,
                       expect_view_spec: ViewSpec | None = None, mode: str = "r") -> "TeacherStore":
    """Open an existing store, validating schema version, attributes and array shapes / dims.

    When given, the manifest hash and view spec must match; any mismatch raises StoreMismatchError
    naming the expected and the found value. mode: "r" (read-only) or "r+" (writers).
    """
    path = location.as_location(path)
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(_MODES)}")
    if not location.is_file(layout.store_file(path, layout.ZARR_JSON)):
        raise StoreNotFoundError(f"no teacher store at {path} (expected a zarr v3 group with zarr.json)")
    if location.is_url(path) and not _created(path):
        raise StoreNotFoundError(f"the teacher store at {path} was never finished being created (no "
                                 f"{layout.CREATED_MARKER} marker); re-run `pipeline extract` to rebuild it")
    group = zarr.open_group(path, mode=mode, zarr_format=3)
    attrs = dict(group.attrs)
    missing = [k for k in layout.REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise StoreMismatchError(path, "required attributes", expected=list(layout.REQUIRED_ATTRS),
                                 found=sorted(attrs))
    if attrs["schema_version"] != layout.SCHEMA_VERSION:
        raise StoreMismatchError(path, "schema_version", expected=layout.SCHEMA_VERSION,
                                 found=attrs["schema_version"])
    if expect_manifest_hash is not None and attrs["manifest_hash"] != expect_manifest_hash:
        raise StoreMismatchError(path, "manifest_hash", expected=expect_manifest_hash,
                                 found=attrs["manifest_hash"],
                                 hint="The manifest is not the one this store was built from (it was altered "
                                      "or rebuilt with other options): restore that manifest, or rebuild it "
                                      "with the same `pipeline corpus` options, or extract into a new root")
    if expect_view_spec is not None and attrs["view_spec"] != _json_norm(expect_view_spec.to_dict()):
        raise StoreMismatchError(path, "view_spec", expected=expect_view_spec.to_dict(),
                                 found=attrs["view_spec"])
    with warnings.catch_warnings():
        # zarr warns whenever it parses numcodecs' BitRound (outside the v3 spec); known and accepted.
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr", category=UserWarning)
        return TeacherStore(path, group, attrs, writable=mode == "r+")


class TeacherStore:
    """Typed view of one <teacher>.zarr. Build it with create_teacher_store / open_teacher_store."""

    def __init__(self, path: Path, group: zarr.Group, attrs: dict, *, writable: bool) -> None:
        self.path = location.as_location(path)
        self.group = group
        self.attrs = attrs
        self.writable = writable
        self.spec = TeacherSpec.from_dict(attrs["teacher"])
        self.codec = CodecSpec.from_dict(attrs["codec"])
        self.view_spec = ViewSpec.from_dict(attrs["view_spec"])
        self.manifest_hash: str = attrs["manifest_hash"]
        self.weights_identity: dict = attrs["weights"]
        self.num_images = int(attrs["num_images"])
        self.num_views = int(attrs["num_views"])
        self.shard_size = int(attrs["shard_size"])
        self.num_shards = -(-self.num_images // self.shard_size)
        self.grid: tuple[int, int] = (int(attrs["storage_grid"][0]), int(attrs["storage_grid"][1]))
        self.summary_dim = int(self.spec.summary_dim)
        self.patch_dim = int(self.spec.patch_dim)
        self._validate_arrays()
        self.summary: zarr.Array | None = group[layout.SUMMARY] if self.summary_dim > 0 else None
        self.patches: zarr.Array = group[layout.PATCHES]
        self.valid: zarr.Array = group[layout.VALID]
        self._complete: zarr.Array = group[layout.SHARDS_COMPLETE]
        self.stats_fold_every = int(attrs["stats_fold_every"])
        self._writers: dict[str, ShardWriter] = {}
        self._frames: np.ndarray | None = None
        self._write_threads = 1
        self.ledger = StatsLedger(group, self.path, {k: self.dim(k) for k in self.kinds}, self.num_shards,
                                  self.stats_fold_every)

    @property
    def key(self) -> str:
        """The store's key under its root (store_schema/layout.py): the teacher's name for a store at the
        teacher's own resolution, "<teacher>@<side>" for one extracted at another side."""
        name = str(self.path).rstrip("/").rsplit("/", 1)[-1]
        return name[: -len(".zarr")] if name.endswith(".zarr") else name

    def __repr__(self) -> str:
        return (f"TeacherStore({self.path}, teacher={self.spec.name}, images={self.num_images}, "
                f"views={self.num_views}, grid={self.grid}, shards={len(self.completed_shards())}"
                f"/{self.num_shards} complete)")

    # ---- validation -------------------------------------------------------------------------------
    def _expected_arrays(self) -> dict[str, tuple[tuple[int, ...], str, tuple[str, ...] | None]]:
        N, V, (h, w), K = self.num_images, self.num_views, self.grid, self.num_shards
        dt = self.codec.stored_dtype
        out: dict[str, tuple[tuple[int, ...], str, tuple[str, ...] | None]] = {
            layout.PATCHES: ((N, V, h, w, self.patch_dim), dt, layout.DIMS_PATCHES),
            layout.VALID: ((N, V), "bool", layout.DIMS_VALID),
            layout.SHARDS_COMPLETE: ((K,), "uint8", ("shard",)),
            layout.IMAGE_SPLIT: ((N,), "uint8", ("image",)),
        }
        if self.summary_dim > 0:
            out[layout.SUMMARY] = ((N, V, self.summary_dim), dt, layout.DIMS_SUMMARY)
        if self.spec.resize != ResizeRule.SQUASH:
            out[layout.FRAMES] = ((N, V, 4), "float64", layout.DIMS_FRAMES)
        dims = {k: self.dim(k) for k in self.kinds}
        for name, (shape, dtype) in expected_stats_arrays(dims, K).items():
            out[name] = (shape, dtype, None)
        return out

    def _validate_arrays(self) -> None:
        for name, (shape, dtype, dims) in self._expected_arrays().items():
            try:
                arr = self.group[name]
            except KeyError:
                raise StoreMismatchError(self.path, f"array {name}", expected=f"{dtype}{list(shape)}",
                                         found="absent") from None
            if tuple(arr.shape) != shape:
                raise StoreMismatchError(self.path, f"shape of {name}", expected=shape, found=tuple(arr.shape))
            if str(arr.dtype) != dtype:
                raise StoreMismatchError(self.path, f"dtype of {name}", expected=dtype, found=str(arr.dtype))
            if dims is not None and tuple(arr.metadata.dimension_names or ()) != dims:
                raise StoreMismatchError(self.path, f"dimension_names of {name}", expected=dims,
                                         found=arr.metadata.dimension_names)
        if self.summary_dim == 0 and layout.SUMMARY in self.group:
            raise StoreMismatchError(self.path, "array summary", expected="absent (summary_dim 0)",
                                     found="present")

    # ---- geometry ---------------------------------------------------------------------------------
    @property
    def frames_NV4(self) -> np.ndarray | None:
        """float64 [N, V, 4]: each view's teacher frame in view coordinates (stages/teachers/resize.py);
        None for a squash teacher (every frame (0, 0, 1, 1): every store recorded before resize rules)."""
        if self.spec.resize == ResizeRule.SQUASH:
            return None
        if self._frames is None:
            self._frames = np.asarray(self.group[layout.FRAMES][:], np.float64)
        return self._frames

    def content_mask(self, ids: np.ndarray) -> np.ndarray | None:
        """bool [n, V, h, w] on the storage grid: the tokens of images `ids` that hold the view (False:
        padding), the ones the statistics, the loss and the evaluation count; None when all of them do."""
        frames = self.frames_NV4
        if frames is None:
            return None
        mask = content_mask_NVhw(frames[np.asarray(ids, np.int64)], self.grid)
        return None if mask.all() else mask

    @property
    def kinds(self) -> tuple[str, ...]:
        """Token kinds this store holds ("patches", plus "summary" when summary_dim > 0)."""
        return tuple(k for k in layout.TOKEN_KINDS if self.dim(k) > 0)

    def dim(self, kind: str) -> int:
        """Channel count of a token kind."""
        return self.summary_dim if layout.check_kind(kind) == "summary" else self.patch_dim

    def shard_range(self, k: int) -> tuple[int, int]:
        """Images [start, end) of shard k."""
        if not 0 <= k < self.num_shards:
            raise ValueError(f"shard {k} out of range [0, {self.num_shards})")
        return k * self.shard_size, min((k + 1) * self.shard_size, self.num_images)

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreReadOnlyError(f"{self.path} was opened read-only; open it with mode='r+' to write")

    # ---- data -------------------------------------------------------------------------------------
    @_guarded("shard {k}")
    def write_shard(self, k: int, *, summary_SVC: np.ndarray | None, patches_SVhwC: np.ndarray,
                    valid_SV: np.ndarray) -> None:
        """Write all images of shard k at once (idempotent). Clears shard k's complete flag first.

        Features may be float32 (rounded here as the codec says) or, for a uint16 store, already bf16 bit
        patterns (uint16, as the stage-one worker produces them on the teacher's device)."""
        self._require_writable()
        start, end = self.shard_range(k)
        S, V, (h, w) = end - start, self.num_views, self.grid
        _check_shape("patches_SVhwC", patches_SVhwC, (S, V, h, w, self.patch_dim))
        _check_shape("valid_SV", valid_SV, (S, V))
        if self.summary_dim > 0:
            if summary_SVC is None:
                raise ValueError(f"teacher {self.spec.name} has summary_dim {self.summary_dim}; "
                                 "summary_SVC is required")
            _check_shape("summary_SVC", summary_SVC, (S, V, self.summary_dim))
        elif summary_SVC is not None:
            raise ValueError(f"teacher {self.spec.name} has no summary token; pass summary_SVC=None")
        for name, x in (("summary_SVC", summary_SVC), ("patches_SVhwC", patches_SVhwC)):
            if x is not None and x.dtype == np.uint16 and self.codec.stored_dtype != "uint16":
                raise ValueError(f"{name} holds uint16 bf16 bits but {self.path} stores "
                                 f"{self.codec.stored_dtype}; pass float32 values")
        if self.ledger.folded()[0] > k:
            raise ValueError(f"{self.path}: shard {k} is complete and its statistics are folded into the "
                             f"store's totals; it cannot be rewritten as is: redo it with `pipeline extract "
                             f"--redo-shards {k}` (unfolds the statistics first)")
        if self.is_complete(k):
            self._complete[k] = 0  # never leave new data behind an old "complete" flag
        with codecs_mod.bulk_io():  # a shard is many one-image inner chunks: encode them in batches
            if self.summary is not None:
                self._writer("summary").write(k, codecs_mod.encode_for_store(summary_SVC, self.codec))
            self._writer("patches").write(k, codecs_mod.encode_for_store(patches_SVhwC, self.codec))
            self.valid[start:end] = np.asarray(valid_SV, dtype=bool)

    def set_write_threads(self, threads: int) -> None:
        """Compress a shard's inner chunks on this many threads (the CPUs a stage-one worker was granted)."""
        for w in self._writers.values():
            w.close()
        self._writers, self._write_threads = {}, max(int(threads), 1)

    def _writer(self, kind: str) -> ShardWriter:
        """The shard writer of a feature array: the direct local writer, or zarr for other stores."""
        if kind not in self._writers:
            array = self.summary if kind == "summary" else self.patches
            self._writers[kind] = ShardWriter(array, threads=self._write_threads)
        return self._writers[kind]

    def read_shard(self, k: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(summary_SVC | None, patches_SVhwC, valid_SV) of shard k, values as stored, as float32."""
        start, end = self.shard_range(k)
        return self._read(lambda a: a[start:end], np.arange(start, end))

    def read_images(self, ids: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(summary_IVC | None, patches_IVhwC, valid_IV) of the given image ids, in the order given (float32)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_images):
            raise ValueError(f"image ids must be in [0, {self.num_images}), got min {ids.min()} max {ids.max()}")
        return self._read(lambda a: a.oindex[ids], ids)

    def _read(self, take, ids: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        dec = codecs_mod.decode_from_store

        def read(name: str, array: zarr.Array, decode=dec) -> np.ndarray:
            try:
                return decode(take(array))
            except ValueError as e:  # zarr raises ValueError when a crc32c checksum does not match
                raise self.corruption_error(name, ids, e) from e

        summary = None if self.summary is None else read(layout.SUMMARY, self.summary)
        return summary, read(layout.PATCHES, self.patches), read(layout.VALID, self.valid, np.asarray)

    def corruption_error(self, array: str, ids: np.ndarray, cause: Exception) -> StoreCorruptionError:
        """The error for stored bytes of `array` that fail their checksum or decoding while images `ids`
        are read: names the store, the array, the shards (and how to redo them) instead of zarr's bare
        `Stored and computed checksum do not match` message, which is kept at the end."""
        shards = sorted({int(i) // self.shard_size for i in np.asarray(ids).reshape(-1)})
        which = ", ".join(map(str, shards[:10])) + (" ..." if len(shards) > 10 else "")
        return StoreCorruptionError(
            f"{self.path}: {array} of shard{'s' if len(shards) > 1 else ''} {which} is damaged (a checksum or decode "
            f"error while reading {len(np.asarray(ids).reshape(-1))} images); `pipeline store verify` names the "
            f"images, `pipeline extract --teacher {self.key} --redo-shards <shards>` redoes them. "
            f"(zarr: {str(cause).split('.')[0]})")  # not the stored / computed checksum bytes that follow

    def lost_images(self, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per token kind, the image ids (of `ids`, default all) that lie in a complete shard, have a valid
        view, and have no stored chunk: data that was written and then lost (a deleted chunk or shard
        file). zarr reads such chunks as the fill value (zero), so readers that must not use zeros as
        targets (evaluation, transcoding, the loader) check here. Reads only the shard indexes."""
        from store_schema.shard_reader import _absent_via_zarr  # the shard-index probe the loader uses

        ids = np.arange(self.num_images) if ids is None else np.unique(np.asarray(ids, np.int64).reshape(-1))
        complete_K = np.asarray(self._complete[:]) == 1
        valid_N = np.asarray(self.valid[:], bool).any(axis=1)
        shards = [int(k) for k in np.unique(ids // self.shard_size) if complete_K[k]]
        out: dict[str, np.ndarray] = {}
        for kind in self.kinds:
            array = self.summary if kind == "summary" else self.patches
            lost = []
            for k in shards:
                lo, hi = self.shard_range(k)
                absent_S = _absent_via_zarr(array, lo, hi) & valid_N[lo:hi]
                lost.append(np.flatnonzero(absent_S) + lo)
            lost_ids = np.concatenate(lost) if lost else np.zeros(0, np.int64)
            out[kind] = lost_ids[np.isin(lost_ids, ids)]
        return out

    def require_stored(self, ids: np.ndarray | None = None, *, reader: str) -> None:
        """Raise StoreCorruptionError naming the store, the arrays, shards and images when any of `ids`
        (default all) is lost (see `lost_images`); `reader` says who refuses (e.g. "evaluation")."""
        lost = {kind: x for kind, x in self.lost_images(ids).items() if x.size}
        if not lost:
            return
        parts = []
        for kind, x in lost.items():
            shards = sorted({int(i) // self.shard_size for i in x})
            parts.append(f"{kind} of images {x[:10].tolist()}{' ...' if x.size > 10 else ''} "
                         f"(shard{'s' if len(shards) > 1 else ''} {shards})")
        raise StoreCorruptionError(
            f"{self.path}: {'; '.join(parts)} have valid views but no stored chunk, although the shard is marked "
            f"complete: a chunk or shard file was lost, and {reader} would read zeros for it. Run `pipeline store "
            f"verify` on it, then redo those shards (`pipeline extract --teacher {self.key} --redo-shards "
            f"{','.join(str(k) for k in sorted({int(i) // self.shard_size for x in lost.values() for i in x}))}`)")

    def image_split(self) -> np.ndarray:
        """Split index (into layout.STATS_SPLITS: 0 train, 1 val) of every image, from the manifest."""
        return np.asarray(self.group[layout.IMAGE_SPLIT][:])

    # ---- statistics and completion ----------------------------------------------------------------
    @_guarded("statistics of shard {k}")
    def write_shard_stats(self, k: int, kind: str, m: Moments, *, split: str = "train") -> None:
        """Store shard k's moments of one token kind and split (computed from the values as stored).

        A shard's statistics are one partial per split of the manifest ("train", "val"); a writer that
        gives only one partial (split "train" by default) leaves the other empty."""
        self._require_writable()
        self.shard_range(k)
        C = self._stats_dim(kind)
        if m.dim != C:
            raise ValueError(f"{kind} moments have width {m.dim}, store expects {C}")
        self.ledger.write_shard(k, kind, split, m)

    def shard_stats(self, k: int, kind: str, split: str | None = None) -> Moments:
        """Moments of one token kind stored for shard k (split None: train merged with val). Only for
        shards not yet folded into the store's totals (ValueError otherwise)."""
        self.shard_range(k)
        self._stats_dim(kind)
        layout.check_split(split)
        splits = layout.STATS_SPLITS if split is None else (split,)
        return Moments.merge_all((self.ledger.shard(k, kind, sp) for sp in splits), dim=self.dim(kind))

    def shard_count(self, k: int, kind: str, split: str | None = None) -> int:
        """Tokens counted in shard k's statistics (kept after folding)."""
        self.shard_range(k)
        self._stats_dim(kind)
        layout.check_split(split)
        return sum(self.ledger.shard_count(k, kind, sp)
                   for sp in (layout.STATS_SPLITS if split is None else (split,)))

    def _stats_dim(self, kind: str) -> int:
        C = self.dim(kind)
        if C == 0:
            raise ValueError(f"teacher {self.spec.name} has no {kind} tokens; valid kinds: {', '.join(self.kinds)}")
        return C

    def record_batch_backoff(self, k: int, *, from_size: int, to_size: int, worker: str) -> None:
        """Record that shard k ran out of device memory at batch `from_size` and was redone whole at
        `to_size` (the root attribute BATCH_BACKOFFS_ATTR, appended by the driver, the one writer)."""
        self._require_writable()
        entries = list(self.attrs.get(layout.BATCH_BACKOFFS_ATTR, []))
        entries.append({"shard": int(k), "from": int(from_size), "to": int(to_size), "worker": str(worker)})
        self.group.attrs[layout.BATCH_BACKOFFS_ATTR] = entries
        self.attrs[layout.BATCH_BACKOFFS_ATTR] = entries

    @property
    def batch_backoffs(self) -> list[dict]:
        """Every out-of-memory back-off of this store's extraction: {shard, from, to, worker}, in order."""
        return list(self.attrs.get(layout.BATCH_BACKOFFS_ATTR, []))

    @_guarded("the complete flag of shard {k}")
    def mark_complete(self, k: int) -> None:
        """Mark shard k complete; the driver calls this last, after the shard's data and stats. Folds the
        complete prefix of shards into the totals every `stats_fold_every` shards."""
        self._require_writable()
        self.shard_range(k)
        self._complete[k] = 1
        self.ledger.fold(np.asarray(self._complete[:]) == 1)

    def reopen_shards(self, shards, *, recompute) -> int:
        """Clear the complete flags and statistics of `shards` so that a writer redoes them (repair of
        damaged shards). When any of them is folded into the totals, the statistics are unfolded: every other
        folded shard gets its partial back from `recompute(k)` ({(kind, split): Moments} of its stored
        values; never called for the shards being reopened), then the totals are emptied
        (`StatsLedger.unfold`); folding then starts again from shard 0, in shard order. Returns the number
        of shards that were folded before (0: nothing was unfolded)."""
        self._require_writable()
        shards = sorted({int(k) for k in shards})
        for k in shards:
            self.shard_range(k)
        folded = 0
        with write_guard(self.path, f"the statistics of {self.path}", kept="the old statistics stay live"):
            for k in shards:  # first: a kill from here on leaves these shards pending, never complete and empty
                self._complete[k] = 0
            if shards and shards[0] < self.ledger.folded()[0]:
                redo = set(shards)
                folded = self.ledger.unfold(lambda k: None if k in redo else recompute(k))
            for k in shards:
                self.ledger.clear_shard(k)
        return folded

    def fold_stats(self) -> int:
        """Fold every complete prefix shard into the totals now (end of a run); returns shards folded."""
        self._require_writable()
        with write_guard(self.path, f"the statistics totals of {self.path}", kept=_NOT_COMPLETE):
            return self.ledger.fold(np.asarray(self._complete[:]) == 1, force=True)

    def is_complete(self, k: int) -> bool:
        self.shard_range(k)
        return bool(self._complete[k] == 1)

    def completed_shards(self) -> np.ndarray:
        """Indices of complete shards, ascending."""
        return np.flatnonzero(np.asarray(self._complete[:]) == 1)

    def fingerprint(self) -> dict[str, Any]:
        """What the stored targets are, in a few bytes: manifest, teacher spec, weights, codec, grid, shard
        size, complete shards and the hash of every token kind's merged statistics (computed from the values
        as stored). Receipts (DVC) and runs (resume checks) record it; equal fingerprints mean the same
        targets for every practical purpose. Streams the statistics (O(C²) memory)."""
        return {
            "manifest_hash": self.manifest_hash,
            "teacher_spec": self.attrs["teacher"],
            "weights": self.attrs["weights"],
            "codec": self.attrs["codec"],
            "storage_grid": list(self.grid),
            "shard_size": self.shard_size,
            "num_shards": self.num_shards,
            "complete_shards": [int(k) for k in self.completed_shards()],
            "stats_hash": {kind: self.stats(kind).content_hash() for kind in self.kinds},
        }

    def pending_shards(self) -> np.ndarray:
        """Indices of shards not yet complete, ascending (what a re-run must (re)write)."""
        return np.flatnonzero(np.asarray(self._complete[:]) != 1)

    def stats(self, kind: str, split: str | None = None) -> Moments:
        """Moments over all complete shards, of one split ("train" / "val") or of all images (None: the
        train moments merged with the val moments). Deterministic: the per-shard partials are merged in
        shard order (folded totals first), whatever the order in which shards completed; streams with
        O(C²) memory."""
        self._stats_dim(kind)
        layout.check_split(split)
        complete_K = np.asarray(self._complete[:]) == 1
        if split is not None:
            return self.ledger.merged(kind, split, complete_K)
        parts = (self.ledger.merged(kind, sp, complete_K) for sp in layout.STATS_SPLITS)
        return Moments.merge_all(parts, dim=self.dim(kind))

    def stats_bytes_on_disk(self) -> int:
        """Bytes the statistics take on disk (partials not yet folded plus the two total slots)."""
        return self.ledger.nbytes_on_disk()


def _check_shape(name: str, x: np.ndarray | None, shape: tuple[int, ...]) -> None:
    found = None if x is None else tuple(np.shape(x))
    if found != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {found}")
