"""Data-parallel stage two (torch.distributed, gloo on CPU): two processes with batch B each follow the
loss curve of one process with batch 2B, and ranks never share a sample within an epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stages.distill.config import DistillConfig
from stages.distill.spawn import spawn_train
from stages.distill.loader import StoreBatches, StoreSet
from stages.distill.train import train
from stages.normalize import NormVariant
from test_distill_loader import make_tiny_stores

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stores(tmp_path_factory.mktemp("ddp") / "store", teachers=("alpha", "beta"))


def _config(root: Path, out: Path, batch: int) -> DistillConfig:
    return DistillConfig(student="vit_tiny_test", teachers=("alpha", "beta"), root=root, out_dir=out,
                         img_size=64, steps=6, batch_size=batch, lr=2e-3, warmup_steps=2, log_every=1, seed=4,
                         # clipping after the all-reduce is part of what must match across world sizes; it
                         # also keeps Adam's amplification of ~0 gradients' summation-order noise small
                         grad_clip=1.0)


def _losses(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_match_one_process_with_double_batch(tiny_root: Path, tmp_path: Path) -> None:
    single = train(_config(tiny_root, tmp_path / "single", batch=4))
    spawn_train(_config(tiny_root, tmp_path / "ddp", batch=2), world_size=2)
    assert_same_run(single, tmp_path / "ddp", steps=6)


def assert_same_run(single: Path, ddp: Path, *, steps: int) -> None:
    """The DDP run logged the single-process run's losses and ended with its student weights."""
    a, b = _losses(single), _losses(ddp)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))
    for ra, rb in zip(a, b):
        for k in ra:
            if k.startswith("loss"):
                assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), (ra["step"], k)
    wa = torch.load(single / "checkpoint.pt", weights_only=True)["student"]
    wb = torch.load(ddp / "checkpoint.pt", weights_only=True)["student"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4)  # Adam amplifies fp noise of ~0 grads


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_never_share_a_sample_in_an_epoch(tiny_root: Path, world: int) -> None:
    stores = StoreSet(tiny_root, ("alpha", "beta"), norm=NormVariant.PHIS)
    datasets = [StoreBatches(stores, split="train", batch_size=2, img_size=32, seed=9, rank=r, world_size=world)
                for r in range(world)]
    n = datasets[0].batches_per_epoch
    assert n == len(datasets[0].samples_M2) // (2 * world)
    seen: list[tuple[int, int]] = []
    for ds in datasets:
        order = ds.epoch_samples(0)
        for b in range(n):
            seen += [tuple(p) for p in order[ds.rank_slice(b)].tolist()]
    assert len(seen) == len(set(seen)) == n * 2 * world


def test_adaloss_averages_are_the_mean_over_ranks(tiny_root: Path, tmp_path: Path) -> None:
    """ada_phis on two gloo ranks: each term's moving average follows the all-reduced value, which equals
    the single process's on the double batch, so the averages (and the losses they weight) match it."""
    import dataclasses

    single = train(dataclasses.replace(_config(tiny_root, tmp_path / "single", batch=4), norm="ada_phis"))
    spawn_train(dataclasses.replace(_config(tiny_root, tmp_path / "ddp", batch=2), norm="ada_phis"), world_size=2)
    ea = torch.load(single / "checkpoint.pt", weights_only=True)["adaloss"]
    eb = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["adaloss"]
    assert ea["steps"] == eb["steps"] == 6 and set(ea["ema"]) == set(eb["ema"])
    for k, v in ea["ema"].items():
        assert eb["ema"][k] == pytest.approx(v, rel=1e-4), k
    a, b = _losses(single), _losses(tmp_path / "ddp")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
