"""Codec specs for the feature store: float32 -> bf16 bit patterns (uint16) -> Blosc(bitshuffle) -> crc32c.

Keeping k = 7 mantissa bits (bf16 precision) with round-to-nearest-even stores activations with relative
MSE ~ 2^-2k / 24 (Klöwer et al. 2021, "Compressing atmospheric data into its real information content",
bit rounding). Since schema v2 the kept bits are stored as what they are: the top 16 bits of the float32,
i.e. bf16 bit patterns in a uint16 array, compressed by Blosc with bitshuffle. This is bit-for-bit the
same rounding as numcodecs' BitRound(7) on float32 (`float32_to_bf16_bits` uses its integer recipe, so
NaN payloads, infinities, subnormals and ±0 round the same way), but Blosc only has half the bytes to
shuffle and compress: measured at the paper teachers' shapes in docs/STAGE_ONE.md (faster writes and
smaller files than float32 BitRound-7 + zstd-5). The default compressor, zstd level 1 on 2 MiB Blosc
blocks, is chosen for stage two's read speed at <= 13 bits/value (docs/STAGE_TWO.md). keepbits < 7 rounds further and still fits
16 bits; keepbits in 8..23 keeps the float32 + numcodecs BitRound path; keepbits=None is lossless
float32. crc32c makes corruption an error on read; the sharding index carries its own crc32c.

The same rounding in torch (`torch_float32_to_bf16_bits`) runs on the teacher's device in stage one, so
statistics of the stored values are computed there without reading the shard back.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zarr
from numcodecs import BitRound as _NumcodecsBitRound
from zarr.codecs import BloscCodec, Crc32cCodec

BLOSC_CNAMES = ("zstd", "lz4", "lz4hc", "blosclz", "zlib")
BLOSC_SHUFFLES = ("noshuffle", "shuffle", "bitshuffle")
FLOAT32_MANTISSA_BITS = 23
BF16_MANTISSA_BITS = 7
DEFAULT_BLOCKSIZE = 2 * 2**20  # Blosc block bytes: zstd decodes faster and compresses better on big blocks
BULK_IO_BATCH_CHUNKS = 64  # inner chunks per codec-pipeline batch in bulk_io()
_LOW16_MASK = -65536  # int32 0xFFFF0000: clears the 16 bits a bf16 drops

if sys.byteorder != "little":  # the uint16 view of a float32's high half assumes little-endian memory
    raise ImportError("store_schema.codecs needs a little-endian machine")


@dataclass(frozen=True)
class CodecSpec:
    """How float arrays are stored. keepbits=None means lossless float32 (no rounding).

    keepbits <= 7: bf16 bit patterns in uint16 (the default, 7 = bf16 precision); 8..23: float32 with
    numcodecs BitRound. blocksize: Blosc's block in bytes (0: Blosc picks one from the level). Defaults
    chosen by measurement (docs/STAGE_TWO.md, docs/STAGE_ONE.md): zstd level 1, bitshuffle, 2 MiB blocks."""

    keepbits: int | None = 7
    compressor: str = "zstd"
    clevel: int = 1
    shuffle: str = "bitshuffle"
    checksum: bool = True
    blocksize: int = DEFAULT_BLOCKSIZE

    def __post_init__(self) -> None:
        if self.keepbits is not None and not 0 <= self.keepbits <= FLOAT32_MANTISSA_BITS:
            raise ValueError(f"keepbits must be None or in [0, 23], got {self.keepbits}")
        if self.compressor not in BLOSC_CNAMES:
            raise ValueError(f"unknown compressor {self.compressor!r}; valid: {', '.join(BLOSC_CNAMES)}")
        if not 0 <= self.clevel <= 9:
            raise ValueError(f"clevel must be in [0, 9], got {self.clevel}")
        if self.shuffle not in BLOSC_SHUFFLES:
            raise ValueError(f"unknown shuffle {self.shuffle!r}; valid: {', '.join(BLOSC_SHUFFLES)}")
        if not 0 <= self.blocksize < 2**31:
            raise ValueError(f"blocksize must be 0 (Blosc's automatic choice) or a positive number of bytes "
                             f"below 2 GiB, got {self.blocksize}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodecSpec":
        """The spec a store recorded; stores written before `blocksize` existed used Blosc's automatic one."""
        return cls(**{"blocksize": 0, **d})

    @property
    def lossless(self) -> bool:
        return self.keepbits is None

    @property
    def stored_dtype(self) -> str:
        """dtype of the feature arrays on disk: "uint16" (bf16 bit patterns) or "float32"."""
        return "uint16" if self.keepbits is not None and self.keepbits <= BF16_MANTISSA_BITS else "float32"


def float_filters(spec: CodecSpec) -> list[Any]:
    """zarr v3 array-to-array filters for float feature arrays ([] when lossless or stored as uint16,
    where the writer rounds before zarr sees the values)."""
    if spec.keepbits is None or spec.stored_dtype == "uint16":
        return []
    with warnings.catch_warnings():
        # zarr warns that numcodecs codecs are outside the v3 spec; known and accepted here.
        warnings.simplefilter("ignore")
        from zarr.codecs.numcodecs import BitRound

        return [BitRound(keepbits=spec.keepbits)]


def compressors(spec: CodecSpec) -> list[Any]:
    """zarr v3 bytes-to-bytes codecs: Blosc, then crc32c when spec.checksum."""
    out: list[Any] = [BloscCodec(cname=spec.compressor, clevel=spec.clevel, shuffle=spec.shuffle,
                                 blocksize=spec.blocksize)]
    if spec.checksum:
        out.append(Crc32cCodec())
    return out


