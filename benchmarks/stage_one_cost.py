"""What stage one costs the host per image at the papers' scale, and how many CPU cores one H200 needs.

Stage one runs DFN CLIP-H/14 @378, SigLIP SO400M @384, DINOv2-g/14 @224 and SAM-H @1024 (pooled to 32x32)
once over the corpus (AM-RADIO, arXiv 2312.06709; PHI-S, arXiv 2410.01680). This benchmark runs the real
`ShardWorker` path end to end - manifest, decode + sha256 check, view rendering, staging, device work,
whole-shard write of bf16 bit patterns, the driver's statistics persistence - over the demo corpus's
real photos, 2 views per image, with a stand-in teacher module per paper teacher that returns that
teacher's exact output shapes at negligible cost (no weights offline, no GPU here).

Accounting:
- host CPU ms per image per phase: process CPU time (time.process_time) of each phase, measured with
  everything serial (decode inline, one shard at a time, one torch / zarr / Blosc thread), so each phase's
  CPU time is its own and does not depend on the machine's load.
- the work that runs on the teacher's device in production (pixel normalization, the forward, pooling,
  BitRound and the float64 statistics) runs on this CPU here: its CPU time is shown apart ("device work on
  CPU") and is NOT charged to the host; it is charged to the GPU at its FLOP count: the teacher forward
  at 50% of an H200's 790 TFLOP/s bf16, the statistics (float64 Gram products) at the H200's 67 TFLOP/s
  float64 peak, the element-wise rest at the bf16 peak.
- forward FLOPs per view: 2 x parameters x tokens + 4 x layers x tokens^2 x width (attention; SAM-H: 4
  global-attention layers, the rest in 14x14 windows).
- `cores per H200` = host CPU ms per image / GPU ms per image, the four teachers together (each teacher
  runs in its own actor, so each decodes the image itself).

Also: the statistics of a simulated DINOv2-g store of 1,000,000 images x 2 views in shards of 256 (3907
shards, summary + patches, train + val splits, C = 1536): the first 2 x fold_every + 1 shards go through
the real `StatsLedger` write / fold path with simulated partials (folded partials are deleted, so the
disk held never depends on how many shards came before); the kept per-shard counts and sketches of the
other shards are written directly. Reported: the most bytes the statistics held on disk at any time,
and the peak RSS of a fresh process merging them (`stats()` of every kind and split, as `fingerprint()`
and `store info` do).

Run: python benchmarks/stage_one_cost.py [--images 256] [--shard-size 256] [--out benchmarks/results/stage_one_cost_cpu.txt]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

H200_BF16_FLOPS = 790e12
H200_FP64_FLOPS = 67e12
FORWARD_EFFICIENCY = 0.5
VIEWS = 2


@dataclass(frozen=True)
class PaperTeacher:
    """A paper teacher: registry name, storage grid, and what its forward costs."""

    name: str
    label: str
    storage_grid: tuple[int, int] | None
    params: float
    layers: int
    width: int
    extra_tokens: int  # CLS + registers
    global_layers: int | None = None  # windowed attention elsewhere (SAM)
    window: int = 14

    def forward_flops(self, grid: tuple[int, int]) -> float:
        tokens = grid[0] * grid[1] + self.extra_tokens
        linear = 2.0 * self.params * tokens
        if self.global_layers is None:
            attn = 4.0 * self.layers * tokens**2 * self.width
        else:
            attn = (4.0 * self.global_layers * tokens**2 * self.width
                    + 4.0 * (self.layers - self.global_layers) * tokens * self.window**2 * self.width)
        return linear + attn


TEACHERS = (
    PaperTeacher("dinov2_g_reg", "DINOv2-g @224", None, 1.136e9, 40, 1536, 5),
    PaperTeacher("clip_h_dfn", "CLIP-H @378", None, 0.632e9, 32, 1280, 1),
    PaperTeacher("siglip_so400m", "SigLIP @384", None, 0.428e9, 27, 1152, 0),
    PaperTeacher("sam_h", "SAM-H @1024", (32, 32), 0.637e9, 32, 1280, 0, global_layers=4),
)
HOST_PHASES = ("decode", "stage", "fetch", "write", "finalize")


class StandIn(nn.Module):
    """Returns a teacher's exact output shapes from its input at little cost, with values about as hard to
    compress as real activations (so the codec's bytes and speed are representative).

    Each patch's features are a random-feature map of its cell's mean colour and position
    (cos(x W1 + b), 64 features) projected to C channels with log-normal per-channel scales: smooth in
    space, data-dependent, and full rank across channels. In bf16 with Blosc lz4-5 bitshuffle they store at
    about 13 bits/value (zstd-1 bitshuffle on 2 MiB blocks, the default: about 11.6), like the synthetic low-rank features the codec was measured on (a plain 3 -> C
    projection of the pixels stored at 8-9 bits and flattered the writer)."""

    FEATURES = 64

    def __init__(self, spec, seed: int = 0) -> None:
        super().__init__()
        from stages.teachers.spec import TeacherOutput  # noqa: F401 - contract check at import

        g = torch.Generator().manual_seed(seed)
        F = self.FEATURES
        self.spec = spec
        self.w1_5F = nn.Parameter(torch.randn(5, F, generator=g) * 3.0, requires_grad=False)
        self.b_F = nn.Parameter(torch.rand(F, generator=g) * 6.2832, requires_grad=False)
        scale_C = torch.exp(0.7 * torch.randn(spec.patch_dim, generator=g))
        self.w2_FC = nn.Parameter(torch.randn(F, spec.patch_dim, generator=g) / 8.0 * scale_C, requires_grad=False)
        self.sproj_FC = (nn.Parameter(torch.randn(F, spec.summary_dim, generator=g) / 8.0, requires_grad=False)
                         if spec.summary_dim else None)

    def forward(self, pixels_BCHW: torch.Tensor):
        from stages.teachers.spec import TeacherOutput

        h, w = self.spec.grid
        B = pixels_BCHW.shape[0]
        cells_Bhw3 = nn.functional.adaptive_avg_pool2d(pixels_BCHW, (h, w)).permute(0, 2, 3, 1)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        pos_Bhw2 = torch.stack([yy, xx], dim=-1).to(pixels_BCHW)[None].expand(B, h, w, 2)
        phi_BhwF = torch.cos(torch.cat([cells_Bhw3, pos_Bhw2], dim=-1) @ self.w1_5F + self.b_F)
        patches_BhwC = phi_BhwF @ self.w2_FC
        summary_BC = None if self.sproj_FC is None else phi_BhwF.mean(dim=(1, 2)) @ self.sproj_FC
        return TeacherOutput(summary_BC=summary_BC, patches_BhwC=patches_BhwC)


def build_corpus(work: Path, images: int):
    """The demo corpus's photos (real, mixed sizes), repeated up to `images` files, and a 2-view manifest."""
    from stages.corpus.build_manifest import build_manifest
    from stages.corpus.demo import PHOTOS_SUBDIR, export_demo_corpus
    from store_schema.manifest import ViewSpec

    demo = export_demo_corpus(work / "demo")
    src = work / "photos"
    src.mkdir()
    photos = sorted((demo.images_dir / PHOTOS_SUBDIR).iterdir())
    for i in range(images):
        p = photos[i % len(photos)]
        shutil.copy(p, src / f"r{i // len(photos):02d}_{p.name}")
    return build_manifest(src, out_dir=work / "root", view_spec=ViewSpec(num_views=VIEWS, seed=0))


def run_teacher(t: PaperTeacher, manifest, shard_size: int, batch_size: int) -> dict:
    """Real worker path for one teacher; CPU seconds per phase, summed over shards."""
    from stages.extract.driver import finalize_shard
    from stages.extract.worker import ShardWorker
    from stages.teachers.registry import get_teacher_spec, weights_identity
    from store_schema.codecs import CodecSpec
    from store_schema.teacher_store import create_teacher_store

    spec = get_teacher_spec(t.name)
    grid = t.storage_grid or spec.grid
    path = manifest.path.parent / f"{t.name}.zarr"
    store = create_teacher_store(path, spec=spec, weights_identity=weights_identity(spec), manifest=manifest,
                                 shard_size=shard_size, storage_grid=grid, codec=CodecSpec())
    worker = ShardWorker(spec, store_path=path, manifest_path=manifest.path, batch_size=batch_size,
                         teacher=StandIn(spec))
    cpu: dict[str, float] = {}
    images = views = 0
    for k in range(store.num_shards):
        result = worker.run_shard(k)
        c = time.process_time()
        finalize_shard(store, result)
        store.fold_stats() if k == store.num_shards - 1 else None
        cpu["finalize"] = cpu.get("finalize", 0.0) + time.process_time() - c
        for phase, s in result.cpu_seconds.items():
            cpu[phase] = cpu.get(phase, 0.0) + s
        images += result.num_images - result.num_bad_images
        views += result.num_views
    stats_flops = 0.0  # per image: the Gram products of the statistics, 2 N C^2 per kind
    h, w = grid
    per_view_tokens = {"patches": h * w, "summary": 1 if spec.summary_dim else 0}
    for kind, n in per_view_tokens.items():
        from stages.extract.device_stats import DeviceMoments

        C = spec.patch_dim if kind == "patches" else spec.summary_dim
        if n:
            stats_flops += VIEWS * DeviceMoments.flops(n, C)
    res = spec.resolution
    elementwise = VIEWS * (3 * res * res * 4 + spec.grid[0] * spec.grid[1] * spec.patch_dim * 2
                           + h * w * spec.patch_dim * 8)  # normalize, pool, round
    gpu_ms = 1e3 * (VIEWS * t.forward_flops(spec.grid) / (FORWARD_EFFICIENCY * H200_BF16_FLOPS)
                    + stats_flops / H200_FP64_FLOPS + elementwise / H200_BF16_FLOPS)
    return {"cpu": cpu, "images": images, "views": views, "gpu_ms": gpu_ms,
            "forward_ms": 1e3 * VIEWS * t.forward_flops(spec.grid) / (FORWARD_EFFICIENCY * H200_BF16_FLOPS),
            "bits": _bits(store)}


def _codec_label() -> str:
    from store_schema.codecs import CodecSpec

    c = CodecSpec()
    block = f" on {c.blocksize / 2**20:g} MiB blocks" if c.blocksize else ""
    return f"{c.compressor}-{c.clevel} {c.shuffle}{block}"


def _bits(store) -> float:
    from stages.extract.inspect import storage_footprint

    return storage_footprint(store)[1]


# ---- statistics at a million images ---------------------------------------------------------------
def simulate_million(work: Path, fold_every: int = 16) -> tuple[int, int, float]:
    """(most bytes the statistics held on disk, bytes at the end, seconds) for a DINOv2-g store of 1M images."""
    import zarr

    from stages.stats import Moments
    from store_schema import layout
    from store_schema.stats_ledger import StatsLedger, create_stats_arrays, sketch

    C, K = 1536, -(-1_000_000 // 256)
    dims = {"summary": C, "patches": C}
    path = work / "sim_dinov2_g.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=3)
    create_stats_arrays(group, dims, K)
    ledger = StatsLedger(group, path, dims, K, fold_every)
    rng = np.random.default_rng(0)
    parts = {sp: Moments.from_batch(rng.normal(size=(4 * C, C)) * (1 + i)) for i, sp in enumerate(layout.STATS_SPLITS)}
    complete = np.zeros(K, bool)
    most, t0 = 0, time.perf_counter()
    real = 2 * fold_every + 1
    for k in range(real):
        for kind in dims:
            for sp in layout.STATS_SPLITS:
                ledger.write_shard(k, kind, sp, parts[sp])
        most = max(most, ledger.nbytes_on_disk())
        complete[k] = True
        ledger.fold(complete)
    ledger.fold(complete, force=True)
    # the other shards, as folded: only their kept counts and sketches remain on disk
    P = len(layout.STATS_SPLITS)
    for kind in dims:
        counts = np.tile(np.array([parts[sp].count for sp in layout.STATS_SPLITS], np.int64), (K - real, 1))
        sk = np.tile(np.array([sketch(parts[sp]) for sp in layout.STATS_SPLITS]), (K - real, 1, 1))
        group[layout.stats_array(kind, "count", "shard")][real:] = counts
        group[layout.stats_array(kind, "sketch", "shard")][real:] = sk.reshape(K - real, P, 2)
    f, slot = ledger.folded()
    group[layout.STATS_FOLDED][:] = np.array([K, slot], np.int64)  # every shard folded
    end = ledger.nbytes_on_disk()
    return max(most, end), end, time.perf_counter() - t0


_MERGE_CHILD = r"""
import sys, numpy as np, zarr
from store_schema.stats_ledger import StatsLedger
from store_schema import layout
path = sys.argv[1]
g = zarr.open_group(path, mode="r", zarr_format=3)
dims = {"summary": 1536, "patches": 1536}
K = g[layout.stats_array("patches", "count", "shard")].shape[0]
ledger = StatsLedger(g, path, dims, K, 16)
complete = np.ones(K, bool)
for kind in dims:
    parts = [ledger.merged(kind, sp, complete) for sp in layout.STATS_SPLITS]
    total = parts[0].merge(parts[1])
    total.content_hash()
# VmHWM: this process's peak RSS (ru_maxrss would include the forked parent's RSS from before exec)
print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def merge_peak_rss(path: Path) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _MERGE_CHILD, str(path)], capture_output=True, text=True,
                         env=env, check=True, timeout=600)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256, help="image files (the demo photos, repeated)")
    ap.add_argument("--shard-size", type=int, default=256, help="images per shard (the GPU preset's)")
    ap.add_argument("--batch-size", type=int, default=16, help="views per forward")
    ap.add_argument("--out", type=Path, default=None, help="also append the output to this file")
    ap.add_argument("--stats-only", action="store_true", help="only the statistics-at-1M simulation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import numcodecs
    import zarr

    numcodecs.blosc.set_nthreads(1)
    zarr.config.set({"threading.max_workers": 1})
    buf = io.StringIO()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stage_one_cost_") as tmp, redirect_stdout(_Tee(buf)):
        work = Path(tmp)
        if args.stats_only:
            print(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  stage one cost: statistics simulation only")
            most, end, secs = simulate_million(work)
            rss = merge_peak_rss(work / "sim_dinov2_g.zarr")
            print(f"statistics simulation: {secs:.0f} s; at the end {end / 1e9:.3f} GB on disk")
            print(f"statistics at 1M images: {most / 1e9:.2f} GB on disk, {rss / 1e9:.2f} GB peak RSS")
    if args.stats_only:
        if args.out is not None:
            with open(args.out, "a") as f:
                f.write(buf.getvalue())
        return
    with tempfile.TemporaryDirectory(prefix="stage_one_cost_") as tmp, redirect_stdout(_Tee(buf)):
        work = Path(tmp)
        manifest = build_corpus(work, args.images)
        print(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  stage one cost, {manifest.num_images} real photos "
              f"(the demo corpus's, repeated) x {VIEWS} views, shards of {args.shard_size}, "
              f"batch {args.batch_size}; CPU = process_time, serial, 1 thread")
        rows = {t.label: run_teacher(t, manifest, args.shard_size, args.batch_size) for t in TEACHERS}
        labels = list(rows) + ["all four"]
        print("| ms per image (2 views), one core | " + " | ".join(labels) + " |")
        print("|---|" + "---|" * len(labels))
        host_total, gpu_total = {}, {}
        for phase in HOST_PHASES + ("device",):
            vals = [1e3 * r["cpu"].get(phase, 0.0) / r["images"] for r in rows.values()]
            name = {"decode": "host: decode + sha256 + render 2 views", "stage": "host: stack uint8 views, ship",
                    "fetch": "host: shard values back from the device (one DMA per shard on CUDA)", "write": f"host: whole-shard write (direct shard writer, bf16 bits, {_codec_label()}, crc32c)",
                    "finalize": "host: driver persists + folds statistics",
                    "device": "(device work on CPU here, not charged to host)"}[phase]
            print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {sum(vals):.1f} |")
        for label, r in rows.items():
            host_total[label] = sum(1e3 * r["cpu"].get(p, 0.0) for p in HOST_PHASES) / r["images"]
            gpu_total[label] = r["gpu_ms"]
        print("| **host CPU total** | " + " | ".join(f"{host_total[lab]:.1f}" for lab in rows)
              + f" | {sum(host_total.values()):.1f} |")
        print("| GPU: forward FLOPs at 50% of 790 TFLOP/s | " + " | ".join(f"{r['forward_ms']:.2f}" for r in rows.values())
              + f" | {sum(r['forward_ms'] for r in rows.values()):.2f} |")
        print("| **GPU ms per image** (+ stats at 67 TFLOP/s fp64, element-wise at 790) | "
              + " | ".join(f"{gpu_total[lab]:.2f}" for lab in rows) + f" | {sum(gpu_total.values()):.2f} |")
        print("| cores per GPU (host / GPU) | " + " | ".join(f"{host_total[lab] / gpu_total[lab]:.2f}" for lab in rows)
              + f" | {sum(host_total.values()) / sum(gpu_total.values()):.2f} |")
        print("| stored bits/value | " + " | ".join(f"{r['bits']:.2f}" for r in rows.values()) + " | |")
        most, end, secs = simulate_million(work)
        rss = merge_peak_rss(work / "sim_dinov2_g.zarr")
        print(f"statistics simulation: {secs:.0f} s; at the end {end / 1e9:.3f} GB on disk (two total slots + "
              f"kept per-shard counts and sketches)")
        print(f"statistics at 1M images: {most / 1e9:.2f} GB on disk, {rss / 1e9:.2f} GB peak RSS")
        print(f"benchmark wall time {time.perf_counter() - t_start:.0f} s")
        print(f"cores per H200: {sum(host_total.values()) / sum(gpu_total.values()):.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(buf.getvalue())


class _Tee(io.TextIOBase):
    def __init__(self, buf: io.StringIO) -> None:
        self.buf, self.out = buf, sys.__stdout__

    def write(self, s: str) -> int:
        self.buf.write(s)
        return self.out.write(s)


if __name__ == "__main__":
    main()
