"""The fast shard reader of stage two (store_schema/shard_reader.py) against zarr-python's own reads.

Real Zarr v3 arrays on disk (and in zarr's MemoryStore for the generic path), the store's codec chains:
float32 + BitRound(7) (schema v1) and uint16 bf16 bit patterns; both deliver uint16 bf16 bits.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from numcodecs import BitRound
from zarr.codecs import BloscCodec, Crc32cCodec

from store_schema.errors import StoreCorruptionError
from store_schema.shard_reader import ShardReader, compact_dtype_of

S, V, H, W, C = 4, 2, 3, 3, 16  # images per shard, views, grid, channels


def _values(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, V, H, W, C)) * np.exp(rng.normal(0, 2, C))).astype(np.float32)


def _array(root: object, dtype: str, n: int = 10) -> zarr.Array:
    group = zarr.open_group(root, mode="w", zarr_format=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from zarr.codecs.numcodecs import BitRound as ZBitRound

        filters = [ZBitRound(keepbits=7)] if dtype == "float32" else []
    arr = group.create_array("patches", shape=(n, V, H, W, C), chunks=(1, V, H, W, C), shards=(S, V, H, W, C),
                             dtype=dtype, fill_value=0, filters=filters,
                             compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec()])
    x = _values(n)
    if dtype == "uint16":
        x = np.asarray(BitRound(7).encode(x)).view(np.uint32).reshape(x.shape)
        arr[:] = (x >> 16).astype(np.uint16)
    else:
        arr[:] = x
    return arr


def _bf16_bits(arr: zarr.Array, a: int, b: int) -> np.ndarray:
    """What zarr reads, as bf16 bit patterns."""
    x = np.asarray(arr[a:b])
    return x if x.dtype == np.uint16 else (x.view(np.uint32) >> 16).astype(np.uint16)


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_fast_reads_equal_zarr_reads(tmp_path: Path, dtype: str) -> None:
    arr = _array(tmp_path / "s.zarr", dtype)
    reader = ShardReader(arr, store_path=tmp_path, name="patches")
    assert reader.fast and reader.compact == np.uint16 and compact_dtype_of(arr) == np.uint16
    out = np.full((8, V, H, W, C), 7, np.uint16)
    for a, b in ((0, 4), (4, 8), (8, 10), (2, 7)):  # whole shards, the short last shard, across shards
        absent = reader.read_into(a, b, out)
        assert not absent.any()
        assert np.array_equal(out[: b - a], _bf16_bits(arr, a, b)), (a, b)


def test_generic_path_for_other_stores_gives_the_same_values(tmp_path: Path) -> None:
    local = _array(tmp_path / "s.zarr", "uint16")
    memory = _array(zarr.storage.MemoryStore(), "uint16")
    reader = ShardReader(memory, store_path=Path("memory://"), name="patches")
    assert not reader.fast
    out = np.empty((4, V, H, W, C), np.uint16)
    assert not reader.read_into(4, 8, out).any()
    assert np.array_equal(out, _bf16_bits(local, 4, 8))


def test_absent_chunks_are_reported_not_silently_zero(tmp_path: Path) -> None:
    arr = _array(tmp_path / "s.zarr", "uint16")
    arr[5] = 0  # zarr does not store a chunk equal to the fill value: image 5 has no chunk
    shard1 = tmp_path / "s.zarr" / "patches" / "c" / "2" / "0" / "0" / "0" / "0"
    shard1.unlink()  # images 8, 9: the whole shard file is gone
    reader = ShardReader(arr, store_path=tmp_path, name="patches")
    out = np.full((10, V, H, W, C), 7, np.uint16)
    absent = reader.read_into(0, 10, out)
    assert absent.tolist() == [False] * 5 + [True] + [False] * 2 + [True, True]
    assert not out[[5, 8, 9]].any()


def test_a_damaged_chunk_fails_its_checksum(tmp_path: Path) -> None:
    arr = _array(tmp_path / "s.zarr", "uint16")
    shard = tmp_path / "s.zarr" / "patches" / "c" / "1" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF  # inside the first inner chunk
    shard.write_bytes(bytes(data))
    reader = ShardReader(arr, store_path=tmp_path, name="patches")
    with pytest.raises(StoreCorruptionError, match=r"patches image 4 \(shard 1.*crc32c mismatch"):
        reader.read_into(4, 8, np.empty((4, V, H, W, C), np.uint16))
    data[-2] ^= 0xFF  # the index checksum
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptionError, match=r"shard 1 index .*crc32c mismatch"):
        reader.read_into(4, 8, np.empty((4, V, H, W, C), np.uint16))


def test_lossless_float32_is_delivered_as_float32(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "l.zarr", mode="w", zarr_format=3)
    arr = group.create_array("patches", shape=(4, V, H, W, C), chunks=(1, V, H, W, C), shards=(4, V, H, W, C),
                             dtype="float32", fill_value=0, compressors=[BloscCodec(cname="zstd"), Crc32cCodec()])
    arr[:] = _values(4)
    reader = ShardReader(arr, store_path=tmp_path, name="patches")
    assert reader.fast and reader.compact == np.float32
    out = np.empty((4, V, H, W, C), np.float32)
    reader.read_into(0, 4, out)
    assert np.array_equal(out, np.asarray(arr[:]))


def test_generic_path_reports_absent_chunks_too(tmp_path: Path) -> None:
    memory = _array(zarr.storage.MemoryStore(), "uint16")
    memory[1] = 0  # not stored (fill value)
    reader = ShardReader(memory, store_path=Path("memory://"), name="patches")
    absent = reader.read_into(0, 6, np.empty((6, V, H, W, C), np.uint16))
    assert absent.tolist() == [False, True, False, False, False, False]
