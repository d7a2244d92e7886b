"""Benchmark of stage one (AM-RADIO arXiv 2312.06709 teachers into the PHI-S-ready store, arXiv 2410.01680).

Side by side, on the same images and batch size, in one run:
  1. the extraction path: `run_extract` on Ray (2 actors x 1 CPU), decode + render + teacher forward +
     pooling + BitRound/zstd whole-shard write + stats of the stored values, driver finalization;
  2. a bare loop of the teacher's forward pass on pre-rendered tensors (no decode, no write), split over
     the same number of 1-CPU Ray tasks (1 torch thread each, like the actors: on a shared, busy machine
     one process with 2 torch threads is up to 30x slower than 2 single-thread processes).
Prints both throughputs (images/s; extraction once workers are built, and end to end) and their ratio
(target >= 0.9), the store's bits per value, and the storage NMSE of the codec measured on the stored
values against the float32 outputs of the bare loop: NMSE = sum (x̂ - x)^2 / sum (x - mean x)^2.

Run: `.venv/bin/python benchmarks/extract.py [--images 192 --teacher tiny_sam --batch-size 16]` (~2 min on
2 CPUs). CPU-only numbers with a tiny random teacher; GPU numbers need the real teachers on a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.extract.driver import ExtractConfig, run_extract
from stages.orchestrate.ray_session import init_ray, shutdown_ray
from stages.corpus.build_manifest import build_manifest
from stages.corpus.samples import load_checked
from stages.corpus.views import render_view
from stages.teachers.preprocess import to_pixels
from stages.teachers.registry import build_teacher, get_teacher_spec
from store_schema.layout import teacher_store_path
from store_schema.manifest import Manifest, ViewSpec
from store_schema.teacher_store import open_teacher_store


def make_images(folder: Path, n: int, *, seed: int = 0) -> None:
    """n smooth-plus-noise RGB images of assorted sizes (PNG and JPEG)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(96, 160)), int(rng.integers(96, 160))
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([(xx * (1 + i % 7)) % 256, (yy * (2 + i % 5)) % 256, (xx + yy + 13 * i) % 256], -1)
        arr = (arr + rng.integers(0, 30, arr.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:05d}.{'png' if i % 2 else 'jpg'}")


def _bare_loop(teacher_name: str, views_BHW3: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """One process: (seconds of the forward loop alone, float32 patches). Tensors are built before timing."""
    torch.set_num_threads(1)
    spec = get_teacher_spec(teacher_name)
    batches = [to_pixels(views_BHW3[j:j + batch_size], spec) for j in range(0, len(views_BHW3), batch_size)]
    teacher = build_teacher(spec)
    outs = []
    with torch.inference_mode():
        teacher(batches[0])  # warm-up
        t0 = time.perf_counter()
        for pixels_BCHW in batches:
            outs.append(teacher(pixels_BCHW).patches_BhwC)
        seconds = time.perf_counter() - t0
    return seconds, torch.cat(outs).float().numpy()


def bare_forward(manifest: Manifest, teacher_name: str, *, batch_size: int, workers: int
                 ) -> tuple[float, np.ndarray]:
    """(images/s, float32 patches [N, V, h, w, C]) of the teacher forward alone on pre-rendered views,
    split over `workers` Ray tasks of 1 CPU each (the same CPUs as the extraction path); the throughput is
    the sum of the tasks' own rates."""
    import ray

    spec = get_teacher_spec(teacher_name)
    V = manifest.view_spec.num_views
    views = np.stack([render_view(load_checked(manifest, i),
                                  manifest.view_boxes_NV4[i, v], bool(manifest.view_flips_NV[i, v]),
                                  spec.resolution)
                      for i in range(manifest.num_images) for v in range(V)])
    # Split on batch boundaries so both paths run the same batch size.
    per = -(-len(views) // (workers * batch_size)) * batch_size
    shares = [views[j:j + per] for j in range(0, len(views), per)]
    task = ray.remote(num_cpus=1)(_bare_loop)
    results = ray.get([task.remote(teacher_name, share, batch_size) for share in shares])
    images_per_s = sum(len(share) / V / seconds for share, (seconds, _) in zip(shares, results))
    patches = np.concatenate([p for _, p in results])
    return images_per_s, patches.reshape(manifest.num_images, V, *patches.shape[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--teacher", default="tiny_sam")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--decode-ahead", type=int, default=0,
                        help="images each worker decodes ahead in a background thread (0: inline)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        make_images(Path(tmp) / "images", args.images)
        manifest = build_manifest(Path(tmp) / "images", out_dir=Path(tmp) / "root", view_spec=ViewSpec(num_views=2))
        print(f"corpus: {manifest.num_images} images x 2 views, built in {time.perf_counter() - t:.1f} s")

        init_ray(None, num_cpus=args.workers)
        try:
            config = ExtractConfig(workers=args.workers, shard_size=args.shard_size, batch_size=args.batch_size,
                                   progress=False, decode_ahead=args.decode_ahead)
            report = run_extract(manifest.path.parent, args.teacher, config)
            print(report.summary_line())
            bare_ips, f32_NVhwC = bare_forward(manifest, args.teacher, batch_size=args.batch_size,
                                               workers=args.workers)
        finally:
            shutdown_ray()

        store = open_teacher_store(teacher_store_path(manifest.path.parent, args.teacher))
        stored_NVhwC = store.read_images(np.arange(store.num_images))[1]
        valid = np.asarray(store.valid[:])
        x, x_hat = f32_NVhwC[valid].astype(np.float64), stored_NVhwC[valid].astype(np.float64)
        nmse = float(((x_hat - x) ** 2).sum() / ((x - x.mean(axis=tuple(range(x.ndim - 1)))) ** 2).sum())

    ratio = report.steady_images_per_s / bare_ips
    print(f"teacher {args.teacher}, batch {args.batch_size}, {args.workers} Ray workers x 1 CPU "
          f"(decode ahead {args.decode_ahead}) vs bare loop "
          f"in {args.workers} x 1-CPU tasks")
    print(f"extraction path: {report.steady_images_per_s:.1f} images/s once workers are built "
          f"({report.images_per_s:.1f} end to end, startup {report.startup_seconds:.1f} s)")
    print("extraction worker time by phase (s, summed over shards): "
          + ", ".join(f"{k} {v:.2f}" for k, v in report.phase_seconds.items()))
    print(f"bare forward:    {bare_ips:.1f} images/s")
    print(f"ratio extraction / bare = {ratio:.2f} (target >= 0.9)")
    print(f"storage: {report.bits_per_value:.2f} bits/value (codec {store.codec.to_dict()}); "
          f"patch NMSE stored vs float32 = {nmse:.3g} (BitRound 7 theory ~ 2^-14/24 = {2**-14 / 24:.3g} x E[x^2]/var)")


if __name__ == "__main__":
    main()
