"""Fast reads of whole shards of a feature array into reused compact buffers (stage two's read path).

The offline store of agglomerative distillation (AM-RADIO, arXiv 2312.06709) is read once per epoch, shard
by shard, by the stage-two loader. zarr-python's read path spends most of a shard read's CPU outside the
codecs (fresh output buffers page-faulted in, per-chunk bookkeeping), so for stores on a local filesystem
this module reads a shard file itself and decodes its inner chunks with numcodecs straight into a caller's
preallocated buffer, keeping the store standard Zarr v3 (sharding_indexed; inner chunks bytes → Blosc →
crc32c; the shard index bytes → crc32c, as zarr writes them):

1. map the shard file read-only (mmap, pages populated in one call: the crc32c and the Blosc decode
   read the page cache directly, with no copy into a user buffer);
2. read the index (offset, nbytes per inner chunk, uint64 little-endian) and check its crc32c;
3. per inner chunk: check its crc32c, Blosc-decompress it into its slot of the output.

(A shard file truncated in place while it is being read would fault the reader; shard files are only
ever replaced by rename, which leaves the mapped file intact.)

Values are delivered in the *compact* dtype: uint16 bf16 bit patterns when every stored value is a bf16
(uint16 arrays, or float32 arrays rounded by BitRound to ≤ 7 mantissa bits, whose low 16 bits are zero,
so the high half is the exact bf16), else float32. Other codec chains (other filters, compressors, a
non-local store) are read through zarr-python and converted the same way (`ZarrArrayReader`).

An inner chunk that is absent (never written) reads as the fill value in zarr; the readers here report
which images of a shard have no chunk, and the loader refuses a complete shard whose images with a valid
view are absent (a lost chunk file must not train as zeros).

Shape legend: S images in a read, ... the per-image chunk shape (V views, then h, w, C or C).
"""

from __future__ import annotations

import mmap
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c as _crc32c
import numpy as np
import zarr
from numcodecs import blosc as _blosc

from store_schema.errors import StoreCorruptionError

_ABSENT = np.uint64(2**64 - 1)
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map the file's pages in one call
BF16_MAX_KEEPBITS = 7


def _numcodecs_bitround_keepbits(codec: Any) -> int | None:
    """keepbits of a zarr-wrapped numcodecs BitRound filter, or None when `codec` is something else."""
    if type(codec).__name__ != "BitRound":
        return None
    cfg = codec.codec_config if hasattr(codec, "codec_config") else codec.to_dict().get("configuration", {})
    return int(cfg["keepbits"])


def compact_dtype_of(array: zarr.Array) -> np.dtype:
    """The dtype the loader ships an array's values in: uint16 (bf16 bits) when exact, else float32
    (uint8 arrays, the student-view store's pixels, as they are)."""
    stored = np.dtype(str(array.dtype))
    if stored in (np.uint16, np.uint8):  # bf16 bit patterns; uint8: pre-rendered student views
        return stored
    keep = None
    for codec in _inner_codecs(array) or array.metadata.codecs:
        k = _numcodecs_bitround_keepbits(codec)
        keep = k if k is not None else keep
    if stored == np.float32 and keep is not None and keep <= BF16_MAX_KEEPBITS:
        return np.dtype(np.uint16)
    return np.dtype(np.float32)


def to_compact(values: np.ndarray, compact: np.dtype, out: np.ndarray) -> None:
    """Write stored values into `out` (compact dtype): float32 with zero low halves -> their high uint16."""
    if values.dtype == out.dtype:
        out[...] = values
    elif values.dtype == np.float32 and compact == np.uint16:
        out[...] = np.ascontiguousarray(values).view(np.uint16)[..., 1::2]
    else:
        raise ValueError(f"cannot deliver {values.dtype} values as {out.dtype}")


def _inner_codecs(array: zarr.Array) -> tuple[Any, ...] | None:
    codecs = array.metadata.codecs
    if len(codecs) == 1 and type(codecs[0]).__name__ == "ShardingCodec":
        return tuple(codecs[0].codecs)
    return None


@dataclass(frozen=True)
class _Plan:
    """What the fast reader needs to know about one array's shards."""

    file_root: Path  # folder of the array on disk
    chunk_key: Any  # chunk key encoding (shard grid index -> relative key)
    shard_images: int  # images per shard
    ndim: int
    item_shape: tuple[int, ...]  # one image's values (the inner chunk shape without its leading 1)
    stored: np.dtype
    index_at_end: bool
    index_crc: bool
    chunk_crc: bool


