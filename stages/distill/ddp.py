"""Data-parallel stage-two training with torch.distributed (AM-RADIO arXiv 2312.06709 trains its students
data-parallel; here on the store-fed loader).

Each rank runs `stages.distill.train.train` with a `DistContext`: the model is wrapped in
DistributedDataParallel (gradients averaged over ranks), the loader gives rank r the r-th slice of every
global batch (no overlap; the global batch is batch_size × world size), and only rank 0 writes the run
directory. Backends: gloo on CPU, nccl on CUDA. Launch with torchrun (`init_from_env` reads the
variables torchrun sets, passed in explicitly) or spawn processes with `stages.distill.spawn.spawn_train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist

from stages.distill.config import DistillConfig


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel group (already initialized)."""

    rank: int
    world_size: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: str) -> str:
    """gloo for CPU training, nccl for CUDA."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def device_for(config: DistillConfig, ctx: DistContext | None) -> torch.device:
    """The rank's device: config.device, with CUDA ranks on cuda:<local_rank>."""
    device = torch.device(config.device)
    if device.type == "cuda" and ctx is not None and ctx.world_size > 1:
        return torch.device("cuda", ctx.local_rank)
    return device


def init_from_env(env: Mapping[str, str], *, device: str) -> DistContext:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in env)."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ValueError(f"not launched by torchrun: environment lacks {missing}")
    ctx = DistContext(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        restart = env.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:
            dist.init_process_group(backend_for(device), init_method="env://", rank=ctx.rank,
                                    world_size=ctx.world_size)
            return ctx
        # Under torchrun the agent's store outlives a restart of the group: the gloo / nccl rendezvous keys
        # of the previous attempt (the dead ranks' addresses) are still in it, and the restarted ranks would
        # wait on them. Each attempt therefore rendezvouses under its own prefix.
        agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), ctx.world_size,
                              is_master=not agent and ctx.rank == 0, timeout=timedelta(minutes=10))
        dist.init_process_group(backend_for(device), store=dist.PrefixStore(f"pipeline/attempt_{restart}", store),
                                rank=ctx.rank, world_size=ctx.world_size)
    return ctx


def all_reduce_mean(values_K: torch.Tensor, ctx: DistContext | None) -> torch.Tensor:
    """Mean of a tensor over ranks (identity without a group)."""
    if ctx is None or ctx.world_size == 1:
        return values_K
    out = values_K.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None and ctx.world_size > 1:
        dist.barrier()
