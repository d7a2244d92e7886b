"""Data-parallel training on processes spawned here (one process group on this machine), the way tests and
single-node users run stage two of AM-RADIO-style distillation (arXiv 2312.06709) without torchrun.

Apart from stages/distill/ddp.py so that ddp stays below the training loop: this module imports `train`,
ddp imports nothing of it.
"""

from __future__ import annotations

import socket
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stages.distill.config import DistillConfig
from stages.distill.ddp import DistContext, backend_for
from stages.distill.train import train


def free_port() -> int:
    """A TCP port free on localhost right now (for spawned process groups)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(rank: int, config_dict: dict[str, Any], world_size: int, port: int,
             train_kwargs: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    config = DistillConfig.from_dict(config_dict)
    dist.init_process_group(backend_for(config.device), init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        train(config, dist_ctx=DistContext(rank, world_size, local_rank=rank), **train_kwargs)
    finally:
        dist.destroy_process_group()


def spawn_train(config: DistillConfig, *, world_size: int, **train_kwargs: Any) -> None:
    """Run `train(config, **train_kwargs)` on `world_size` spawned processes (one process group)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    mp.spawn(_spawned, args=(config.to_dict(), world_size, free_port(), train_kwargs), nprocs=world_size,
             join=True)
