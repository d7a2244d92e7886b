"""Wall time of an N-variant normalization sweep (PHI-S, arXiv 2410.01680): offline store vs. online teachers.

Offline (this project): every teacher runs once per image·view into the Zarr store (stage one), then each
variant trains from stored targets (stage two never touches the teachers). Online (the AM-RADIO recipe,
arXiv 2312.06709): every training step of every variant re-renders its views at each teacher's
resolution and runs every teacher forward. Both sides use the same stored views, the same student,
heads, optimizer, loss and normalizers (the online side only replaces the batch's targets with freshly
computed, normalized teacher outputs), so the difference is the teacher forwards.

Run:  .venv/bin/python benchmarks/sweep_cost.py [--images 96 --variants phis,mse,standardize,zca
      --steps 150 --batch-size 16]   (tiny random teachers; ~1.5-3 minutes on 2 CPU cores)
Prints one line per phase and a JSON summary; --out FILE also writes the JSON.

Shape legend: B batch, H/W pixel sides, h/w teacher grid, C channels.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _setup_store(tmp: Path, *, num_images: int, views: int) -> Path:
    """Demo corpus subset (first `num_images` files) → manifest in a fresh store root."""
    from stages.corpus.build_manifest import build_manifest
    from stages.corpus.demo import export_demo_corpus
    from store_schema.manifest import ViewSpec

    demo = export_demo_corpus(tmp / "demo")
    files = sorted(p for p in demo.images_dir.rglob("*.png"))[:num_images]
    listing = tmp / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    root = tmp / "store"
    build_manifest(listing, out_dir=root, view_spec=ViewSpec(num_views=views), min_side=8)
    return root


def _extract(root: Path, teachers: list[str], *, batch_size: int) -> float:
    """Stage one, in-process (no Ray, as on the GPU machine): seconds for all teachers."""
    from stages.extract.driver import ExtractConfig, run_extract

    t0 = time.perf_counter()
    for t in teachers:
        run_extract(root, t, ExtractConfig(batch_size=batch_size, shard_size=16, workers=0, progress=False))
    return time.perf_counter() - t0


def _online_targets(batch: dict[str, Any], stores: Any, teachers: dict[str, torch.nn.Module]) -> None:
    """Replace the batch's stored targets by online teacher forwards on the same views (normalized)."""
    from stages.corpus.samples import load_checked
    from stages.corpus.views import render_view
    from stages.teachers.preprocess import to_pixels

    m = stores.manifest
    imgs = [load_checked(m, int(i)) for i in batch["image_B"]]  # the one reader, checked against the hash
    for name, teacher in teachers.items():
        spec = stores.stores[name].spec
        views_BHW3 = np.stack([render_view(img, m.view_boxes_NV4[int(i), int(v)], bool(m.view_flips_NV[int(i), int(v)]),
                                           spec.resolution)
                               for img, i, v in zip(imgs, batch["image_B"], batch["view_B"])])
        with torch.no_grad():
            out = teacher(to_pixels(views_BHW3, spec))
        norms = stores.normalizers[name]
        batch[f"{name}/patches"] = norms["patches"].apply(out.patches_BhwC.float()).float()
        if out.summary_BC is not None:
            batch[f"{name}/summary"] = norms["summary"].apply(out.summary_BC.float()).float()


def _train(config: Any, *, online: bool) -> float:
    """`config.steps` optimization steps of one variant; seconds. Same loop body as stages.distill.train."""
    from stages.distill.loader import StoreBatches, StoreSet, make_loader, targets_on_device
    from stages.students.preprocess import student_pixels
    from stages.distill.train import Distiller, distill_loss, head_targets, make_optimizer, normalize_targets
    from stages.students.build import build_models
    from stages.teachers.registry import build_teacher

    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    stores = StoreSet(config.root, config.teachers, norm=config.norm)
    teachers = ({t: build_teacher(stores.stores[t].spec) for t in config.teachers} if online else {})
    model = Distiller(*build_models(config, head_targets(stores)))
    optimizer, scheduler = make_optimizer(config, model)
    data = StoreBatches(stores, split="train", batch_size=config.batch_size, img_size=config.img_size,
                        seed=config.seed)
    for step, batch in enumerate(make_loader(data, num_workers=0)):
        if step == config.steps:
            break
        if online:
            _online_targets(batch, stores, teachers)
            targets = batch
        else:  # the training step's device-side widening + normalization (here the device is the CPU)
            targets = normalize_targets(targets_on_device(batch, "cpu"), stores.normalizers)
        loss, _ = distill_loss(config, model(student_pixels(batch["image_BHW3"], device="cpu")), targets,
                               torch.device("cpu"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--teachers", default="tiny_dinov2,tiny_clip,tiny_sam")
    ap.add_argument("--variants", default="phis,mse,standardize,zca")
    ap.add_argument("--student", default="vit_tiny_test")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from stages.distill.config import DistillConfig

    teachers, variants = a.teachers.split(","), a.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = _setup_store(tmp, num_images=a.images, views=a.views)
        t_extract = _extract(root, teachers, batch_size=16)
        print(f"extract (once, {len(teachers)} teachers): {t_extract:.1f} s", flush=True)
        times: dict[str, dict[str, float]] = {"store": {}, "online": {}}
        for v in variants:
            cfg = DistillConfig(student=a.student, teachers=tuple(teachers), root=root, out_dir=tmp / "runs" / v,
                                norm=v, img_size=a.img_size, steps=a.steps, batch_size=a.batch_size,
                                warmup_steps=min(5, a.steps))
            for mode in ("store", "online"):
                times[mode][v] = _train(cfg, online=mode == "online")
                print(f"{v:12s} {mode:6s}: {times[mode][v]:.1f} s ({a.steps} steps x {a.batch_size})", flush=True)
    store_total = t_extract + sum(times["store"].values())
    online_total = sum(times["online"].values())
    summary = {"images": a.images, "views": a.views, "teachers": teachers, "variants": variants,
               "steps": a.steps, "batch_size": a.batch_size, "threads": a.threads,
               "extract_s": t_extract, "train_s": times,
               "store_sweep_s": store_total, "online_sweep_s": online_total,
               "online_over_store": online_total / store_total,
               "teacher_forwards": {"store": a.images * a.views * len(teachers),
                                    "online": len(variants) * a.steps * a.batch_size * len(teachers)}}
    print(f"sweep of {len(variants)} variants: store {store_total:.1f} s (extract {t_extract:.1f} s + training) "
          f"vs online {online_total:.1f} s: online / store = {summary['online_over_store']:.2f}x")
    print(json.dumps(summary, indent=2))
    if a.out:
        a.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
