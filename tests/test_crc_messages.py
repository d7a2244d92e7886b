"""A damaged chunk read through zarr (evaluation's reads, the loader's generic path for non-local stores)
is one error naming the store, the array and the shard, and how to redo it, not zarr's bare
`Stored and computed checksum do not match. Stored: b'...'`."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from stages.extract.driver import ExtractConfig, run_extract
from store_schema.errors import StoreCorruptionError
from store_schema.layout import teacher_store_path
from store_schema.shard_reader import ShardReader
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture"]


def test_teacher_store_reads_name_store_array_and_shard(tmp_path, make_corpus):
    root = make_corpus(tmp_path, n_ok=6)  # 8 images
    run_extract(root, "tiny_sam", ExtractConfig(workers=0, shard_size=4, batch_size=8, progress=False))
    store = open_teacher_store(teacher_store_path(root, "tiny_sam"))
    path = store.path / "patches" / "c" / "1" / "0" / "0" / "0" / "0"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x40
    path.write_bytes(bytes(raw))
    for read in (lambda: store.read_images(np.array([4, 5])), lambda: store.read_shard(1)):
        with pytest.raises(StoreCorruptionError) as err:
            read()
        text = str(err.value)
        assert f"{store.path}: patches of shard 1 is damaged" in text
        assert "--teacher tiny_sam --redo-shards" in text and "Stored:" not in text and "b'" not in text


def test_generic_reader_path_names_the_shard(tmp_path):
    mem = zarr.storage.MemoryStore()
    arr = zarr.open_group(mem, mode="w", zarr_format=3).create_array(
        "patches", shape=(8, 2, 16), chunks=(1, 2, 16), shards=(4, 2, 16), dtype="uint16", fill_value=0,
        compressors=[BloscCodec(cname="lz4"), Crc32cCodec()])
    arr[:] = np.arange(8 * 2 * 16, dtype=np.uint16).reshape(8, 2, 16) + 1
    key = "patches/c/1/0/0"
    buf = bytearray(mem._store_dict[key].to_bytes())
    buf[20] ^= 0xFF
    mem._store_dict[key] = type(mem._store_dict[key]).from_bytes(bytes(buf))
    reader = ShardReader(arr, store_path="memory://s", name="patches")
    assert not reader.fast
    with pytest.raises(StoreCorruptionError, match=r"memory://s: patches of shard\(s\) \[1\] is damaged") as err:
        reader.read_into(4, 8, np.empty((4, 2, 16), np.uint16))
    assert "Stored:" not in str(err.value) and "--redo-shards" in str(err.value)
