"""Checkpoints of a stage-two run (store-fed agglomerative distillation, AM-RADIO arXiv 2312.06709).

A checkpoint holds everything needed to continue a run bit-for-bit on the same hardware: student and
head weights, optimizer and scheduler state, the loader state (epoch, position), the step, and the RNG
states. It contains only tensors and plain Python values, so `torch.load(path, weights_only=True)` reads
it. Writes are atomic (temporary file, then rename): an interrupted save leaves the previous checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.distill.loader import LoaderState

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """The mutable progress of a run (besides module / optimizer / scheduler state)."""

    step: int
    loader: LoaderState


def checkpoint_path(run_dir: Path) -> Path:
    """<run_dir>/checkpoint.pt"""
    return Path(run_dir) / CHECKPOINT_NAME


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
                    state: TrainState, config: dict[str, Any], device: torch.device) -> None:
    """Write a checkpoint atomically."""
    payload = {
        "version": CHECKPOINT_VERSION,
        "step": int(state.step),
        "loader": state.loader.to_dict(),
        "student": student.state_dict(),
        "heads": heads.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states(device),
        "config": config,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was written at, without reading its tensors (memory-mapped load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (weights_only=True, onto the CPU); raises FileNotFoundError if absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')!r}, expected {CHECKPOINT_VERSION}")
    return ckpt
