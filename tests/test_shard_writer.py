"""The direct shard writer writes the very bytes zarr-python writes, and zarr reads them back."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from store_schema import codecs as codecs_mod
from store_schema.codecs import CodecSpec
from store_schema.shard_writer import ShardWriter


def _array(root, name, spec: CodecSpec, shape, shard):
    g = zarr.open_group(root, mode="a", zarr_format=3)
    return g.create_array(name, shape=shape, chunks=(1, *shape[1:]), shards=(shard, *shape[1:]),
                          dtype=spec.stored_dtype, fill_value=0, filters=codecs_mod.float_filters(spec),
                          compressors=codecs_mod.compressors(spec))


def _values(spec: CodecSpec, shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * np.exp(rng.normal(size=shape[-1]))).astype(np.float32)
    x[1] = 0  # an image whose values are all the fill value: zarr leaves its chunk out
    return codecs_mod.encode_for_store(x, spec)


@pytest.mark.parametrize("spec", [CodecSpec(), CodecSpec(compressor="zstd", clevel=3, shuffle="shuffle"),
                                  CodecSpec(keepbits=None), CodecSpec(checksum=False)],
                         ids=["default", "zstd-shuffle", "lossless-f32", "no-crc"])
@pytest.mark.parametrize("threads", [1, 3])
def test_same_bytes_as_zarr(tmp_path, spec, threads):
    shape, S = (11, 2, 3, 4, 8), 4  # the last shard is partial (3 of 4 images)
    a = _array(tmp_path / "zarr", "patches", spec, shape, S)
    b = _array(tmp_path / "fast", "patches", spec, shape, S)
    writer = ShardWriter(b, threads=threads)
    assert writer.fast
    for k in range(3):
        lo, hi = k * S, min(shape[0], (k + 1) * S)
        v = _values(spec, (hi - lo, *shape[1:]), k)
        a[lo:hi] = v
        writer.write(k, v)
        name = f"c/{k}/0/0/0/0"
        assert (tmp_path / "fast" / "patches" / name).read_bytes() == (tmp_path / "zarr" / "patches" / name).read_bytes()
        np.testing.assert_array_equal(zarr.open_array(tmp_path / "fast" / "patches")[lo:hi], v)
    writer.close()
    assert not list((tmp_path / "fast").rglob("*.partial"))


def test_empty_shard_has_no_file_and_rewrite_replaces(tmp_path):
    spec, shape, S = CodecSpec(), (8, 2, 2, 2, 4), 4
    arr = _array(tmp_path, "patches", spec, shape, S)
    w = ShardWriter(arr)
    v = _values(spec, (S, *shape[1:]), 0)
    w.write(0, v)
    f = tmp_path / "patches" / "c/0/0/0/0/0"
    assert f.exists()
    w.write(0, np.zeros_like(v))
    assert not f.exists()
    np.testing.assert_array_equal(arr[0:4], 0)
    w.write(1, v)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "patches")[4:8], v)


def test_filters_and_wrong_shapes(tmp_path):
    arr = _array(tmp_path, "p", CodecSpec(keepbits=10), (4, 1, 2, 2, 4), 2)
    w = ShardWriter(arr)
    assert not w.fast  # a BitRound filter: zarr writes (and rounds) it
    x = np.random.default_rng(0).normal(size=(2, 1, 2, 2, 4)).astype(np.float32)
    w.write(1, x)
    np.testing.assert_array_equal(arr[2:4], codecs_mod.round_as_stored(x, CodecSpec(keepbits=10)))
    with pytest.raises(ValueError, match="shard 0 of p holds"):
        w.write(0, x[:1])
