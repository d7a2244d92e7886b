"""What evaluation at the papers' scale costs the host: peak memory and time per image of kNN and probes.

The PHI-S paper (arXiv 2410.01680, Table 18) reports ImageNet-1k kNN (k = 20, τ = 0.07, cosine, on RADIO's
concatenated summary tokens) and ADE20k linear segmentation. At those sizes a queries x bank similarity
matrix is 50,000 x 1,281,167 = 6.4e10 entries (512 GB in float64) and a full-batch probe holds 20,210
feature maps of 32 x 32 x 1024 (85 GB in float32). This runs the project's own code at those shapes:

* **kNN at ImageNet scale**: ``stages.evaluate.knn.knn_predict`` with all 50,000 queries in memory
  (what ``pipeline evaluate --on`` reads from the feature cache) at the ViT-L/16 concatenated-summary
  width (1024 x 3 summary tokens: one per paper teacher with a summary, DFN CLIP, SigLIP, DINOv2-g; SAM has
  none), the bank streamed from a zarr array on disk in chunks of ``--bank-chunk`` rows. A full run here
  (1,281,167 bank rows, ~1.2e15 float64 FLOPs on 2 cores) would take hours, far past 15 minutes, so the
  bank holds ``--bank-rows`` rows (a subset) and the time is extrapolated linearly in the bank size; the
  memory does not grow with the bank (it is streamed: queries + one chunk + one similarity block + the
  running top-k), so the peak RSS measured is the full run's.
* **Segmentation probe at ADE20k scale**: ``stages.evaluate.dense_probe.train_dense_probe`` on a feature
  cache (``store_schema.eval_cache``, bf16 bits) declared at 20,210 images x 32 x 32 x 1024 and 150 classes
  with targets at 128 x 128, of which ``--seg-images`` images are written (a subset: the whole cache is
  42 GB and takes far more than 15 minutes to write here); mini-batches of 16 random crops read from disk,
  then ``score_dense_probe`` on val images at ADE20k's full mask resolution (512 x 683). Memory is one
  mini-batch whatever the number of cached images, so the peak RSS measured is the full run's; time per
  iteration is measured and the full probe's time extrapolated (``--probe-iterations`` of the real run).

Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own. Every figure is
printed with os.getloadavg(). The last two lines are ``kNN at ImageNet scale: X GB peak RSS`` and
``segmentation probe at ADE20k scale: Y GB peak RSS``.

Run:  .venv/bin/python benchmarks/eval_cost.py [--small]   (--small: 5,000 queries, fewer rows; ~1 minute)
Shape legend: N bank rows, M queries, C width, h/w grid, T target side, L classes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES = 1_281_167, 50_000, 1000
VIT_L_WIDTH, SUMMARY_TEACHERS = 1024, 3  # ViT-L/16 embed dim; paper teachers with a summary token
ADE_TRAIN, ADE_GRID, ADE_CHANNELS, ADE_CLASSES, ADE_VAL_SIZE = 20_210, 32, 1024, 150, (512, 683)


def _load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux


def knn_part(args: argparse.Namespace) -> dict:
    """In the subprocess: kNN of M queries against a zarr bank of N rows, streamed."""
    import zarr

    from stages.evaluate.knn import knn_predict

    C = VIT_L_WIDTH * SUMMARY_TEACHERS
    rng = np.random.default_rng(0)
    bank = zarr.create_array(Path(args.tmp) / "bank.zarr", shape=(args.bank_rows, C), chunks=(args.bank_chunk, C),
                             dtype="float32", compressors=None)
    for lo in range(0, args.bank_rows, args.bank_chunk):
        hi = min(lo + args.bank_chunk, args.bank_rows)
        bank[lo:hi] = rng.standard_normal((hi - lo, C), dtype=np.float32)
    labels_N = rng.integers(0, IMAGENET_CLASSES, args.bank_rows)
    queries_MC = rng.standard_normal((args.queries, C), dtype=np.float32)
    t0 = time.perf_counter()
    pred = knn_predict(bank, labels_N, queries_MC, k=20, temperature=0.07, bank_chunk=args.bank_chunk)
    seconds = time.perf_counter() - t0
    assert pred.shape == (args.queries,)
    return {"seconds": seconds, "peak_gb": _peak_gb(), "width": C}


def seg_part(args: argparse.Namespace) -> dict:
    """In the subprocess: the segmentation probe on a cache declared at ADE20k size, a subset written."""
    from stages.evaluate.dense_probe import ProbeConfig, score_dense_probe, train_dense_probe
    from store_schema.codecs import bf16_bits_to_float32, float32_to_bf16_bits
    from store_schema.eval_cache import open_block_cache

    G, C, T, U = ADE_GRID, ADE_CHANNELS, 128, 64
    rng = np.random.default_rng(0)
    feats, _ = open_block_cache(Path(args.tmp) / "features.zarr", kind="bench", key={}, num_images=ADE_TRAIN,
                                block_size=U, arrays={"features": ((G, G, C), "uint16")})
    targets, _ = open_block_cache(Path(args.tmp) / "targets.zarr", kind="bench", key={}, num_images=ADE_TRAIN,
                                  block_size=U, arrays={"seg": ((T, T), "uint8")})
    t0 = time.perf_counter()
    for k in range(-(-args.seg_images // U)):
        n = min(U, args.seg_images - k * U)
        feats.write_block(k, {"features": float32_to_bf16_bits(rng.standard_normal((n, G, G, C), dtype=np.float32))})
        targets.write_block(k, {"seg": rng.integers(0, ADE_CLASSES, (n, T, T)).astype(np.uint8)})
    write_s = time.perf_counter() - t0
    read_f = lambda ids: bf16_bits_to_float32(feats.read("features", ids))  # noqa: E731
    ids = np.arange(args.seg_images)
    cfg = ProbeConfig(iterations=args.iterations, batch_size=16, stats_images=min(256, args.seg_images))
    t0 = time.perf_counter()
    head = train_dense_probe(read_f, lambda i: targets.read("seg", i), ids, task="seg", grid=(G, G), channels=C,
                             target_side=T, cfg=ProbeConfig(**{**cfg.to_dict(), "iterations": 1}),
                             num_classes=ADE_CLASSES)
    setup_s = time.perf_counter() - t0  # BatchNorm statistics pass + one iteration
    t0 = time.perf_counter()
    head = train_dense_probe(read_f, lambda i: targets.read("seg", i), ids, task="seg", grid=(G, G), channels=C,
                             target_side=T, cfg=cfg, num_classes=ADE_CLASSES)
    train_s = time.perf_counter() - t0 - setup_s
    val = [(int(i), rng.integers(0, ADE_CLASSES, ADE_VAL_SIZE).astype(np.uint8)) for i in range(args.val_images)]
    t0 = time.perf_counter()
    res = score_dense_probe(head, read_f, val, task="seg", num_classes=ADE_CLASSES)
    val_s = time.perf_counter() - t0
    assert 0.0 <= res["miou"] <= 1.0
    return {"write_s": write_s, "setup_s": setup_s, "iter_s": max(train_s, 0.0) / max(args.iterations - 1, 1),
            "val_s_per_image": val_s / args.val_images, "peak_gb": _peak_gb()}


def _run_part(part: str, args: argparse.Namespace) -> dict:
    """Run one measurement in a fresh interpreter (its own peak RSS); returns its JSON result."""
    cmd = [sys.executable, __file__, "--part", part, "--tmp", args.tmp, "--queries", str(args.queries),
           "--bank-rows", str(args.bank_rows), "--bank-chunk", str(args.bank_chunk), "--seg-images",
           str(args.seg_images), "--iterations", str(args.iterations), "--val-images", str(args.val_images)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="5,000 queries, 8,192 bank rows, 64 cached images")
    p.add_argument("--queries", type=int, default=IMAGENET_VAL)
    p.add_argument("--bank-rows", type=int, default=16_384, help="bank rows written (a subset of 1,281,167)")
    p.add_argument("--bank-chunk", type=int, default=8_192)
    p.add_argument("--seg-images", type=int, default=256, help="cached ADE20k-shaped images written")
    p.add_argument("--iterations", type=int, default=20, help="probe iterations timed")
    p.add_argument("--probe-iterations", type=int, default=2000, help="iterations of the real probe (extrapolation)")
    p.add_argument("--val-images", type=int, default=4)
    p.add_argument("--part", choices=("knn", "seg"), help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        print(json.dumps((knn_part if args.part == "knn" else seg_part)(args)))
        return
    if args.small:
        args.queries, args.bank_rows, args.bank_chunk, args.seg_images, args.iterations = 5000, 8192, 4096, 64, 10
    with tempfile.TemporaryDirectory(dir=os.environ.get("EVAL_COST_TMP")) as tmp:
        args.tmp = tmp
        knn = _run_part("knn", args)
        seg = _run_part("seg", args)
    per_query_ms = 1e3 * knn["seconds"] / args.queries
    full_h = knn["seconds"] * (IMAGENET_TRAIN / args.bank_rows) * (IMAGENET_VAL / args.queries) / 3600
    print(f"kNN: {args.queries:,} queries x {args.bank_rows:,} of {IMAGENET_TRAIN:,} bank rows (subset; streamed from "
          f"zarr in chunks of {args.bank_chunk:,}), width {knn['width']} (ViT-L/16 x {SUMMARY_TEACHERS} summary "
          f"tokens): {knn['seconds']:.1f} s, {per_query_ms:.2f} ms per query image at this bank size  ({_load()})")
    print(f"kNN full ImageNet (extrapolated linearly in bank rows and queries, not run: it would exceed 15 minutes): "
          f"{full_h:.1f} h, {1e3 * full_h * 3600 / IMAGENET_VAL:.0f} ms per query image  ({_load()})")
    full_probe_h = seg["iter_s"] * args.probe_iterations / 3600
    print(f"segmentation probe: cache of {ADE_TRAIN:,} x {ADE_GRID}x{ADE_GRID}x{ADE_CHANNELS} (bf16) with "
          f"{args.seg_images} images written (subset; {seg['write_s']:.1f} s), {ADE_CLASSES} classes, batch 16: "
          f"{1e3 * seg['iter_s']:.0f} ms per iteration, {1e3 * seg['iter_s'] / 16:.1f} ms per image; BatchNorm "
          f"statistics pass {seg['setup_s']:.1f} s  ({_load()})")
    print(f"segmentation probe full run (extrapolated, {args.probe_iterations} iterations): {full_probe_h:.2f} h; "
          f"whole-image val scoring at {ADE_VAL_SIZE[0]}x{ADE_VAL_SIZE[1]}: "
          f"{1e3 * seg['val_s_per_image']:.0f} ms per image  ({_load()})")
    print(f"kNN at ImageNet scale: {knn['peak_gb']:.2f} GB peak RSS")
    print(f"segmentation probe at ADE20k scale: {seg['peak_gb']:.2f} GB peak RSS")


if __name__ == "__main__":
    main()