def _bitround_int32(b: np.ndarray, keepbits: int) -> np.ndarray:
    """numcodecs' BitRound recipe on an int32 view, in place (two's-complement wrap is intended)."""
    maskbits = FLOAT32_MANTISSA_BITS - keepbits
    if maskbits == 0:
        return b
    mask = np.int32((-1 >> maskbits) << maskbits)
    with np.errstate(over="ignore"):
        b += ((b >> maskbits) & 1) + np.int32((1 << (maskbits - 1)) - 1)
    b &= mask
    return b


def float32_to_bf16_bits(x: np.ndarray, keepbits: int = BF16_MANTISSA_BITS) -> np.ndarray:
    """float32 -> uint16 bf16 bit patterns, round to nearest even; bit-identical to the top half of
    numcodecs BitRound(keepbits).encode(x) for every float32 (NaN, inf, subnormal, ±0 included).

    keepbits <= 7 (7: plain bf16 rounding)."""
    if not 0 <= keepbits <= BF16_MANTISSA_BITS:
        raise ValueError(f"bf16 bit patterns keep at most 7 mantissa bits, got keepbits={keepbits}")
    x = np.asarray(x, dtype=np.float32)
    b = np.array(x.reshape(-1) if x.ndim == 0 else x, dtype=np.float32, order="C", copy=True).view(np.int32)
    _bitround_int32(b, keepbits)
    return np.ascontiguousarray(b.view(np.uint16)[..., 1::2]).reshape(x.shape)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> float32 (exact: every bf16 is a float32)."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise ValueError(f"bf16 bit patterns must be uint16, got {bits.dtype}")
    return (bits.astype(np.uint32) << 16).view(np.float32)


def torch_bitround(x: Any, keepbits: int | None) -> Any:
    """numcodecs BitRound(keepbits) in torch, on the tensor's device: float32 tensor -> float32 tensor,
    bit-identical to numcodecs (int32 two's-complement recipe). keepbits None or 23: a float32 copy."""
    import torch

    x = x.to(torch.float32).contiguous()
    if keepbits is None or keepbits == FLOAT32_MANTISSA_BITS:
        return x.clone()
    if not 0 <= keepbits < FLOAT32_MANTISSA_BITS:
        raise ValueError(f"keepbits must be None or in [0, 23], got {keepbits}")
    b = x.view(torch.int32)
    maskbits = FLOAT32_MANTISSA_BITS - keepbits
    b = (b + (((b >> maskbits) & 1) + ((1 << (maskbits - 1)) - 1))) & ((-1 >> maskbits) << maskbits)
    return b.view(torch.float32)


def torch_float32_to_bf16_bits(x: Any, keepbits: int = BF16_MANTISSA_BITS) -> Any:
    """Torch version of `float32_to_bf16_bits` (any device): float32 tensor -> int16 tensor holding the
    uint16 bf16 bit patterns (torch has no general uint16 arithmetic; `.numpy().view(np.uint16)` on the
    host gives the stored array). Bit-identical to numcodecs BitRound(keepbits) on float32."""
    if not 0 <= keepbits <= BF16_MANTISSA_BITS:
        raise ValueError(f"bf16 bit patterns keep at most 7 mantissa bits, got keepbits={keepbits}")
    return float32_bits_high_half(torch_bitround(x, keepbits))


def float32_bits_high_half(x: Any) -> Any:
    """The top 16 bits of each float32 of a torch tensor, as int16 (a bf16 bit pattern when the low 16
    bits are zero, as after `torch_bitround(x, k <= 7)`)."""
    import torch

    return x.contiguous().view(torch.int16)[..., 1::2].contiguous()


def torch_bf16_bits_to_float32(bits: Any) -> Any:
    """int16 (or uint16) tensor of bf16 bit patterns -> float32 tensor, exact, on the tensor's device."""
    import torch

    return ((bits.to(torch.int32) & 0xFFFF) << 16).view(torch.float32)


def round_as_stored(x: np.ndarray, spec: CodecSpec) -> np.ndarray:
    """The float32 values a store will hold for x (identity when lossless).

    Lets a writer or a test compute statistics of the stored values without reading the shard back."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if spec.keepbits is None:
        return x.copy()
    return np.asarray(_NumcodecsBitRound(keepbits=spec.keepbits).encode(x)).view(np.float32).reshape(x.shape)


def encode_for_store(x: np.ndarray, spec: CodecSpec) -> np.ndarray:
    """Values in the array's stored dtype: uint16 bf16 bits when spec.stored_dtype is uint16, else float32
    (zarr's BitRound filter then rounds them)."""
    if spec.stored_dtype == "uint16":
        if isinstance(x, np.ndarray) and x.dtype == np.uint16:
            return x
        return float32_to_bf16_bits(x, spec.keepbits)
    return np.asarray(x, dtype=np.float32)


def decode_from_store(x: np.ndarray) -> np.ndarray:
    """Stored values -> float32 (bf16 bits widened exactly; float32 returned as is)."""
    x = np.asarray(x)
    return bf16_bits_to_float32(x) if x.dtype == np.uint16 else x.astype(np.float32, copy=False)


def bulk_io() -> Any:
    """Context manager for reading or writing whole shards of many small inner chunks (one image each).

    zarr's codec pipeline encodes / decodes one chunk per batch by default; batching the inner chunks of
    a shard cuts ~20% of the CPU of a shard read or write (measured: loader benchmark; 16-image shard
    writes 13.5-15.0 -> 10.5-12.0 ms). Scoped to the `with` block; the bytes written and values read
    are unchanged."""
    return zarr.config.set({"codec_pipeline.batch_size": BULK_IO_BATCH_CHUNKS})
