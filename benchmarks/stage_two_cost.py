"""What stage two costs the host per sample at the papers' scale, against a GPU student's budget.

Offline agglomerative distillation (AM-RADIO arXiv 2312.06709; PHI-S arXiv 2410.01680) pays off only if
the loader keeps the student's accelerator busy. This builds, through the project's real store code
(create_teacher_store / write_shard / per-shard moments / mark_complete), four stores of the paper
teachers' exact shapes, 2 views per image:

  DINOv2-g/14 @224  16x16x1536 + summary 1536     DFN CLIP-H/14 @378  27x27x1280 + summary 1024
  SigLIP SO400M @384 27x27x1152 + summary 1152    SAM-H pooled to 32x32x1280 (no summary)

with the stand-in teachers of benchmarks/stage_one_cost.py (a random-feature map of each cell's mean colour
and position, log-normal channel scales: as hard to compress as real activations; no teacher weights
offline) applied to the teachers' own views of a folder of synthetic JPEG photos (ImageNet-like size),
so both stage benchmarks store the same kind of values (`--features lowrank`: the low-rank tokens of
benchmarks/codec_choice.py instead). It fits `--norm phis` and runs the real loader (StoreBatches,
in-process, one core: torch and Blosc single-threaded, CPU time measured with time.process_time so the
shared machine's load does not count) for four epochs; of the last three (buffers recycled) the one
with the least loader CPU is reported (best of three, as timeit does: other processes on a shared
machine slow this one's memory traffic; all three totals are printed). Phases, host ms·core per
sample, timed inside the loader:

  store read     shard files -> decoded compact (bf16 bits) units (UnitCache._read, store_schema/shard_reader.py)
  student view   each sample's view at the student size from the student-view store that `pipeline views`
                 rendered once (read with the unit, UnitCache.student_views); measured apart without it
                 (student_views: decode): one JPEG decode per image per epoch (reduced scale where its
                 views allow) + crop/resize/flip. The one-time render's cost and bytes are printed too.
                 The ViT-B/16 @432 line is its own loader run (views pre-rendered at 432)
  gather + loader bookkeeping   the rest of the loader: units -> the batch's target buffers, the plan
  loader total   one epoch of StoreBatches end to end (includes the three above)
  pin copy       the student views' copy into pinned memory (measured as a copy into reused buffers: no
                 CUDA here). The targets are not copied: with CUDA the loader page-locks its recycled
                 target buffers in place (stages/distill/loader.py `_InPlacePinner`); what a copy of
                 them would cost (DataLoader-style pinning) is printed apart

Device side, timed apart and charged to the GPU at its FLOP count, not to the host: widening bf16 ->
float32 and each teacher's normalizer (one batched C x C matmul per teacher and token kind).

Budgets: 6 · parameters · tokens FLOPs per sample (forward + backward) at 50% of an H200's 790 TFLOP/s
(bf16 dense): ViT-L/16 @224 and ViT-B/16 @432. `cores per H200: X` = (loader total + pin copy) / ViT-L/16
@224 budget. The last line, `partition mix: cores per H200: X`, is AM-RADIO's resolution-partition mix
(stages/distill/partitions.py): ViT-L/16, per step 1024 samples at 432 px against DINOv2-g, CLIP-H and SigLIP
(their stores above) and 64 at 1024 px against SAM-H's full 64x64 grid (its own store of --mix-images photos,
views pre-rendered at 1024), each partition's loader measured on its own; X = host ms·core of one step's
samples / ViT-L/16 GPU ms of the same samples (attention FLOPs beyond 6·params·tokens not counted: at 1024 px
the true GPU time is longer, so X is an upper bound). The load average is printed before the two figures. Also prints `store read: X GB/s per core` (bytes of bf16 values
delivered into the loader's unit buffers per CPU second of the store read phase) with the store's
bits/value, and zarr-python's own read of the same shards (the store is standard Zarr v3).

Run:  .venv/bin/python benchmarks/stage_two_cost.py [--images 256 --shard-size 16 --batch-size 32
      --features standin|lowrank --out benchmarks/results/stage_two_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from numcodecs import blosc
from PIL import Image

from stages.corpus.build_manifest import build_manifest
from stages.corpus.samples import render_samples, render_student_views
from stages.distill import unit_cache as unit_cache_mod
from stages.distill.loader import StoreBatches, StoreSet, make_loader, targets_on_device
from stages.distill.train import normalize_targets
from stages.extract.student_views import run_views
from stages.stats import Moments
from stages.teachers.spec import Family, TeacherSpec, WeightsSource
from store_schema.codecs import CodecSpec, bulk_io

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_one_cost import StandIn
from store_schema.layout import student_views_path, teacher_store_path
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
DEVICE_SIDE_BATCHES = 3  # batches whose normalization (the GPU's work) is timed on this CPU
MEASURED_EPOCHS = 3  # after one warm-up epoch; the least-CPU one is reported
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


def standin_features(manifest, pairs_B2: np.ndarray, res: int, g: int, cp: int, cs: int,
                     model: StandIn) -> tuple[np.ndarray | None, np.ndarray]:
    """(summary [B, cs] or None, patches [B, g, g, cp]) float32: the stand-in teacher on the teacher's views."""
    views_BHW3 = render_samples(manifest, pairs_B2, res)
    px_BCHW = (torch.from_numpy(views_BHW3).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        out = model(px_BCHW)
    summary = None if out.summary_BC is None else out.summary_BC.numpy()
    return summary, out.patches_BhwC.numpy()


def build_stores(tmp: Path, *, images: int, shard_size: int, codec: CodecSpec, photo: tuple[int, int],
                 features: str = "standin", seed: int = 0, teachers: dict | None = None) -> tuple[Path, float]:
    """Photos + manifest + the complete stores of `teachers` (default TEACHERS); returns (root, bits per
    stored value)."""
    rng = np.random.default_rng(seed)
    write_photos(tmp / "images", images, rng, photo)
    root = tmp / "store"
    manifest = build_manifest(tmp / "images", out_dir=root, view_spec=ViewSpec(num_views=2), val_fraction=0.0)
    V, stored_bytes, values = 2, 0, 0
    for name, (res, patch, g, cp, cs) in (TEACHERS if teachers is None else teachers).items():
        spec = TeacherSpec(name=name, family=Family.DINOV2, arch="synthetic", weights_id="", weights=WeightsSource.RANDOM,
                           resolution=res, patch_size=patch, summary_dim=cs, patch_dim=cp,
                           num_prefix_tokens=1 if cs else 0, mean=(0.5,) * 3, std=(0.5,) * 3, license="none")
        store = create_teacher_store(teacher_store_path(root, name), spec=spec, manifest=manifest,
                                     weights_identity={"source": "random", "id": "bench", "sha256": None},
                                     shard_size=shard_size, storage_grid=(g, g), codec=codec)
        trng = np.random.default_rng([seed, len(name)])
        model = StandIn(SimpleNamespace(grid=(g, g), patch_dim=cp, summary_dim=cs), seed=len(name))
        for k in range(store.num_shards):
            a, b = store.shard_range(k)
            S = b - a
            if features == "standin":
                pairs = np.array([(i, v) for i in range(a, b) for v in range(V)], np.int64)
                summary, patches = standin_features(manifest, pairs, res, g, cp, cs, model)
                patches = patches.reshape(S, V, g, g, cp)
                summary = None if summary is None else summary.reshape(S, V, cs)
            else:
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


def cpu(fn) -> tuple[float, object]:
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


class PhaseTimer:
    """CPU seconds the loader spends in UnitCache._read and UnitCache.student_views (wrapped on the class,
    so the in-process loader is measured as it runs), per batch: `take()` returns and resets them."""

    def __init__(self) -> None:
        self.batch = {"read": 0.0, "view": 0.0, "read_bytes": 0}
        cls = unit_cache_mod.UnitCache
        self._orig = (cls._read, cls.student_views)
        orig_read, orig_views, acc = cls._read, cls.student_views, self.batch

        def read(cache, u):
            t = time.process_time()
            out = orig_read(cache, u)
            acc["read"] += time.process_time() - t
            acc["read_bytes"] += sum(x.nbytes for x in out.values())
            return out

        def views(cache, pairs, size, out):
            t = time.process_time()
            orig_views(cache, pairs, size, out)
            acc["view"] += time.process_time() - t

        cls._read, cls.student_views = read, views

    def take(self) -> dict:
        out = dict(self.batch)
        self.batch.update(read=0.0, view=0.0, read_bytes=0)
        return out

    def close(self) -> None:
        unit_cache_mod.UnitCache._read, unit_cache_mod.UnitCache.student_views = self._orig


def run_loader(stores: StoreSet, args, timer: PhaseTimer, *, student_views: str, img_size: int,
               batch_size: int | None = None) -> dict:
    """1 + MEASURED_EPOCHS epochs of the real loader in this process; host CPU seconds per phase of the
    measured epoch with the least loader CPU (steady state: unit and piece buffers recycled; best of a
    few, as timeit does, because other processes on a shared machine slow this one's memory traffic),
    and the spread of loader CPU over the measured epochs."""
    batch_size = args.batch_size if batch_size is None else batch_size
    ds = StoreBatches(stores, split="train", batch_size=batch_size, img_size=img_size, seed=0,
                      epochs=1 + MEASURED_EPOCHS, loader_memory=64 * 2**30, student_views=student_views)
    keys = ("loader_s", "read_s", "view_s", "read_bytes", "pin_s", "pin_targets_s", "loaded", "shipped", "decodes")
    per_epoch = {e: dict.fromkeys(keys, 0) for e in range(1, 1 + MEASURED_EPOCHS)}
    dev = {"dev_s": 0.0, "dev_batches": 0, "dev_samples": 0}
    pin_pool: dict = {}
    it = iter(make_loader(ds, num_workers=0))
    decodes_before = {}
    while True:
        timer.take()
        t = time.process_time()
        decodes = ds.image_decodes
        batch = next(it, None)
        t_load = time.process_time() - t
        phase = timer.take()
        if batch is None:
            break
        # With CUDA the loader page-locks its recycled target buffers in place (loader._InPlacePinner) and
        # copies only the student views into pinned memory; there is no CUDA here, so both copies are
        # measured as copies into reused host buffers (torch's pinned allocator caches its blocks, so no
        # fresh page faults either): the views' copy is charged, the targets' one (what pinning by copy,
        # torch DataLoader's pin_memory, would cost) is reported apart.
        t = time.process_time()
        img = batch["image_BHW3"]
        pin_pool.setdefault("image", torch.empty((batch_size, *img.shape[1:]), dtype=img.dtype))[: len(img)].copy_(img)
        t_pin = time.process_time() - t
        t = time.process_time()
        pinned = []
        for key, parts in batch["targets"].items():
            for j, p in enumerate(parts):
                dst = pin_pool.setdefault((key, j), torch.empty((batch_size, *p.shape[1:]), dtype=p.dtype))
                pinned.append(dst[: len(p)].copy_(p))
        t_pin_targets = time.process_time() - t
        e = batch["epoch"]
        if e == 0:
            continue
        if dev["dev_batches"] < DEVICE_SIDE_BATCHES:  # the GPU's work on this CPU, timed apart, a few batches
            t = time.process_time()
            normalize_targets(targets_on_device(batch, "cpu"), stores.normalizers)
            dev["dev_s"] += time.process_time() - t
            dev["dev_batches"] += 1
            dev["dev_samples"] += len(batch["image_B"])
        r = per_epoch[e]
        decodes_before.setdefault(e, decodes)
        r["loader_s"] += t_load
        r["read_s"] += phase["read"]
        r["view_s"] += phase["view"]
        r["read_bytes"] += phase["read_bytes"]
        r["pin_s"] += t_pin
        r["pin_targets_s"] += t_pin_targets
        r["loaded"] += len(batch["image_B"])
        r["shipped"] += sum(p.numel() * p.element_size() for p in pinned)
        r["decodes"] = ds.image_decodes - decodes_before[e]
    best = min(per_epoch.values(), key=lambda r: r["loader_s"] / r["loaded"])
    spread = [r["loader_s"] / r["loaded"] * 1e3 for r in per_epoch.values()]
    return {**best, **dev, "loader_ms_per_epoch": spread}


# AM-RADIO's partition mix (arXiv 2312.06709 §3; docs/STAGE_TWO.md): ViT-L/16 students, per step 1024 samples
# at 432 px against DFN CLIP, SigLIP and DINOv2 and 64 at 1024 px against SAM-H (64 GPUs: 32 at batch 32, 32 at
# batch 2). The SAM-H partition reads SAM-H's full 64x64 grid (its student grid at 1024 px), the heaviest
# targets there are.
MIX_LOW = ("dinov2_g", "clip_h_dfn", "siglip_so400m")
MIX_SAM = {"sam_h": (1024, 16, 64, 1280, 0)}  # full grid: 10.5 MB of bf16 targets per view
MIX_BATCH = {432: 1024, 1024: 64}  # samples per step, all ranks (the paper's 32 x 32 and 32 x 2)
VIT_L_PARAMS = STUDENTS["ViT-L/16 @224"][0]


def partition_mix(tmp: Path, args, stores: StoreSet, timer: PhaseTimer, codec: CodecSpec,
                  photo: tuple[int, int]) -> dict:
    """Host ms·core per sample of each partition (its own loader run, views pre-rendered at its side), and
    cores per H200 when every rank draws both partitions per step in the paper's shares (this project's
    scheme: per rank 1024/G samples at 432 px and 64/G at 1024 px), and when half the GPUs train each
    partition (the paper's split, the step waiting for the slower half)."""
    low = run_loader(stores.subset(MIX_LOW), args, timer, student_views="store", img_size=432)
    root_sam, bits_sam = build_stores(tmp / "mix", images=args.mix_images, shard_size=args.shard_size, codec=codec,
                                      photo=photo, features=args.features, teachers=MIX_SAM, seed=1)
    run_views(root_sam, 1024, use_ray=False)
    sam = run_loader(StoreSet(root_sam, tuple(MIX_SAM), norm="phis"), args, timer, student_views="store",
                     img_size=1024, batch_size=2)
    host = {432: (low["loader_s"] + low["pin_s"]) / low["loaded"] * 1e3,
            1024: (sam["loader_s"] + sam["pin_s"]) / sam["loaded"] * 1e3}
    budget = {side: student_budget_ms(VIT_L_PARAMS, side) for side in host}
    host_step = sum(MIX_BATCH[side] * host[side] for side in host)  # all ranks, one step
    gpu_step = sum(MIX_BATCH[side] * budget[side] for side in host)
    split_step = max(MIX_BATCH[side] / 32 * budget[side] for side in host)  # 32 GPUs per partition
    return {"host_ms_per_sample": host, "budget_ms_per_sample": budget, "sam_bits_per_value": bits_sam,
            "store_read_GBps_per_core": {432: low["read_bytes"] / low["read_s"] / 1e9,
                                         1024: sam["read_bytes"] / sam["read_s"] / 1e9},
            "cores_per_H200_each": {side: host[side] / budget[side] for side in host},
            "cores_per_H200_paper_split": host_step / (64 * split_step),
            "cores_per_H200": host_step / gpu_step}


def print_mix(mix: dict) -> None:
    """The partition mix's detail line (its figure is the last line of the output)."""
    print(f"partition mix (AM-RADIO: ViT-L/16, per step 1024 samples at 432 px with DINOv2-g, CLIP-H, SigLIP and "
          f"64 at 1024 px with SAM-H's full 64x64 grid, {mix['sam_bits_per_value']:.2f} bits/value): host "
          f"{mix['host_ms_per_sample'][432]:.3f} / {mix['host_ms_per_sample'][1024]:.3f} ms·core per sample, budget "
          f"{mix['budget_ms_per_sample'][432]:.3f} / {mix['budget_ms_per_sample'][1024]:.3f} ms, store read "
          f"{mix['store_read_GBps_per_core'][432]:.2f} / {mix['store_read_GBps_per_core'][1024]:.2f} GB/s per core "
          f"(432 / 1024 px); each alone {mix['cores_per_H200_each'][432]:.2f} / {mix['cores_per_H200_each'][1024]:.2f}"
          f" cores per H200; half the GPUs per partition (the paper's split) "
          f"{mix['cores_per_H200_paper_split']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--photo", default="500x375", help="synthetic JPEG size WxH (ImageNet-like)")
    ap.add_argument("--features", choices=("standin", "lowrank"), default="standin",
                    help="stage one's stand-in teachers on the views (default) or synthetic low-rank tokens")
    ap.add_argument("--codec", default="", help="override the store codec, e.g. lz4:5:bitshuffle:0 "
                                                "(cname:clevel:shuffle[:blocksize bytes])")
    ap.add_argument("--mix-images", type=int, default=32, help="photos of the SAM-H 1024 px partition's store "
                                                                  "(full 64x64 grid: ~15 MB per image on disk)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    blosc.use_threads = False
    codec = CodecSpec()
    if args.codec:
        cname, clevel, shuffle, *bs = args.codec.split(":")
        codec = CodecSpec(**{**codec.to_dict(), "compressor": cname, "clevel": int(clevel), "shuffle": shuffle,
                             **({"blocksize": int(bs[0])} if bs else {})})
    photo = tuple(int(x) for x in args.photo.split("x"))
    res: dict[str, object] = {"config": {k: str(v) for k, v in vars(args).items()}, "codec": codec.to_dict()}
    timer = PhaseTimer()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        t0 = time.perf_counter()
        root, bits = build_stores(Path(tmp), images=args.images, shard_size=args.shard_size, codec=codec, photo=photo,
                                  features=args.features)
        res["build_s"] = time.perf_counter() - t0
        stores = StoreSet(root, tuple(TEACHERS), norm="phis")
        n_samples = len(stores.samples("train"))

        def zarr_read() -> int:  # zarr-python's read of the same shards: the store is standard Zarr v3
            n = 0
            with bulk_io():
                for t, s in stores.stores.items():
                    for k in range(s.num_shards):
                        a, b = s.shard_range(k)
                        for arr in ([s.summary] if s.summary is not None else []) + [s.patches]:
                            n += np.asarray(arr[a:b]).nbytes
            return n
        zarr_s, zarr_bytes = cpu(zarr_read)

        # student views outside the loader (64 samples = both views of 32 images): a full decode per
        # image, and the reduced-scale decode at 224 and at 432 px (for the ViT-B/16 @432 estimate)
        pairs = stores.samples("train")[:64]
        full_s, _ = cpu(lambda: render_samples(stores.manifest, pairs, args.img_size))
        view224_s, _ = cpu(lambda: render_student_views(stores.manifest, pairs, args.img_size))
        view432_s, _ = cpu(lambda: render_student_views(stores.manifest, pairs, 432))

        # the student views rendered once (`pipeline views`), at the ViT-L and the ViT-B input sizes
        renders = {}
        for side in dict.fromkeys((args.img_size, 432)):
            rep = run_views(root, side, use_ray=False)
            folder = student_views_path(root, side) / "views" / "c"
            renders[side] = {"ms_core_per_image": rep.cpu_s / rep.images * 1e3,
                             "bytes_per_image": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                             / stores.manifest.num_images}
        r = run_loader(stores, args, timer, student_views="store", img_size=args.img_size)
        r_dec = run_loader(stores, args, timer, student_views="decode", img_size=args.img_size)
        r432 = run_loader(stores, args, timer, student_views="store", img_size=432)
        mix = partition_mix(Path(tmp), args, stores, timer, codec, photo)
        flops = 0.0
        for t_name, s in stores.stores.items():
            g = s.grid[0] * s.grid[1]
            flops += 2.0 * g * s.patch_dim ** 2 + (2.0 * s.summary_dim ** 2 if s.summary_dim else 0.0)
    timer.close()

    per = lambda s, n: s / n * 1e3  # noqa: E731  ms per sample
    loaded = r["loaded"]
    read_ms, view_ms = per(r["read_s"], loaded), per(r["view_s"], loaded)
    gbps = r["read_bytes"] / r["read_s"] / 1e9
    phases = {
        "store read": read_ms,
        "student view (pre-rendered)": view_ms,
        "gather + loader bookkeeping": per(r["loader_s"], loaded) - read_ms - view_ms,
        "loader total": per(r["loader_s"], loaded),
        "pin copy (student views)": per(r["pin_s"], loaded),
    }
    pin_targets_ms = per(r["pin_targets_s"], loaded)
    host_ms = phases["loader total"] + phases["pin copy (student views)"]
    budgets = {k: student_budget_ms(p, side) for k, (p, side) in STUDENTS.items()}
    gpu_norm_ms = flops / (MFU * H200_BF16_FLOPS) * 1e3
    host_of = lambda x: per(x["loader_s"] + x["pin_s"], x["loaded"])  # noqa: E731
    host_dec, host432 = host_of(r_dec), host_of(r432)
    view_dec_ms = per(r_dec["view_s"], r_dec["loaded"])
    res.update({
        "samples": n_samples, "loaded_samples": loaded, "bits_per_value": bits,
        "store_read_GBps_per_core": gbps, "zarr_read_GBps_per_core": zarr_bytes / zarr_s / 1e9,
        "host_ms_core_per_sample": phases, "image_decodes_per_sample": r["decodes"] / loaded,
        "loader_total_ms_per_measured_epoch": r["loader_ms_per_epoch"],
        "student_view_full_decode_ms": per(full_s, len(pairs)), "student_view_224_ms": per(view224_s, len(pairs)),
        "student_view_432_ms": per(view432_s, len(pairs)),
        "shipped_MB_per_sample": r["shipped"] / loaded / 1e6, "pin_copy_of_targets_ms": pin_targets_ms,
        "cores_per_H200_pinning_by_copy": (host_ms + pin_targets_ms) / budgets["ViT-L/16 @224"],
        "device_side_cpu_ms_per_sample": per(r["dev_s"], r["dev_samples"]), "device_side_GFLOP_per_sample": flops / 1e9,
        "device_side_H200_ms_per_sample": gpu_norm_ms, "budgets_ms": budgets,
        "student_views_rendered_once": {str(k): v for k, v in renders.items()},
        "decode_mode": {"student_view_ms": view_dec_ms, "host_ms": host_dec,
                        "image_decodes_per_sample": r_dec["decodes"] / r_dec["loaded"],
                        "loader_total_ms_per_measured_epoch": r_dec["loader_ms_per_epoch"],
                        "cores_per_H200": host_dec / budgets["ViT-L/16 @224"]},
        "vitb432": {"host_ms": host432, "student_view_ms": per(r432["view_s"], r432["loaded"]),
                    "loader_total_ms_per_measured_epoch": r432["loader_ms_per_epoch"]},
        "cores_per_H200_vitb432": host432 / budgets["ViT-B/16 @432"],
        "cores_per_H200": host_ms / budgets["ViT-L/16 @224"],
        "partition_mix": mix,
    })
    print(f"stores: 4 teachers at the papers' shapes ({args.features} features), {args.images} JPEG photos "
          f"{args.photo} x 2 views, shards of {args.shard_size}; codec {codec.compressor}-{codec.clevel} "
          f"{codec.shuffle} blocksize {codec.blocksize}, {bits:.2f} bits/value (built in {res['build_s']:.0f} s)")
    print(f"host CPU (one core, time.process_time), ms·core per sample, the real loader's least-CPU epoch of "
          f"{MEASURED_EPOCHS} after a warm-up one (loader total per epoch: "
          f"{', '.join(f'{x:.2f}' for x in r['loader_ms_per_epoch'])}):")
    for k, v in phases.items():
        print(f"  {k:32s} {v:8.3f}")
    print(f"  (image decodes per sample in the loader: {res['image_decodes_per_sample']:.2f}: the views come from "
          f"the student-view store)")
    print(f"without the student-view store (student_views: decode; epochs "
          f"{', '.join(f'{x:.2f}' for x in r_dec['loader_ms_per_epoch'])}): student view (decode + render) "
          f"{view_dec_ms:.3f}, host total {host_dec:.3f} ms·core per sample, "
          f"{res['decode_mode']['image_decodes_per_sample']:.2f} decodes per sample -> cores per H200 "
          f"{res['decode_mode']['cores_per_H200']:.2f}; outside the loader, both views of an image per decode: "
          f"reduced-scale {res['student_view_224_ms']:.3f}, full decode {res['student_view_full_decode_ms']:.3f}, "
          f"at 432 px {res['student_view_432_ms']:.3f}")
    for side, v in renders.items():
        print(f"student views rendered once at {side} px (`pipeline views`): {v['ms_core_per_image']:.2f} ms·core per "
              f"image (both views), {v['bytes_per_image'] / 1e3:.0f} kB per image on disk "
              f"({v['bytes_per_image'] * 1e6 / 1e12:.2f} TB per 1M images)")
    print(f"shipped to the device: {res['shipped_MB_per_sample']:.2f} MB per sample (bf16 bit patterns), from the "
          f"loader's buffers page-locked in place (CUDA; not runnable here); pinning them by copy instead would add "
          f"{pin_targets_ms:.3f} ms·core per sample (cores per H200 {res['cores_per_H200_pinning_by_copy']:.2f})")
    print(f"device side (widen + normalize, {flops / 1e9:.2f} GFLOP per sample): "
          f"{res['device_side_cpu_ms_per_sample']:.2f} ms on this CPU, charged to the GPU: {gpu_norm_ms:.4f} ms "
          f"per sample at {MFU:.0%} of 790 TFLOP/s")
    for k, v in budgets.items():
        print(f"student budget {k}: {v:.3f} ms per sample (6·params·tokens at {MFU:.0%} of 790 TFLOP/s)")
    print(f"zarr-python read of the same shards: {res['zarr_read_GBps_per_core']:.2f} GB/s per core")
    print(f"cores per H200 for ViT-B/16 @432 (its loader measured, views pre-rendered at 432; epochs "
          f"{', '.join(f'{x:.2f}' for x in r432['loader_ms_per_epoch'])}): {res['cores_per_H200_vitb432']:.2f}")
    print(f"store read: {gbps:.2f} GB/s per core at {bits:.2f} bits/value")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    print_mix(mix)
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"cores per H200: {res['cores_per_H200']:.2f}")
    print(f"partition mix: cores per H200: {mix['cores_per_H200']:.2f}")


if __name__ == "__main__":
    main()
