"""What the ViT student options cost (AM-RADIO arXiv 2312.06709: CPE, windowed attention; activation
checkpointing and torch.compile for large students): one training step of a student + heads on random
targets, per option.

Measured per option, on this machine's CPU (no GPU was lent to the session that wrote this):
  activations  bytes of the tensors autograd keeps for the backward pass (a saved-tensors hook counts each
               storage once, parameters excluded): the memory that grows with batch and resolution, exactly,
               and device-independent (float32 here; bf16 autocast on a GPU roughly halves it)
  step s       wall seconds of forward + backward + AdamW step, median of --steps after a warm-up step
  compile s    the first step under torch.compile (tracing + code generation), apart

Run:  .venv/bin/python benchmarks/student_options_cost.py [--student vit_b16 --img-size 224 --batch 4
      --steps 3 --compile aot_eager,inductor]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from stages.students.contract import StudentOptions
from stages.students.heads import HeadTarget, TeacherHeads
from stages.students.registry import build_student


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor, loss_fn) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model, x)
    loss.backward()
    return total


def run(name: str, options: StudentOptions, args, *, compile_backend: str | None = None,
        windowed: bool = False) -> dict:
    torch.manual_seed(0)
    student = build_student(args.student, img_size=args.img_size, num_summary_tokens=2, options=options)
    heads = TeacherHeads(student.embed_dim, [HeadTarget("a", 256, 256, (16, 16)), HeadTarget("b", 0, 256, (32, 32))],
                         num_summary_tokens=2)
    model = torch.nn.ModuleDict({"student": student, "heads": heads}).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)

    def forward(m, x):
        out = m["student"](x, windowed=True) if windowed else m["student"](x)
        preds = m["heads"](out)
        return sum(p.float().pow(2).mean() + (s.float().pow(2).mean() if s is not None else 0) for s, p in preds.values())

    fn = torch.compile(forward, backend=compile_backend) if compile_backend else forward
    act = None if compile_backend else _saved_bytes(model, x, forward)
    times, first = [], None
    for i in range(args.steps + 1):
        t = time.perf_counter()
        loss = fn(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t
        if i == 0:
            first = dt
        else:
            times.append(dt)
    return {"name": name, "activations_MB": None if act is None else act / 1e6, "step_s": statistics.median(times),
            "first_s": first, "params_M": sum(p.numel() for p in student.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="vit_b16")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--cpe-grid", type=int, default=128)
    ap.add_argument("--window", type=int, default=7)
    ap.add_argument("--compile", default="aot_eager,inductor", help="backends to time ('' for none)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    rows = [run("plain", StudentOptions(), args),
            run("grad_checkpointing", StudentOptions(grad_checkpointing=True), args),
            run(f"cpe_grid {args.cpe_grid}", StudentOptions(cpe_grid=args.cpe_grid), args),
            run(f"windowed attention {args.window} (global every 4th + last)",
                StudentOptions(window_size=args.window), args, windowed=True)]
    for backend in filter(None, args.compile.split(",")):
        rows.append(run(f"torch.compile {backend}", StudentOptions(), args, compile_backend=backend))
    print(f"student {args.student} @{args.img_size}, batch {args.batch}, CPU float32, {torch.get_num_threads()} threads")
    print(f"{'option':52s} {'params M':>9s} {'activations MB':>15s} {'step s':>8s} {'first step s':>13s}")
    for r in rows:
        act = "-" if r["activations_MB"] is None else f"{r['activations_MB']:.1f}"
        print(f"{r['name']:52s} {r['params_M']:9.2f} {act:>15s} {r['step_s']:8.3f} {r['first_s']:13.2f}")
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
