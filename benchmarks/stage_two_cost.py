"""What stage two costs the host per sample at the papers' scale, against a GPU student's budget.

Offline agglomerative distillation (AM-RADIO arXiv 2312.06709; PHI-S arXiv 2410.01680) pays off only if
the loader keeps the student's accelerator busy. This builds, through the project's real store code
(create_teacher_store / write_shard / per-shard moments / mark_complete), four stores of the paper
teachers' exact shapes, 2 views per image:

  DINOv2-g/14 @224  16x16x1536 + summary 1536     DFN CLIP-H/14 @378  27x27x1280 + summary 1024
  SigLIP SO400M @384 27x27x1152 + summary 1152    SAM-H pooled to 32x32x1280 (no summary)

from synthetic low-rank tokens with lognormal channel scales (the recipe of benchmarks/codec_choice.py;
no teacher weights offline), over a folder of synthetic JPEG photos, fits `--norm phis`, and runs the
real loader (StoreBatches, in-process, one core: torch and Blosc single-threaded, CPU time measured with
time.process_time so the shared machine's load does not count). Phases, host ms·core per sample:

  store read     shard files -> decoded compact (bf16 bits) units (store_schema/shard_reader.py)
  gather         units -> the batch's target arrays
  student view   JPEG decode (reduced scale where the crop allows) + crop/resize/flip to the student size
  loader total   one epoch of StoreBatches end to end (includes the three above)
  pin copy       one host copy of the shipped bytes (what pin_memory does; measured as a clone here,
                 there is no CUDA on this machine)

Device side, timed apart and charged to the GPU at its FLOP count, not to the host: widening bf16 ->
float32 and each teacher's normalizer (one batched C x C matmul per teacher and token kind).

Budgets: 6 · parameters · tokens FLOPs per sample (forward + backward) at 50% of an H200's 790 TFLOP/s
(bf16 dense): ViT-L/16 @224 and ViT-B/16 @432. The last line is `cores per H200: X` = (loader total +
pin copy) / ViT-L/16 @224 budget. Also prints `store read: X GB/s per core` (bytes of bf16 values
delivered into the loader's unit buffers per CPU second) and zarr-python's own read of the same shards.

Run:  .venv/bin/python benchmarks/stage_two_cost.py [--images 64 --shard-size 16 --batch-size 32
      --out benchmarks/results/stage_two_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from numcodecs import blosc
from PIL import Image

from stages.corpus.build_manifest import build_manifest
from stages.corpus.samples import render_samples, render_student_views
from stages.distill.loader import StoreBatches, StoreSet, make_loader, targets_on_device
from stages.distill.train import normalize_targets
from stages.distill.unit_cache import UnitCache
from stages.stats import Moments
from stages.teachers.spec import Family, TeacherSpec, WeightsSource
from store_schema.codecs import CodecSpec, bulk_io
from store_schema.layout import teacher_store_path
from store_schema.manifest import ViewSpec
from store_schema.teacher_store import create_teacher_store

# name: (resolution, patch, storage grid side, patch channels, summary channels)
TEACHERS = {
    "dinov2_g": (224, 14, 16, 1536, 1536),
    "clip_h_dfn": (378, 14, 27, 1280, 1024),
    "siglip_so400m": (384, 14, 27, 1152, 1152),
    "sam_h": (1024, 16, 32, 1280, 0),
}
H200_BF16_FLOPS = 790e12
MFU = 0.5
STUDENTS = {"ViT-L/16 @224": (303.3e6, 224), "ViT-B/16 @432": (85.8e6, 432)}  # parameters (README table), side


def student_budget_ms(params: float, side: int) -> float:
    tokens = (side // 16) ** 2 + 1
    return 6.0 * params * tokens / (MFU * H200_BF16_FLOPS) * 1e3


def synthetic_tokens(n: int, c: int, rng: np.random.Generator, rank: int = 64) -> np.ndarray:
    """[n, c] float32 low-rank tokens with per-channel scale and offset (benchmarks/codec_choice.py)."""
    scale_C = np.exp(rng.normal(0.0, 0.7, c)).astype(np.float32)
    basis_RC = rng.standard_normal((rank, c)).astype(np.float32) / np.sqrt(rank)
    mean_C = rng.normal(0.0, 0.5, c).astype(np.float32)
    z_NR = rng.standard_normal((n, rank)).astype(np.float32) * np.linspace(2.0, 0.1, rank, dtype=np.float32)
    noise = 0.05 * rng.standard_normal((n, c)).astype(np.float32)
    return ((z_NR @ basis_RC + noise) * scale_C + mean_C).astype(np.float32)


def write_photos(folder: Path, n: int, rng: np.random.Generator, size: tuple[int, int]) -> None:
    """n synthetic photo-like JPEGs (smooth colour fields + edges + fine texture), quality 90."""
    folder.mkdir(parents=True)
    w, h = size
    for i in range(n):
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32)
        img += rng.normal(0, 12, (h, w, 3))
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0:y0 + h // 4, x0:x0 + w // 5] = rng.uniform(0, 255, 3)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def build_stores(tmp: Path, *, images: int, shard_size: int, codec: CodecSpec, photo: tuple[int, int],
                 seed: int = 0) -> tuple[Path, float]:
    """Photos + manifest + the four complete stores; returns (root, bits per stored value)."""
    rng = np.random.default_rng(seed)
    write_photos(tmp / "images", images, rng, photo)
    root = tmp / "store"
    manifest = build_manifest(tmp / "images", out_dir=root, view_spec=ViewSpec(num_views=2), val_fraction=0.0)
    V, stored_bytes, values = 2, 0, 0
    for name, (res, patch, g, cp, cs) in TEACHERS.items():
        spec = TeacherSpec(name=name, family=Family.DINOV2, arch="synthetic", weights_id="", weights=WeightsSource.RANDOM,
                           resolution=res, patch_size=patch, summary_dim=cs, patch_dim=cp,
                           num_prefix_tokens=1 if cs else 0, mean=(0.5,) * 3, std=(0.5,) * 3, license="none")
        store = create_teacher_store(teacher_store_path(root, name), spec=spec, manifest=manifest,
                                     weights_identity={"source": "random", "id": "bench", "sha256": None},
                                     shard_size=shard_size, storage_grid=(g, g), codec=codec)
        trng = np.random.default_rng([seed, len(name)])
        for k in range(store.num_shards):
            a, b = store.shard_range(k)
            S = b - a
            patches = synthetic_tokens(S * V * g * g, cp, trng).reshape(S, V, g, g, cp)
            summary = synthetic_tokens(S * V, cs, trng).reshape(S, V, cs) if cs else None
            store.write_shard(k, summary_SVC=summary, patches_SVhwC=patches, valid_SV=np.ones((S, V), bool))
            s, p, _ = store.read_shard(k)
            for kind, arr in (("summary", s), ("patches", p)):
                if arr is not None:
                    flat = np.asarray(arr, np.float32).reshape(-1, arr.shape[-1])
                    if flat.dtype != np.float32:
                        flat = flat.astype(np.float32)
                    store.write_shard_stats(k, kind, Moments.from_batch(flat))
                    values += flat.size
            store.mark_complete(k)
        for array in ("summary", "patches"):
            folder = teacher_store_path(root, name) / array / "c"
            stored_bytes += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
    return root, stored_bytes * 8 / values


def uint16_reader_check(stores: StoreSet, folder: Path, cname: str = "lz4", clevel: int = 5) -> dict:
    """The fast reader on uint16 bf16 arrays (the stage-one issue's storage: bf16 bits, Blosc bitshuffle,
    crc32c) holding exactly the stores' values, written with zarr directly in the stores' chunk layout."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    from store_schema.shard_reader import ShardReader

    group = zarr.open_group(folder, mode="w", zarr_format=3)
    readers, stored, values = [], 0, 0
    for t, s in stores.stores.items():
        for kind, src in (("summary", s.summary), ("patches", s.patches)):
            if src is None:
                continue
            arr = group.create_array(f"{t}_{kind}", shape=src.shape, chunks=(1, *src.shape[1:]),
                                     shards=(s.shard_size, *src.shape[1:]), dtype="uint16", fill_value=0,
                                     compressors=[BloscCodec(cname=cname, clevel=clevel, shuffle="bitshuffle"),
                                                  Crc32cCodec()])
            with bulk_io():
                for k in range(s.num_shards):
                    a, b = s.shard_range(k)
                    x = np.ascontiguousarray(np.asarray(src[a:b], np.float32))
                    arr[a:b] = x.view(np.uint16)[..., 1::2]  # BitRound(7) float32: the high halves are bf16
            values += int(np.prod(src.shape))
            readers.append((ShardReader(arr, store_path=folder, name=f"{t}_{kind}"), s))
    stored = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and "/c/" in str(f))
    bufs = [np.empty((s.shard_size, *r.item_shape), np.uint16) for r, s in readers]
    for (r, s), buf in zip(readers, bufs):  # warm the file cache and buffers
        r.read_into(0, min(s.shard_size, s.num_images), buf)
    t0, n = time.process_time(), 0
    for (r, s), buf in zip(readers, bufs):
        for k in range(s.num_shards):
            a, b = s.shard_range(k)
            r.read_into(a, b, buf)
            n += (b - a) * r.item_nbytes
    dt = time.process_time() - t0
    return {"codec": f"uint16 bf16 {cname}-{clevel} bitshuffle crc32c", "bits_per_value": stored * 8 / values,
            "GBps_per_core": n / dt / 1e9}


