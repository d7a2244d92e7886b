"""Checkpoints of a stage-two run (store-fed agglomerative distillation, AM-RADIO arXiv 2312.06709).

A checkpoint holds everything needed to continue a run bit-for-bit on the same hardware: student and
head weights, optimizer and scheduler state, the loader state (epoch, position), the step, the RNG
states, and for an AdaLoss variant the moving averages of its loss terms (``adaloss``). It contains only tensors and plain Python values, so `torch.load(path, weights_only=True)` reads
it. Writes are atomic (temporary file, fsync, then rename): an interrupted save, or one that runs out of
disk space (a StorageWriteError naming the path and the free space), leaves the previous checkpoint.

torch's zip container does not check its entries' checksums on load, so a flipped byte in tensor data
would load silently; every checkpoint therefore records a crc32c of all its tensors and values
(`payload_digest`), checked on load. A truncated or altered checkpoint raises DamagedFileError naming the
file and how to recover; it is never replaced by a new run behind the user's back.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.distill.loader import LoaderState
from store_schema.errors import DamagedFileError
from store_schema.io_errors import storage_error, write_guard

CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """The mutable progress of a run (besides module / optimizer / scheduler state): the step and, per
    resolution partition, where its sample stream stands."""

    step: int
    loader: tuple[LoaderState, ...]

    def loader_json(self) -> dict[str, int] | list[dict[str, int]]:
        """As a checkpoint stores it: one partition's state as a dict (the form of every checkpoint before
        partitions existed), several as a list."""
        states = [s.to_dict() for s in self.loader]
        return states[0] if len(states) == 1 else states

    @staticmethod
    def loader_from_json(value: Any) -> tuple[LoaderState, ...]:
        return tuple(LoaderState.from_dict(v) for v in (value if isinstance(value, list) else [value]))


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """torch RNG states (CPU, and the current CUDA device when training there)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def save_checkpoint(path: Path, *, student: torch.nn.Module, heads: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    state: TrainState, config: dict[str, Any], device: torch.device,
                    adaloss: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (``adaloss``: an AdaLoss variant's state, ``AdaLoss.state_dict``)."""
    payload = {
        "version": CHECKPOINT_VERSION,
        "step": int(state.step),
        "loader": state.loader_json(),
        "student": student.state_dict(),
        "heads": heads.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states(device),
        "config": config,
    }
    if adaloss is not None:
        payload["adaloss"] = adaloss
    payload["digest"] = payload_digest(payload)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint was written"
    with write_guard(path, "the checkpoint", kept=kept):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                try:
                    torch.save(payload, f)
                except RuntimeError as e:  # torch's writer wraps the OSError (e.g. ENOSPC) of the file write
                    os_error = _os_error_in(e)
                    if os_error is None:
                        raise
                    raise storage_error(os_error, path, "the checkpoint", kept=kept) from e
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError an exception was raised from (its __cause__ / __context__ chain), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def payload_digest(payload: dict[str, Any]) -> str:
    """crc32c over every tensor's bytes and every plain value of a checkpoint payload (keys sorted), so an
    altered checkpoint is caught on load. The "digest" entry itself is excluded."""
    import crc32c

    crc = 0

    def visit(x: Any, key: str) -> None:
        nonlocal crc
        crc = crc32c.crc32c(key.encode(), crc)
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            crc = crc32c.crc32c(f"{t.dtype}{tuple(t.shape)}".encode(), crc)
            crc = crc32c.crc32c(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"", crc)
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                if not (key == "" and k == "digest"):
                    visit(x[k], f"{key}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                visit(v, f"{key}[{i}]")
        else:
            crc = crc32c.crc32c(json.dumps(x, sort_keys=True, default=str).encode(), crc)

    visit(payload, "")
    return f"crc32c:{crc:08x}"


def _damaged(path: Path, problem: str) -> DamagedFileError:
    return DamagedFileError(path, problem, f"It cannot be repaired: restore {path.name} from a backup, or "
                            f"delete the run directory {path.parent} (or pick another run name) to train "
                            f"again from step 0; nothing was retrained in its place")


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was written at, without reading its tensors (memory-mapped load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError,
            TypeError, UnicodeDecodeError) as e:
        raise _damaged(Path(path), f"torch cannot read it ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (weights_only=True, onto the CPU); raises FileNotFoundError if absent and
    DamagedFileError (naming the file and how to recover) if it is truncated or altered."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError, UnicodeDecodeError) as e:
        raise _damaged(path, f"torch cannot read it ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e
    if not isinstance(ckpt, dict):
        raise _damaged(path, f"it holds a {type(ckpt).__name__}, not a checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')!r}, expected {CHECKPOINT_VERSION}")
    if "digest" in ckpt and payload_digest(ckpt) != ckpt["digest"]:
        raise _damaged(path, f"its contents do not match the checksum recorded when it was written "
                             f"({ckpt['digest']} recorded, {payload_digest(ckpt)} found)")
    return ckpt
