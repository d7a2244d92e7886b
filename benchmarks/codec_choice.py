"""Which codec stores teacher features best: bits per value, encode and decode MB/s per core.

Stage one writes every teacher output once and stage two reads it every epoch (AM-RADIO, arXiv
2312.06709; PHI-S, arXiv 2410.01680), so write and read speed both count. Compares the schema-v1 codec
(float32 -> numcodecs BitRound(7) -> Blosc zstd-5 bitshuffle) with bf16 bit patterns stored as uint16
under Blosc zstd levels 1/3/5 and lz4 (Blosc's automatic block size, and 1-2 MiB blocks), at the paper teachers' exact chunk shapes (one image = 2 views x
grid x channels): DINOv2-g/14 @224 (16x16x1536 + 1536), DFN CLIP-H/14 @378 (27x27x1280 + 1024), SigLIP
SO400M @384 (27x27x1152 + 1152), SAM-H pooled to 32x32 (x1280, no summary).

The features are synthetic (no weights offline): low-rank (rank 64) Gaussian tokens with lognormal
channel scales and means, plus an isotropic noise floor, a rough stand-in for real teachers' low
effective rank (SAM-H: 776 of 1280 in the PHI-S paper). Absolute bits/value depend on the data; the
comparison between codecs is what this measures. One Blosc thread; CPU time (time.process_time), so
the numbers are per core and do not depend on the machine's load.

Run: python benchmarks/codec_choice.py [--images 8] [--features lowrank|standin]
"""

from __future__ import annotations

import argparse
import time

import numcodecs
import numpy as np
from numcodecs import Blosc

from store_schema.codecs import bf16_bits_to_float32, float32_to_bf16_bits, round_as_stored, CodecSpec

SHAPES = {  # name: (grid side h = w, patch channels, summary channels)
    "dinov2_g@224": (16, 1536, 1536),
    "clip_h@378": (27, 1280, 1024),
    "siglip@384": (27, 1152, 1152),
    "sam_h@1024 pooled 32x32": (32, 1280, 0),
}
VIEWS = 2
MiB = 2**20
CANDIDATES = (  # (label, stored dtype, cname, clevel, Blosc blocksize in bytes, 0: Blosc's automatic)
    ("float32 BitRound7 zstd-5 (schema v1)", "float32", "zstd", 5, 0),
    ("uint16 bf16 zstd-1", "uint16", "zstd", 1, 0),
    ("uint16 bf16 zstd-3", "uint16", "zstd", 3, 0),
    ("uint16 bf16 zstd-5", "uint16", "zstd", 5, 0),
    ("uint16 bf16 lz4-5 (schema v2 until issue 10)", "uint16", "lz4", 5, 0),
    ("uint16 bf16 lz4-9", "uint16", "lz4", 9, 0),
    ("uint16 bf16 zstd-1, 1 MiB blocks", "uint16", "zstd", 1, MiB),
    ("uint16 bf16 zstd-1, 2 MiB blocks (default)", "uint16", "zstd", 1, 2 * MiB),
    ("uint16 bf16 zstd-3, 2 MiB blocks", "uint16", "zstd", 3, 2 * MiB),
    ("uint16 bf16 lz4-5, 2 MiB blocks", "uint16", "lz4", 5, 2 * MiB),
    ("uint16 bf16 lz4-9, 2 MiB blocks", "uint16", "lz4", 9, 2 * MiB),
    ("uint16 bf16 lz4hc-1, 2 MiB blocks", "uint16", "lz4hc", 1, 2 * MiB),
)


def synthetic_tokens(n: int, c: int, rng: np.random.Generator, rank: int = 64) -> np.ndarray:
    """[n, c] float32 low-rank tokens with per-channel scale and offset."""
    scale_C = np.exp(rng.normal(0.0, 0.7, c)).astype(np.float32)
    basis_RC = rng.standard_normal((rank, c)).astype(np.float32) / np.sqrt(rank)
    mean_C = rng.normal(0.0, 0.5, c).astype(np.float32)
    z_NR = rng.standard_normal((n, rank)).astype(np.float32) * np.linspace(2.0, 0.1, rank, dtype=np.float32)
    return (z_NR @ basis_RC + 0.05 * rng.standard_normal((n, c)).astype(np.float32)) * scale_C + mean_C


