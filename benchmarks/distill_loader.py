"""Is stage two fed fast enough by the store? (AM-RADIO arXiv 2312.06709 offline; PHI-S arXiv 2410.01680)

Side by side in one process, same student, heads, optimizer, loss and batches:
  store-fed: the real loader (StoreBatches + DataLoader workers: decode, render view, read Zarr targets,
             normalize) feeding real training steps;
  in-memory: the same batches pre-decoded into tensors (images and stored targets), so each step only
             does the training compute (including the device-side normalization both sides share).
The ratio store-fed / in-memory steps/s says how much the loader costs on the tiny config; it is kept as a
regression figure (no target: with tiny teachers and a tiny student on 2 shared cores the loader's fixed
costs dominate; benchmarks/stage_two_cost.py measures the loader at the papers' scale).

Run:  .venv/bin/python benchmarks/distill_loader.py [--images 96 --rounds 5 --steps 20 --batch-size 16 --workers 2
      --img-size 64 --student vit_tiny_test --device cpu]
Both sides run in alternating rounds (the machine is shared, its load drifts) and the medians are
compared. Prints both rates, the ratio and a JSON line; --out FILE also writes the JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from stages.corpus.build_manifest import build_manifest
from stages.distill.config import DistillConfig
from stages.distill.loader import StoreBatches, StoreSet, make_loader
from stages.distill.train import Distiller, head_targets, make_optimizer, train_step
from stages.students.build import build_models
from stages.stats import Moments
from stages.teachers.spec import Family, TeacherSpec, WeightsSource
from store_schema.codecs import CodecSpec
from store_schema.layout import teacher_store_path
from store_schema.manifest import ViewSpec
from store_schema.teacher_store import create_teacher_store

# name -> (summary_dim, patch_dim, resolution, patch_size, scale): two teachers ~100x apart in scale
TEACHERS = {"clip_like": (64, 64, 56, 14, 0.03), "sam_like": (0, 96, 64, 16, 5.0)}


def build_stores(tmp: Path, *, images: int, views: int, shard_size: int, seed: int = 0) -> Path:
    """Synthetic JPEG folder + manifest + one complete store per fake teacher (random stored targets)."""
    rng = np.random.default_rng(seed)
    folder = tmp / "images"
    folder.mkdir(parents=True)
    for i in range(images):
        img = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(img).resize((160, 120), Image.Resampling.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)
    root = tmp / "store"
    manifest = build_manifest(folder, out_dir=root, view_spec=ViewSpec(num_views=views), val_fraction=0.0)
    for name, (cs, cp, res, patch, scale) in TEACHERS.items():
        spec = TeacherSpec(name=name, family=Family.DINOV2, arch="synthetic", weights_id="",
                           weights=WeightsSource.RANDOM, resolution=res, patch_size=patch, summary_dim=cs,
                           patch_dim=cp, num_prefix_tokens=1, mean=(0.5,) * 3, std=(0.5,) * 3, license="none")
        store = create_teacher_store(teacher_store_path(root, name), spec=spec, manifest=manifest,
                                     weights_identity={"source": "random", "id": "bench", "sha256": None},
                                     shard_size=shard_size, storage_grid=spec.grid, codec=CodecSpec())
        for k in range(store.num_shards):
            a, b = store.shard_range(k)
            S, (h, w) = b - a, spec.grid
            summary = (rng.normal(size=(S, views, cs)) * scale).astype(np.float32) if cs else None
            patches = (rng.normal(size=(S, views, h, w, cp)) * scale).astype(np.float32)
            store.write_shard(k, summary_SVC=summary, patches_SVhwC=patches, valid_SV=np.ones((S, views), bool))
            s, p, _ = store.read_shard(k)
            for kind, arr in (("summary", s), ("patches", p)):
                if arr is not None:
                    store.write_shard_stats(k, kind, Moments.from_batch(arr.reshape(-1, arr.shape[-1])))
            store.mark_complete(k)
    return root


class Side:
    """One side of the comparison: its own model / optimizer and an endless batch iterator."""

    def __init__(self, config: DistillConfig, stores: StoreSet, batches: Iterator[dict[str, Any]]) -> None:
        torch.manual_seed(config.seed)
        self.config, self.device = config, torch.device(config.device)
        self.model = Distiller(*build_models(config, head_targets(stores))).to(self.device)
        self.optimizer, self.scheduler = make_optimizer(config, self.model)
        self.batches, self.normalizers = batches, stores.normalizers

    def steps(self, n: int) -> float:
        """Seconds for n training steps (the device is synchronized at the end)."""
        t0 = time.perf_counter()
        for _ in range(n):
            loss, _, _ = train_step(self.config, self.model, self.model, self.optimizer, self.scheduler,
                                    next(self.batches), device=self.device, normalizers=self.normalizers)
        loss.item()
        return time.perf_counter() - t0


def compare(store_fed: Side, in_memory: Side, *, rounds: int, steps: int, settle: int) -> tuple[list[float], list[float]]:
    """Alternate timed rounds of both sides (the machine's load drifts; alternating shares the drift).

    Each round first runs `settle` untimed steps, which consume the batches the loader workers prefetched
    while the other side ran, so the timed steps see the loader's steady state.
    """
    rates_store, rates_memory = [], []
    for _ in range(rounds):
        for side, rates in ((store_fed, rates_store), (in_memory, rates_memory)):
            side.steps(settle)
            rates.append(steps / side.steps(steps))
    return rates_store, rates_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round and side")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--student", default="vit_tiny_test")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--student-views", choices=("store", "decode"), default="store",
                    help="store: render the views once first (`pipeline views`, the default path); decode: the loader "
                         "decodes every image every epoch")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = build_stores(Path(tmp), images=args.images, views=args.views, shard_size=args.shard_size)
        if args.student_views == "store":
            from stages.extract.student_views import run_views

            run_views(root, args.img_size, use_ray=False)
        config = DistillConfig(student=args.student, teachers=tuple(TEACHERS), root=root, out_dir=Path(tmp) / "run",
                               img_size=args.img_size, batch_size=args.batch_size, steps=10**6, warmup_steps=10,
                               device=args.device, num_workers=args.workers)
        stores = StoreSet(root, config.teachers, norm=config.norm)
        settle = max(2, args.workers * 2)  # the DataLoader's default prefetch_factor is 2 per worker

        def dataset() -> StoreBatches:
            return StoreBatches(stores, split="train", batch_size=args.batch_size, img_size=args.img_size,
                                seed=0, shuffle_block=config.shuffle_block)

        loader = iter(make_loader(dataset(), num_workers=args.workers))
        store_side = Side(config, stores, loader)
        store_side.steps(args.warmup)  # start the workers, first forward / backward
        t0 = time.perf_counter()
        cached, per_round = [], args.steps + settle
        for batch in make_loader(dataset(), num_workers=0):  # its target buffers are recycled: keep copies
            cached.append({**batch, "targets": {k: [p.clone() for p in v] for k, v in batch["targets"].items()}})
            if len(cached) == per_round:
                break
        load_s = (time.perf_counter() - t0) / per_round
        memory_side = Side(config, stores, itertools.cycle(cached))
        memory_side.steps(args.warmup)
        rates_store, rates_memory = compare(store_side, memory_side, rounds=args.rounds, steps=args.steps,
                                            settle=settle)
    store_fed, in_memory = statistics.median(rates_store), statistics.median(rates_memory)
    result = {"store_fed_steps_per_s": store_fed, "in_memory_steps_per_s": in_memory,
              "ratio": store_fed / in_memory, "rounds_store_fed": rates_store, "rounds_in_memory": rates_memory, "loader_s_per_batch_one_process": load_s,
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "torch_threads": torch.get_num_threads()}
    print(f"store-fed : {store_fed:8.2f} steps/s  (median of {args.rounds} rounds, {args.workers} workers)")
    print(f"in-memory : {in_memory:8.2f} steps/s  (median of {args.rounds} rounds)")
    print(f"ratio     : {result['ratio']:.3f}   (loader alone, one process: {load_s * 1e3:.1f} ms/batch)")
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