def _fast_plan(array: zarr.Array) -> _Plan | None:
    """The plan for reading `array` with the fast path, or None when its layout or store needs zarr."""
    store = array.store_path.store
    if type(store).__name__ != "LocalStore":
        return None
    codecs = array.metadata.codecs
    if len(codecs) != 1 or type(codecs[0]).__name__ != "ShardingCodec":
        return None
    sharding = codecs[0]
    inner = list(sharding.codecs)
    names = [type(c).__name__ for c in inner]
    # array -> array filters: only BitRound, which needs no decoding (its output is the float32 values).
    while names and names[0] == "BitRound":
        names.pop(0), inner.pop(0)
    chunk_crc = names[-1:] == ["Crc32cCodec"]
    if chunk_crc:
        names.pop(), inner.pop()
    if names != ["BytesCodec", "BloscCodec"]:
        return None
    stored = np.dtype(str(array.dtype))
    endian = getattr(inner[0].endian, "value", inner[0].endian)
    if stored.itemsize > 1 and endian not in (None, "little"):
        return None
    idx = [type(c).__name__ for c in sharding.index_codecs]
    if idx not in (["BytesCodec", "Crc32cCodec"], ["BytesCodec"]):
        return None
    chunk_shape = tuple(int(c) for c in sharding.chunk_shape)
    shard_shape = tuple(int(c) for c in array.metadata.chunk_grid.chunk_shape)
    if chunk_shape[0] != 1 or chunk_shape[1:] != tuple(array.shape[1:]) or shard_shape[1:] != chunk_shape[1:]:
        return None  # the fast path handles one-image inner chunks of full-width shards (the store's layout)
    return _Plan(file_root=Path(store.root) / array.store_path.path, chunk_key=array.metadata.chunk_key_encoding,
                 shard_images=shard_shape[0], ndim=array.ndim, item_shape=chunk_shape[1:], stored=stored,
                 index_at_end=getattr(sharding.index_location, "value", sharding.index_location) == "end",
                 index_crc=len(idx) == 2, chunk_crc=chunk_crc)