def measure(chunks_f32: list[np.ndarray], dtype: str, cname: str, clevel: int,
            blocksize: int = 0) -> tuple[float, float, float, float]:
    """(bits/value, encode MB/s, decode MB/s, stage-two read s) per core: MB of the float32 values the chunk
    stands for; the read is Blosc-decoding the stored bytes into a reused buffer, as stage two's shard
    reader does (bf16 bits delivered, no widening; best of 3)."""
    codec = Blosc(cname=cname, clevel=clevel, shuffle=Blosc.BITSHUFFLE, blocksize=blocksize)
    prepared = []
    for x in chunks_f32:  # the rounding is part of the write
        prepared.append(x)
    t = time.process_time()
    blobs = []
    for x in prepared:
        if dtype == "uint16":
            raw = float32_to_bf16_bits(x)
        else:
            raw = round_as_stored(x, CodecSpec(keepbits=7))
        blobs.append(codec.encode(raw))
    enc = time.process_time() - t
    t = time.process_time()
    for b in blobs:
        raw = np.frombuffer(codec.decode(b), dtype=dtype)
        _ = bf16_bits_to_float32(raw) if dtype == "uint16" else raw
    dec = time.process_time() - t
    outs = [np.empty(x.shape, dtype) for x in chunks_f32]
    read = float("inf")
    for _ in range(3):
        t = time.process_time()
        for b, o in zip(blobs, outs):
            numcodecs.blosc.decompress(b, o)
        read = min(read, time.process_time() - t)
    values = sum(x.size for x in chunks_f32)
    mb = values * 4 / 1e6
    stored = sum(len(b) for b in blobs)
    return 8.0 * stored / values, mb / max(enc, 1e-9), mb / max(dec, 1e-9), read


def standin_chunks(images: int) -> dict[str, list[np.ndarray]]:
    """Stage one's stand-in teachers (benchmarks/stage_one_cost.py) on the demo photos' two views."""
    import sys
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stage_one_cost import StandIn

    from stages.corpus.build_manifest import build_manifest
    from stages.corpus.demo import PHOTOS_SUBDIR, export_demo_corpus
    from stages.corpus.samples import render_samples
    from store_schema.manifest import ViewSpec

    with tempfile.TemporaryDirectory() as tmp:
        demo = export_demo_corpus(Path(tmp) / "demo")
        m = build_manifest(demo.images_dir / PHOTOS_SUBDIR, out_dir=Path(tmp) / "root",
                           view_spec=ViewSpec(num_views=VIEWS), val_fraction=0.0)
        pairs = np.array([(i, v) for i in range(min(images, m.num_images)) for v in range(VIEWS)], np.int64)
        out = {}
        for (name, (side, cp, cs)), res in zip(SHAPES.items(), (224, 378, 384, 1024)):
            px = torch.from_numpy(render_samples(m, pairs, res)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            with torch.no_grad():
                o = StandIn(SimpleNamespace(grid=(side, side), patch_dim=cp, summary_dim=cs), seed=len(name))(px)
            patches = o.patches_BhwC.numpy().reshape(-1, VIEWS, side, side, cp)
            out[name] = [p for p in patches] + ([s for s in o.summary_BC.numpy().reshape(-1, VIEWS, cs)] if cs else [])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8, help="images (chunks) per shape")
    ap.add_argument("--features", choices=("lowrank", "standin"), default="lowrank",
                    help="synthetic low-rank tokens, or stage one's stand-in teachers on the demo photos")
    args = ap.parse_args()
    numcodecs.blosc.set_nthreads(1)
    numcodecs.blosc.use_threads = False
    rng = np.random.default_rng(0)
    data = standin_chunks(args.images) if args.features == "standin" else {}
    for name, (side, cp, cs) in ({} if data else SHAPES).items():
        chunks = []
        for _ in range(args.images):
            chunks.append(synthetic_tokens(VIEWS * side * side, cp, rng).reshape(VIEWS, side, side, cp))
            if cs:
                chunks.append(synthetic_tokens(VIEWS, cs, rng))
        data[name] = chunks
    print(f"{args.images} images x {VIEWS} views per shape ({args.features} features); one core (process_time), "
          "Blosc bitshuffle, 1 thread; read GB/s: stored dtype delivered into reused buffers (stage two)")
    print("| codec | " + " | ".join(f"{n} bits/value" for n in SHAPES)
          + " | all: bits/value | encode MB/s | decode MB/s | read GB/s |")
    print("|---|" + "---|" * (len(SHAPES) + 4))
    for label, dtype, cname, clevel, blocksize in CANDIDATES:
        per, tot_bits, tot_vals, enc_s, dec_s, mb, read_s, read_b = [], 0.0, 0, 0.0, 0.0, 0.0, 0.0, 0
        for name, chunks in data.items():
            bits, enc, dec, rd = measure(chunks, dtype, cname, clevel, blocksize)
            read_s += rd
            read_b += sum(x.size for x in chunks) * np.dtype(dtype).itemsize
            vals = sum(x.size for x in chunks)
            per.append(bits)
            tot_bits += bits * vals
            tot_vals += vals
            m = vals * 4 / 1e6
            mb += m
            enc_s += m / enc
            dec_s += m / dec
        print(f"| {label} | " + " | ".join(f"{b:.2f}" for b in per)
              + f" | {tot_bits / tot_vals:.2f} | {mb / enc_s:.0f} | {mb / dec_s:.0f} | {read_b / read_s / 1e9:.2f} |")


if __name__ == "__main__":
    main()
