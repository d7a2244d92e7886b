"""The torch device a command is asked to run on, checked before the command writes anything.

Stage one (teacher extraction, AM-RADIO arXiv 2312.06709), stage two (distillation) and evaluation all take
`--device`; a device this machine does not have must end in one line before a store, a run directory or an
evaluation file exists, never in torch's traceback from deep inside a model's `.to(device)`.
"""

from __future__ import annotations

import torch

DEVICE_TYPES = ("cpu", "cuda")


def check_device(device: str, *, gpus_per_actor: float | None = None) -> None:
    """Refuse a torch device this machine cannot run (ValueError naming the device and the fix).

    gpus_per_actor: set when the device is used inside Ray actors; Ray shows each actor only its own GPUs
    (CUDA_VISIBLE_DEVICES), so an explicit index must be below the GPUs one actor reserves."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"unknown torch device {device!r}; valid devices: cpu, cuda, cuda:N") from e
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"unsupported device {device!r}; valid devices: cpu, cuda, cuda:N")
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"CUDA requested but torch.cuda.is_available() is False on this machine "
                         f"(--device {device}); use --device cpu")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    if gpus_per_actor is not None and dev.index is not None and dev.index >= max(1, int(gpus_per_actor)):
        raise ValueError(f"--device {device}: a Ray actor sees only the {gpus_per_actor:g} GPU(s) it reserves, "
                         "numbered from 0; use --device cuda")