class ShardReader:
    """Reads images [a, b) of one store array (image-major, one image per inner chunk) into a buffer.

    `read_into(a, b, out)` fills out[: b - a] (compact dtype, C-contiguous) and returns a bool array
    [b - a] marking images whose inner chunk is absent (their slots are set to the fill value, zero).
    Local-filesystem stores with the store's codec chain take the fast path; anything else reads
    through zarr (`fast` says which). Not thread-safe (one reader per loader worker)."""

    def __init__(self, array: zarr.Array, *, store_path: Path | str, name: str) -> None:
        self.array, self.store_path, self.name = array, store_path, name  # a path or a URL (messages only)
        self.compact = compact_dtype_of(array)
        self.item_shape = tuple(int(s) for s in array.shape[1:])
        self.plan = _fast_plan(array)
        self._file_buf = bytearray()
        self._tmp: np.ndarray | None = None  # float32 scratch when stored float32 is delivered as uint16

    @property
    def fast(self) -> bool:
        return self.plan is not None

    @property
    def item_nbytes(self) -> int:
        """Bytes of one image's values in the compact dtype."""
        return int(np.prod(self.item_shape)) * self.compact.itemsize

    def read_into(self, a: int, b: int, out: np.ndarray) -> np.ndarray:
        if out.dtype != self.compact or out.shape[1:] != self.item_shape or out.shape[0] < b - a:
            raise ValueError(f"output buffer {out.dtype}{list(out.shape)} cannot hold images [{a}, {b}) of "
                             f"{self.name} ({self.compact}{[b - a, *self.item_shape]})")
        if not out[: b - a].flags.c_contiguous:
            raise ValueError("output buffer must be C-contiguous")
        if self.plan is None:
            return self._read_zarr(a, b, out)
        absent = np.zeros(b - a, bool)
        S = self.plan.shard_images
        threads, _blosc.use_threads = _blosc.use_threads, False  # one core per reader (loader workers)
        try:
            for k in range(a // S, -(-b // S)):
                lo, hi = max(a, k * S), min(b, (k + 1) * S)
                absent[lo - a: hi - a] = self._read_shard_part(k, lo, hi, out[lo - a: hi - a])
        finally:
            _blosc.use_threads = threads
        return absent

    # ---- fast path --------------------------------------------------------------------------------
    def _pread(self, fd: int, offset: int, size: int, path: Path) -> memoryview:
        """`size` bytes at `offset` of an open file, into the reused buffer (read-only view)."""
        if len(self._file_buf) < size:
            self._file_buf = bytearray(size)
        view = memoryview(self._file_buf)[:size]
        got = 0
        while got < size:
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                raise StoreCorruptionError(f"{path}: file shrank while being read ({got} of {size} bytes at "
                                           f"offset {offset})")
            got += n
        return view.toreadonly()

    def _read_shard_part(self, k: int, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        plan = self.plan
        assert plan is not None
        key = plan.chunk_key.encode_chunk_key((k,) + (0,) * (plan.ndim - 1))
        path = plan.file_root / key
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # no shard file: every chunk of it is absent
            out[...] = 0
            return np.ones(hi - lo, bool)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return self._read_chunks(fd, size, k, lo, hi, out, path, None)
            # unmapped when the last view of it goes (not closed here: an error's traceback may hold one)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ)
            return self._read_chunks(fd, size, k, lo, hi, out, path, memoryview(mm))
        finally:
            os.close(fd)

    def _read_chunks(self, fd: int, size: int, k: int, lo: int, hi: int, out: np.ndarray, path: Path,
                     mm: memoryview | None) -> np.ndarray:
        # Inner chunks are read from the mapped file (mm); without a mapping (an empty file) through
        # preadv into a reused buffer. Reading the whole file into a buffer first cost a pass through
        # memory (measured in docs/STAGE_TWO.md).
        plan = self.plan
        assert plan is not None
        S = plan.shard_images
        n_index = 16 * S + (4 if plan.index_crc else 0)
        if size < n_index:
            raise StoreCorruptionError(f"{self.store_path}: {self.name} shard {k} ({path}) has {size} bytes, "
                                       f"less than its {n_index}-byte index")
        index_bytes = self._pread(fd, size - n_index if plan.index_at_end else 0, n_index, path)
        index_bytes = bytes(index_bytes)
        if plan.index_crc:
            _check_crc(index_bytes, f"{self.store_path}: {self.name} shard {k} index ({path})")
        index = np.frombuffer(index_bytes[: 16 * S], dtype="<u8").reshape(S, 2).copy()
        absent = np.zeros(hi - lo, bool)
        out_bytes = out.reshape(hi - lo, -1).view(np.uint8)
        delivered_as_is = plan.stored == self.compact
        for j in range(lo, hi):
            off, nbytes = index[j - k * S]
            r = j - lo
            if off == _ABSENT and nbytes == _ABSENT:
                absent[r] = True
                out[r] = 0
                continue
            off, nbytes = int(off), int(nbytes)
            if off + nbytes > size:
                raise StoreCorruptionError(f"{self.store_path}: {self.name} shard {k} ({path}): inner chunk of "
                                           f"image {j} points past the end of the file")
            chunk = mm[off: off + nbytes] if mm is not None else self._pread(fd, off, nbytes, path)
            if plan.chunk_crc:
                _check_crc(chunk, f"{self.store_path}: {self.name} image {j} (shard {k}, {path})")
                chunk = chunk[:-4]
            if delivered_as_is:
                _blosc.decompress(chunk, out_bytes[r])
            else:  # float32 rounded to bf16 precision: decode, keep each value's high half
                if self._tmp is None:
                    self._tmp = np.empty(self.item_shape, plan.stored)
                _blosc.decompress(chunk, self._tmp)
                to_compact(self._tmp, self.compact, out[r])
        return absent

    # ---- generic path (any store zarr opens) ------------------------------------------------------
    def _read_zarr(self, a: int, b: int, out: np.ndarray) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr", category=UserWarning)
                from store_schema.codecs import bulk_io

                with bulk_io():
                    values = np.asarray(self.array[a:b])
        except ValueError as e:  # zarr raises ValueError when a crc32c checksum does not match
            S = int(self.array.metadata.chunk_grid.chunk_shape[0])
            raise StoreCorruptionError(f"{self.store_path}: {self.name} of shard(s) {list(range(a // S, -(-b // S)))} "
                                       f"is damaged (reading images [{a}, {b}): {str(e).split('.')[0]}); `pipeline "
                                       "store verify` names the images, `pipeline extract --redo-shards` redoes "
                                       "the shards") from e
        to_compact(values, self.compact, out[: b - a])
        return _absent_via_zarr(self.array, a, b)


def _absent_via_zarr(array: zarr.Array, a: int, b: int) -> np.ndarray:
    """Which images of [a, b) have no inner chunk, asking zarr's store for the shard indexes."""
    from zarr.core.sync import sync

    async def probe() -> np.ndarray:
        absent = np.zeros(b - a, bool)
        async_array = array._async_array
        codecs = array.metadata.codecs
        if len(codecs) != 1 or type(codecs[0]).__name__ != "ShardingCodec":
            return absent  # unsharded: each chunk is its own key
        sharding = codecs[0]
        S = int(array.metadata.chunk_grid.chunk_shape[0])
        for k in range(a // S, -(-b // S)):
            key = array.metadata.chunk_key_encoding.encode_chunk_key((k,) + (0,) * (array.ndim - 1))
            index = await sharding._load_shard_index_maybe(async_array.store_path / key, (S,) + (1,) * (array.ndim - 1))
            lo, hi = max(a, k * S), min(b, (k + 1) * S)
            for j in range(lo, hi):
                if index is None or index.get_chunk_slice((j - k * S,) + (0,) * (array.ndim - 1)) is None:
                    absent[j - a] = True
        return absent

    return sync(probe())


def _check_crc(buf: memoryview, what: str) -> None:
    body, tail = buf[:-4], buf[-4:]
    want = int.from_bytes(tail, "little")
    got = _crc32c.crc32c(body)
    if got != want:
        raise StoreCorruptionError(f"{what}: crc32c mismatch (stored {want:08x}, computed {got:08x}); the file is "
                                   "damaged: redo the shard (`pipeline extract --teacher T --redo-shards K`; "
                                   "`pipeline store verify` names every damaged image)")
