"""Stage one on one GPU: images/s, GPU busy fraction and host CPU cores used, real-size teachers.

For a machine with a CUDA GPU (prepared for an H200; NOT run in the session that wrote it, which had no
GPU). Runs the in-process `ShardWorker` path (`run_extract(..., workers=0)`: two shards in flight,
decode-ahead threads, device-side normalization / pooling / rounding / statistics) with DINOv2-g/14 at
224 px and SAM-H at 1024 px (pooled to 32x32), real architectures with random weights (`weights: random`
built with the registry's model code and `weights=random`: the cost is the same as pretrained), over the demo
corpus's photos repeated to --images. The paper's reference (AM-RADIO, arXiv 2312.06709, A100 +
TensorRT, forward only): DINOv2-g 294 img/s, SAM-H 12 img/s.

GPU busy fraction: `nvidia-smi --query-gpu=utilization.gpu` sampled every 0.2 s during the run (the
share of time a kernel was running). CPU cores used: process CPU seconds / wall seconds.

Run: python benchmarks/gpu_stage_one.py [--images 1024] [--cpus 4] [--out benchmarks/results/gpu_stage_one.txt]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

RUNS = (("dinov2_g", None, 64), ("sam_h", (32, 32), 16))  # registry name, storage grid, views per batch


class GpuSampler:
    """Samples GPU utilization (%) with nvidia-smi in a background thread."""

    def __init__(self, period: float = 0.2) -> None:
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.strip().splitlines()[0]))
            time.sleep(self.period)

    def __enter__(self) -> "GpuSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    @property
    def busy(self) -> float:
        return sum(self.samples) / len(self.samples) / 100.0 if self.samples else float("nan")


def run_one(manifest, teacher: str, grid, batch: int, cpus: int) -> str:
    """The in-process extraction path (two shards in flight) with a real-size, randomly initialised teacher."""
    from dataclasses import replace

    from stages.extract.driver import SHARDS_IN_FLIGHT_PER_WORKER, finalize_shard
    from stages.orchestrate.shards import in_process
    from stages.extract.worker import ShardWorker
    from stages.teachers.registry import build_teacher, get_teacher_spec, weights_identity
    from stages.teachers.spec import WeightsSource
    from store_schema.codecs import CodecSpec
    from store_schema.teacher_store import create_teacher_store

    spec = get_teacher_spec(teacher)
    model = build_teacher(replace(spec, weights=WeightsSource.RANDOM), device="cuda")  # same cost as pretrained
    path = manifest.path.parent / f"{teacher}.zarr"
    store = create_teacher_store(path, spec=spec, weights_identity=weights_identity(spec), manifest=manifest,
                                 shard_size=256, storage_grid=grid or spec.grid, codec=CodecSpec())
    worker = ShardWorker(spec, store_path=path, manifest_path=manifest.path, device="cuda", batch_size=batch,
                         decode_ahead=4 * cpus, cpu_threads=cpus, teacher=model)
    worker.run_shard(0)  # warm-up (cudnn / allocator), not timed; rewritten below
    phases: dict[str, float] = {}

    def on_result(k, r, node) -> None:
        finalize_shard(store, r)
        for k, v in r.seconds.items():
            phases[k] = phases.get(k, 0.0) + v

    torch.cuda.synchronize()
    c0, t0 = time.process_time(), time.perf_counter()
    with GpuSampler() as gpu:
        in_process(worker, list(range(store.num_shards)), on_result, in_flight=SHARDS_IN_FLIGHT_PER_WORKER)
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    images = manifest.num_images
    out = (f"{teacher}: {images / wall:.1f} img/s, GPU busy {gpu.busy:.2f}, host CPU cores used {cpu / wall:.2f} "
           f"(wall {wall:.0f} s); worker phases (s) {', '.join(f'{k} {v:.1f}' for k, v in phases.items())}")
    shutil.rmtree(path, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--cpus", type=int, default=4, help="cpus_per_worker (host threads of the worker)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_stage_one.txt"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_stage_one.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stage_one_cost import build_corpus

    lines = [f"=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {torch.cuda.get_device_name(0)}, {args.images} images x 2 views, "
             f"cpus_per_worker {args.cpus}, in-process worker"]
    with tempfile.TemporaryDirectory(prefix="gpu_stage_one_") as tmp:
        manifest = build_corpus(Path(tmp), args.images)
        for teacher, grid, batch in RUNS:
            lines.append(run_one(manifest, teacher, grid, batch, args.cpus))
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
