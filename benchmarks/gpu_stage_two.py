"""GPU check of stage two (AM-RADIO arXiv 2312.06709; PHI-S arXiv 2410.01680): vit_b16 steps/s fed by the
store loader versus the same targets held in GPU memory.

Builds the four paper-teacher-shaped stores of benchmarks/stage_two_cost.py (synthetic values through the
real store code), then trains `vit_b16` for --steps steps on CUDA (bf16 autocast) twice, same config:
  store-fed : StoreBatches + DataLoader workers (pinned, non-blocking copies, normalization on the GPU);
  in-GPU    : one epoch of the same batches with their images and stored targets moved to the GPU first.
Prints both rates and their ratio. NOT RUN in the session that wrote it (no GPU was lent to it).

Run:  .venv/bin/python benchmarks/gpu_stage_two.py [--images 256 --steps 200 --batch-size 64 --workers 8]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_two_cost import TEACHERS, build_stores
from stages.distill.config import DistillConfig
from stages.distill.loader import StoreBatches, StoreSet, make_loader
from stages.distill.train import Distiller, head_targets, make_optimizer, train_step
from stages.students.build import build_models
from store_schema.codecs import CodecSpec


def rate(config: DistillConfig, stores: StoreSet, batches, steps: int) -> float:
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = Distiller(*build_models(config, head_targets(stores))).to(device)
    opt, sched = make_optimizer(config, model)
    for i, batch in enumerate(batches):  # the first 10 steps warm up (cuDNN, allocator, workers)
        if i == 10:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss, _, _ = train_step(config, model, model, opt, sched, batch, device=device, normalizers=stores.normalizers)
        if i == steps + 9:
            break
    loss.item()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA device")
    with tempfile.TemporaryDirectory() as tmp:
        root, bits = build_stores(Path(tmp), images=args.images, shard_size=args.shard_size, codec=CodecSpec(),
                                  photo=(500, 375))
        from stages.extract.student_views import run_views

        run_views(root, 224, use_ray=False)  # the student's views rendered once, as `pipeline views` does
        stores = StoreSet(root, tuple(TEACHERS), norm="phis")
        config = DistillConfig(student="vit_b16", teachers=tuple(TEACHERS), root=root, out_dir=Path(tmp) / "run",
                               img_size=224, batch_size=args.batch_size, steps=10**6, device="cuda",
                               num_workers=args.workers, loader_memory="64GiB")
        ds = StoreBatches(stores, split="train", batch_size=args.batch_size, img_size=224, seed=0,
                          loader_memory=64 * 2**30)
        store_rate = rate(config, stores, make_loader(ds, num_workers=args.workers, pin_memory=True), args.steps)
        held = []
        for batch in make_loader(StoreBatches(stores, split="train", batch_size=args.batch_size, img_size=224,
                                              seed=0, epochs=1, loader_memory=64 * 2**30), num_workers=0):
            held.append({**batch, "image_BHW3": batch["image_BHW3"].cuda(),
                         "order_B": None if batch["order_B"] is None else batch["order_B"].cuda(),
                         "targets": {k: [p.cuda() for p in v] for k, v in batch["targets"].items()}})
        memory_rate = rate(config, stores, itertools.cycle(held), args.steps)
    print(f"store: {bits:.2f} bits/value; vit_b16 @224, batch {args.batch_size}, {args.workers} workers")
    print(f"store-fed: {store_rate:.2f} steps/s   in-GPU targets: {memory_rate:.2f} steps/s   "
          f"ratio {store_rate / memory_rate:.3f}")


if __name__ == "__main__":
    main()
