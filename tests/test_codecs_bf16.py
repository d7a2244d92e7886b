"""bf16 bit patterns (schema v2) are numcodecs' BitRound(7), bit for bit, in numpy and in torch.

The store keeps the top 16 bits of BitRound(7)-rounded float32 values as uint16; stage one rounds on the
teacher's device with `torch_bitround`. Both must agree with numcodecs on every float32 pattern,
including NaN payloads, infinities, subnormals, ±0 and values that round up to infinity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numcodecs import BitRound

from store_schema.codecs import (CodecSpec, bf16_bits_to_float32, decode_from_store, encode_for_store,
                                 float32_to_bf16_bits, round_as_stored, torch_bf16_bits_to_float32,
                                 torch_bitround, torch_float32_to_bf16_bits)

EDGE_BITS = np.array([
    0x00000000, 0x80000000,  # +0, -0
    0x7F800000, 0xFF800000,  # +inf, -inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FC08000,  # NaNs
    0x00000001, 0x80000001, 0x00008000, 0x00018000, 0x007FFFFF, 0x807FFFFF,  # subnormals, ties
    0x00800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF,  # min normal, max finite (-> inf)
    0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001,  # ties to even around 1.0
], dtype=np.uint32)


def _all_kinds_of_floats() -> np.ndarray:
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    normal = (rng.standard_normal(100_000) * 10.0 ** rng.uniform(-40, 38, 100_000)).astype(np.float32)
    return np.concatenate([EDGE_BITS, random_bits, normal.view(np.uint32)]).view(np.float32)


def _numcodecs_bits(x: np.ndarray, keepbits: int = 7) -> np.ndarray:
    return np.asarray(BitRound(keepbits).encode(x)).view(np.uint32)


@pytest.mark.parametrize("keepbits", [7, 3, 0])
def test_numpy_bf16_bits_equal_numcodecs_bitround(keepbits):
    x = _all_kinds_of_floats()
    ref = _numcodecs_bits(x, keepbits)
    assert not (ref & 0xFFFF).any()  # BitRound(k <= 7) leaves nothing in the low half
    bits = float32_to_bf16_bits(x, keepbits)
    assert bits.dtype == np.uint16 and bits.shape == x.shape
    np.testing.assert_array_equal(bits, (ref >> 16).astype(np.uint16))
    np.testing.assert_array_equal(bf16_bits_to_float32(bits).view(np.uint32), ref)


@pytest.mark.parametrize("keepbits", [7, 3, 10, None])
def test_torch_bitround_equals_numcodecs(keepbits):
    x = _all_kinds_of_floats()
    got = torch_bitround(torch.from_numpy(x), keepbits).numpy().view(np.uint32)
    ref = x.view(np.uint32) if keepbits is None else _numcodecs_bits(x, keepbits)
    np.testing.assert_array_equal(got, ref)


def test_torch_bf16_bits_round_trip_and_match_numpy():
    x = _all_kinds_of_floats()
    x = x[: x.size // 4 * 4].reshape(-1, 4)
    t_bits = torch_float32_to_bf16_bits(torch.from_numpy(x))
    assert t_bits.dtype == torch.int16 and tuple(t_bits.shape) == x.shape
    np.testing.assert_array_equal(t_bits.numpy().view(np.uint16), float32_to_bf16_bits(x))
    back = torch_bf16_bits_to_float32(t_bits).numpy()
    np.testing.assert_array_equal(back.view(np.uint32), _numcodecs_bits(x).reshape(x.shape))


def test_edge_values_round_as_expected():
    got = bf16_bits_to_float32(float32_to_bf16_bits(EDGE_BITS.view(np.float32)))
    assert np.signbit(got[1]) and got[1] == 0 and got[0] == 0 and not np.signbit(got[0])
    assert got[2] == np.inf and got[3] == -np.inf
    assert np.isinf(got[18]) and np.isinf(got[19])  # the largest float32 rounds to +-inf in bf16
    assert float32_to_bf16_bits(np.float32(1.0)) == 0x3F80


def test_codec_spec_stored_dtype_and_store_round_trip():
    assert CodecSpec().stored_dtype == "uint16" and CodecSpec(keepbits=5).stored_dtype == "uint16"
    assert CodecSpec(keepbits=10).stored_dtype == "float32" and CodecSpec(keepbits=None).stored_dtype == "float32"
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    for spec in (CodecSpec(), CodecSpec(keepbits=10), CodecSpec(keepbits=None)):
        stored = encode_for_store(x, spec)
        assert stored.dtype == np.dtype(spec.stored_dtype)
        if spec.stored_dtype == "uint16":
            np.testing.assert_array_equal(decode_from_store(stored), round_as_stored(x, spec))
    with pytest.raises(ValueError, match="at most 7 mantissa bits"):
        float32_to_bf16_bits(x, 8)
    with pytest.raises(ValueError, match="must be uint16"):
        bf16_bits_to_float32(np.zeros(3, np.int32))


def test_default_codec_writes_zstd_blocks_of_its_blocksize_and_old_specs_keep_blosc_automatic(tmp_path):
    """The default chain is zstd-1 on 2 MiB Blosc blocks (stage two's read speed, docs/STAGE_TWO.md), as
    written into each chunk's Blosc header; a spec recorded before `blocksize` existed reads back as 0."""
    import zarr
    from numcodecs import blosc

    from store_schema.codecs import DEFAULT_BLOCKSIZE, compressors

    spec = CodecSpec()
    assert (spec.compressor, spec.clevel, spec.shuffle, spec.blocksize) == ("zstd", 1, "bitshuffle", DEFAULT_BLOCKSIZE)
    x = float32_to_bf16_bits(np.random.default_rng(2).standard_normal((2, 3 * 2**20 // 2)).astype(np.float32))
    arr = zarr.create_array(tmp_path / "a", shape=x.shape, chunks=(1, x.shape[1]), dtype="uint16", fill_value=0,
                            compressors=compressors(spec))
    arr[:] = x
    chunk = (tmp_path / "a" / "c" / "0" / "0").read_bytes()[:-4]  # crc32c trails the Blosc buffer
    assert blosc.cbuffer_complib(chunk) == "Zstd"
    assert int.from_bytes(chunk[8:12], "little") == DEFAULT_BLOCKSIZE  # Blosc1 header: blocksize at bytes 8-11
    np.testing.assert_array_equal(arr[:], x)
    old = {k: v for k, v in CodecSpec(compressor="lz4", clevel=5).to_dict().items() if k != "blocksize"}
    assert CodecSpec.from_dict(old).blocksize == 0 and CodecSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="blocksize must be 0"):
        CodecSpec(blocksize=-1)
