"""The lease on a stage-two run directory: two `pipeline distill` runs into one run directory (two shells,
a DVC queue, a torchrun group restarted while the old one still runs) would interleave checkpoints and
metrics of two trainings (AM-RADIO arXiv 2312.06709 stage two; store_schema/lease.py for the lease).

Rank 0 of a data-parallel group takes the lease (the other ranks write nothing) and tells every rank the
outcome, so a refused group fails on every rank with the same message instead of hanging in a collective.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch.distributed as dist

from stages.distill.ddp import DistContext
from store_schema.lease import Lease, LeaseHeldError, LeaseOptions


@contextmanager
def run_lease(run_dir: Path, dist_ctx: DistContext | None, options: LeaseOptions | None = None,
              *, purpose: str = "distill") -> Iterator[Lease | None]:
    """Hold the lease on `run_dir` for the block (rank 0: the Lease; other ranks: None)."""
    is_main = dist_ctx is None or dist_ctx.is_main
    lease, error = None, None
    if is_main:
        lease = Lease(Path(run_dir), purpose=purpose, options=options)
        try:
            lease.acquire()
        except LeaseHeldError as e:
            error, lease = e, None
    if dist_ctx is not None and dist_ctx.world_size > 1:
        box = [None if error is None else (str(error), error.holder)]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            error = LeaseHeldError(*box[0])
    if error is not None:
        raise error
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()
