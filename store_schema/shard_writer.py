"""Fast whole-shard writes of a feature array: the same Zarr v3 shard file zarr-python writes, at a fraction
of its CPU (stage one's write path).

Stage one of agglomerative distillation (AM-RADIO, arXiv 2312.06709) writes each teacher's features once,
a whole shard at a time. zarr-python's write path spends most of a shard write's CPU around the codec
(per-chunk async tasks and buffer copies, the shard assembled chunk by chunk); measured at the paper
teachers' shapes in docs/STAGE_ONE.md. For stores on a local filesystem this module encodes a shard's
inner chunks with numcodecs itself and writes the shard file in one go, byte for byte what zarr writes
for the array's codec chain (sharding_indexed; inner chunks bytes → Blosc → crc32c; index bytes → crc32c
at the end of the file; fill value 0), which a test checks against zarr on every layout the store uses:

1. per image (one inner chunk): skip it when every value is the fill value (zarr's default
   `write_empty_chunks=False`: it reads back as the fill value), else Blosc-compress it and append its
   crc32c; chunks are encoded on `threads` threads (Blosc releases the GIL);
2. the index: (offset, nbytes) per inner chunk, uint64 little-endian, 2^64 - 1 for an absent chunk, then
   its crc32c;
3. the file is written beside its final name and renamed over it, so a reader never sees half a shard
   (a shard with no chunk at all is deleted, as zarr does).

Anything else (another codec chain, array-to-array filters, the index first, a non-local store) goes through zarr-python:
`ShardWriter.fast` says which. Shape legend: S images in the shard, ... one image's values.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import crc32c as _crc32c
import numpy as np
import zarr
from numcodecs import blosc as _blosc

from store_schema.shard_reader import _fast_plan

_ABSENT = np.uint64(2**64 - 1)
_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _blosc_args(array: zarr.Array) -> tuple[bytes, int, int, int, int] | None:
    """(cname, clevel, shuffle, blocksize, typesize) of the array's inner Blosc codec, or None."""
    codecs = array.metadata.codecs
    inner = [c for c in codecs[0].codecs if type(c).__name__ == "BloscCodec"]
    if len(inner) != 1:
        return None
    c = inner[0]
    shuffle = getattr(c.shuffle, "value", c.shuffle)
    cname = getattr(c.cname, "value", c.cname)
    if shuffle not in _SHUFFLES or c.typesize is None:
        return None
    return str(cname).encode(), int(c.clevel), _SHUFFLES[shuffle], int(c.blocksize), int(c.typesize)


class ShardWriter:
    """Writes whole shards of one store array (image-major, one image per inner chunk).

    `write(k, values)` replaces shard k with `values` [images of shard k, ...] in the array's dtype.
    `threads`: chunks compressed at once (the CPUs the worker was granted). Not thread-safe for the same
    shard; different shards may be written from different threads."""

    def __init__(self, array: zarr.Array, *, threads: int = 1) -> None:
        self.array = array
        plan = _fast_plan(array)
        has_filters = plan is not None and any(
            type(c).__name__ == "BitRound" for c in array.metadata.codecs[0].codecs)
        self.blosc = _blosc_args(array) if plan is not None else None
        usable = (plan is not None and not has_filters and self.blosc is not None and plan.index_at_end
                  and array.metadata.fill_value == 0)
        self.plan = plan if usable else None
        self.threads = max(int(threads), 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shard-write") if self.threads > 1 else None

    @property
    def fast(self) -> bool:
        return self.plan is not None

    def write(self, k: int, values: np.ndarray) -> None:
        S = int(self.array.metadata.chunk_grid.chunk_shape[0])
        lo, hi = k * S, min((k + 1) * S, int(self.array.shape[0]))
        if values.shape != (hi - lo, *self.array.shape[1:]):
            raise ValueError(f"shard {k} of {self.array.path} holds {[hi - lo, *self.array.shape[1:]]}, "
                             f"got {list(values.shape)}")
        values = np.ascontiguousarray(values, dtype=np.dtype(str(self.array.dtype)))
        if self.plan is None:
            self.array[lo:hi] = values
            return
        plan = self.plan
        # Blosc's global-context path serializes on a lock; the per-call context path does not.
        _blosc.use_threads = False
        encoded = list(self._pool.map(self._encode, values) if self._pool else map(self._encode, values))
        index_S2 = np.full((S, 2), _ABSENT, dtype="<u8")
        offset = 0
        for j, chunk in enumerate(encoded):
            if chunk is not None:
                index_S2[j] = (offset, len(chunk))
                offset += len(chunk)
        key = plan.chunk_key.encode_chunk_key((k,) + (0,) * (plan.ndim - 1))
        path = plan.file_root / key
        if offset == 0:  # no chunk holds anything but the fill value: no shard file (as zarr)
            path.unlink(missing_ok=True)
            return
        index = index_S2.tobytes()
        if plan.index_crc:
            index += _crc32c.crc32c(index).to_bytes(4, "little")
        parts = [c for c in encoded if c is not None] + [index]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.writelines(parts)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def _encode(self, item: np.ndarray) -> bytes | None:
        if not item.any():  # all fill value (0): zarr leaves the chunk out
            return None
        cname, clevel, shuffle, blocksize, typesize = self.blosc  # type: ignore[misc]
        data = _blosc.compress(item, cname, clevel, shuffle, blocksize, typesize)
        if self.plan.chunk_crc:  # type: ignore[union-attr]
            return data + _crc32c.crc32c(data).to_bytes(4, "little")
        return data

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