def cpu(fn) -> tuple[float, object]:
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--photo", default="500x375", help="synthetic JPEG size WxH (ImageNet-like)")
    ap.add_argument("--codec", default="", help="override the store codec, e.g. zstd:1:shuffle (cname:clevel:shuffle)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    blosc.use_threads = False
    codec = CodecSpec()
    if args.codec:
        cname, clevel, shuffle = args.codec.split(":")
        codec = CodecSpec(**{**codec.to_dict(), "compressor": cname, "clevel": int(clevel), "shuffle": shuffle})
    photo = tuple(int(x) for x in args.photo.split("x"))
    res: dict[str, object] = {"config": {k: str(v) for k, v in vars(args).items()}, "codec": codec.to_dict()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        t0 = time.perf_counter()
        root, bits = build_stores(Path(tmp), images=args.images, shard_size=args.shard_size, codec=codec, photo=photo)
        res["build_s"] = time.perf_counter() - t0
        stores = StoreSet(root, tuple(TEACHERS), norm="phis")
        n_samples = len(stores.samples("train"))
        U = stores.unit_size
        units = -(-stores.manifest.num_images // U)

        # store read: every unit once, fresh cache (buffers allocated on the first read, then recycled)
        cache = UnitCache(stores, unit_size=U)
        cache.get(0)
        cache.drop(0)
        read_s, _ = cpu(lambda: [cache.drop(u) for u in range(units) if cache.get(u) is not None])
        read_bytes = units * stores.unit_nbytes
        gbps = read_bytes / read_s / 1e9
        # zarr-python's read of the same shards (float32 / stored dtype values), for comparison
        def zarr_read() -> int:
            n = 0
            with bulk_io():
                for t, s in stores.stores.items():
                    for k in range(s.num_shards):
                        a, b = s.shard_range(k)
                        for arr in ([s.summary] if s.summary is not None else []) + [s.patches]:
                            x = np.asarray(arr[a:b])
                            n += x.size * 2
            return n
        zarr_s, zarr_bytes = cpu(zarr_read)
        res["uint16_reader"] = uint16_reader_check(stores, Path(tmp) / "u16")

        # student view: decode + render, draft decode vs a full decode
        pairs = stores.samples("train")[:64]
        view_s, _ = cpu(lambda: render_student_views(stores.manifest, pairs, args.img_size))
        full_s, _ = cpu(lambda: render_samples(stores.manifest, pairs, args.img_size))
        view432_s, _ = cpu(lambda: render_student_views(stores.manifest, pairs, 432))

        # the real loader in this process, two epochs; the second (buffers recycled) is the steady state
        ds = StoreBatches(stores, split="train", batch_size=args.batch_size, img_size=args.img_size, seed=0,
                          epochs=2, loader_memory=64 * 2**30)
        loader_s = pin_s = dev_s = 0.0
        loaded = shipped = 0
        pin_pool: dict = {}
        it = iter(make_loader(ds, num_workers=0))
        while True:
            t = time.process_time()
            batch = next(it, None)
            t_load = time.process_time() - t
            if batch is None:
                break
            t = time.process_time()  # stand-in for pin_memory: one copy into reused host buffers (torch's
            pinned = []              # pinned allocator caches its blocks, so no fresh page faults either)
            for key, parts in batch["targets"].items():
                for j, p in enumerate(parts):
                    dst = pin_pool.setdefault((key, j), torch.empty((args.batch_size, *p.shape[1:]), dtype=p.dtype))
                    pinned.append(dst[: len(p)].copy_(p))
            t_pin = time.process_time() - t
            t = time.process_time()
            normalize_targets(targets_on_device(batch, "cpu"), stores.normalizers)  # the GPU's work, timed apart
            t_dev = time.process_time() - t
            if batch["epoch"] == 1:
                loader_s, pin_s, dev_s = loader_s + t_load, pin_s + t_pin, dev_s + t_dev
                loaded += len(batch["image_B"])
                shipped += sum(p.numel() * p.element_size() for p in pinned)
        flops = 0.0
        for t_name, s in stores.stores.items():
            g = s.grid[0] * s.grid[1]
            flops += 2.0 * g * s.patch_dim ** 2 + (2.0 * s.summary_dim ** 2 if s.summary_dim else 0.0)

    per = lambda s, n: s / n * 1e3  # noqa: E731  ms per sample
    read_ms = per(read_s, units * U * 2)
    phases = {
        "store read": read_ms,
        "gather + loader bookkeeping": per(loader_s, loaded) - read_ms - per(view_s, len(pairs)),
        "student view (decode + render)": per(view_s, len(pairs)),
        "loader total": per(loader_s, loaded),
        "pin copy": per(pin_s, loaded),
    }
    host_ms = phases["loader total"] + phases["pin copy"]
    budgets = {k: student_budget_ms(p, side) for k, (p, side) in STUDENTS.items()}
    gpu_norm_ms = flops / (MFU * H200_BF16_FLOPS) * 1e3
    host432 = host_ms - phases["student view (decode + render)"] + per(view432_s, len(pairs))
    res.update({
        "samples": n_samples, "loaded_samples": loaded, "bits_per_value": bits,
        "store_read_GBps_per_core": gbps, "zarr_read_GBps_per_core": zarr_bytes / zarr_s / 1e9,
        "host_ms_core_per_sample": phases, "student_view_full_decode_ms": per(full_s, len(pairs)),
        "student_view_432_ms": per(view432_s, len(pairs)),
        "shipped_MB_per_sample": shipped / loaded / 1e6,
        "device_side_cpu_ms_per_sample": per(dev_s, loaded), "device_side_GFLOP_per_sample": flops / 1e9,
        "device_side_H200_ms_per_sample": gpu_norm_ms, "budgets_ms": budgets,
        "cores_per_H200_vitb432": host432 / budgets["ViT-B/16 @432"],
        "cores_per_H200": host_ms / budgets["ViT-L/16 @224"],
    })
    print(f"stores: 4 teachers at the papers' shapes, {args.images} JPEG photos {args.photo} x 2 views, shards of "
          f"{args.shard_size}; codec {codec.compressor}-{codec.clevel} {codec.shuffle}, {bits:.2f} bits/value "
          f"(built in {res['build_s']:.0f} s)")
    print("host CPU (one core, time.process_time), ms·core per sample:")
    for k, v in phases.items():
        print(f"  {k:32s} {v:8.3f}")
    print(f"  (student view with a full decode: {res['student_view_full_decode_ms']:.3f}; at 432 px: "
          f"{res['student_view_432_ms']:.3f})")
    print(f"shipped to the device: {res['shipped_MB_per_sample']:.2f} MB per sample (bf16 bit patterns)")
    print(f"device side (widen + normalize, {flops / 1e9:.2f} GFLOP per sample): {res['device_side_cpu_ms_per_sample']:.2f} "
          f"ms on this CPU, charged to the GPU: {gpu_norm_ms:.4f} ms per sample at {MFU:.0%} of 790 TFLOP/s")
    for k, v in budgets.items():
        print(f"student budget {k}: {v:.3f} ms per sample (6·params·tokens at {MFU:.0%} of 790 TFLOP/s)")
    print(f"zarr-python read of the same shards: {res['zarr_read_GBps_per_core']:.2f} GB/s per core (bf16-equivalent bytes)")
    u16 = res["uint16_reader"]
    print(f"fast reader on the same values stored as {u16['codec']}: {u16['GBps_per_core']:.2f} GB/s per core at "
          f"{u16['bits_per_value']:.2f} bits/value")
    print(f"cores per H200 for ViT-B/16 @432 (views rendered at 432): {res['cores_per_H200_vitb432']:.2f}")
    print(f"store read: {gbps:.2f} GB/s per core")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"cores per H200: {res['cores_per_H200']:.2f}")


if __name__ == "__main__":
    main()
