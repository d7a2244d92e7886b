"""Stop-and-resume of stage two gives the same weights as an uninterrupted run (same seed, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stages.distill.config import DistillConfig
from stages.distill.train import train
from test_distill_loader import make_tiny_stores

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stores(tmp_path_factory.mktemp("resume") / "store", teachers=("alpha", "beta"))


def _config(root: Path, out: Path, workers: int) -> DistillConfig:
    # batch 5 over 27 train samples: 5 batches per epoch, so 9 steps cross an epoch boundary
    return DistillConfig(student="vit_tiny_test", teachers=("alpha", "beta"), root=root, out_dir=out,
                         img_size=64, steps=9, batch_size=5, lr=2e-3, warmup_steps=2, log_every=1,
                         num_workers=workers, seed=11)


@pytest.mark.parametrize(("workers", "stop"), [(0, 3), (0, 5), (2, 3)])  # mid-epoch, at the epoch end
def test_resume_matches_uninterrupted_run(tiny_root: Path, tmp_path: Path, workers: int, stop: int) -> None:
    full = train(_config(tiny_root, tmp_path / "full", workers))
    part = train(_config(tiny_root, tmp_path / "part", workers), stop_at=stop)
    stopped = torch.load(part / "checkpoint.pt", weights_only=True)
    assert stopped["step"] == stop and stopped["loader"] == {"epoch": stop // 5, "position": stop % 5}
    assert not (part / "export.safetensors").exists()
    train(_config(tiny_root, tmp_path / "part", workers), resume=True)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 9 and a["loader"] == b["loader"]
    for group in ("student", "heads"):
        for k, v in a[group].items():
            assert torch.equal(v, b[group][k]), f"{group}.{k} differs after resume"
    losses = [[json.loads(x)["loss"] for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (full, part)]
    assert losses[0] == losses[1] and len(losses[0]) == 9
    assert (part / "export.safetensors").exists()


def test_resume_without_checkpoint_is_an_error(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        train(_config(tiny_root, tmp_path / "none", 0), resume=True)
