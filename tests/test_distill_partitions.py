"""Resolution partitions in stage two (stages/distill/partitions.py; AM-RADIO arXiv 2312.06709): one batch per
partition per step at its own student side, losses summed; stop / resume bit-identical; DDP over two gloo
ranks equals one process with the double batch; PHI-S per-teacher batch partitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stages.distill.config import DistillConfig
from stages.distill.partition_loader import teacher_rows
from stages.distill.partitions import Partition, parse_partition
from stages.distill.spawn import spawn_train
from stages.distill.train import train
from test_distill_ddp import assert_same_run
from test_distill_loader import make_tiny_stores

torch.set_num_threads(1)
PARTS = ("32:4:alpha", "64:2:beta")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stores(tmp_path_factory.mktemp("parts") / "store", teachers=("alpha", "beta"))


def _config(root: Path, out: Path, *, parts=PARTS, steps: int = 6, **kw) -> DistillConfig:
    return DistillConfig(student="vit_tiny_test", teachers=(), partitions=parts, root=root, out_dir=out, steps=steps,
                         lr=2e-3, warmup_steps=2, log_every=1, seed=4, **kw)


def _history(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_partition_text_and_config_forms() -> None:
    assert parse_partition("128:4:tiny_sam@256") == Partition(128, 4, ("tiny_sam@256",))
    with pytest.raises(ValueError, match="SIZE:BATCH:STORES"):
        parse_partition("128:tiny_sam")
    c = DistillConfig(student="vit_tiny_test", teachers=(), partitions=PARTS, root="/r", out_dir="/o")
    assert c.teachers == ("alpha", "beta") and (c.img_size, c.batch_size) == (32, 4)
    assert DistillConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="more than one partition"):
        DistillConfig(student="vit_tiny_test", teachers=(), partitions=("32:4:alpha", "64:2:alpha"), root="/r",
                      out_dir="/o")
    with pytest.raises(ValueError, match="not the stores the partitions name"):
        DistillConfig(student="vit_tiny_test", teachers=("alpha",), partitions=PARTS, root="/r", out_dir="/o")
    single = DistillConfig(student="vit_tiny_test", teachers=("alpha", "beta"), root="/r", out_dir="/o", img_size=32)
    assert single.to_dict()["partitions"] == [{"img_size": 32, "batch_size": 32, "teachers": ["alpha", "beta"]}]
    assert DistillConfig.from_dict(single.to_dict()) == single and single.partitions == ()


def test_two_partitions_train_each_store_at_its_side_and_record_them(tiny_root: Path, tmp_path: Path) -> None:
    run = train(_config(tiny_root, tmp_path / "run", steps=3))
    saved = json.loads((run / "config.json").read_text())
    assert saved["partitions"] == [{"img_size": 32, "batch_size": 4, "teachers": ["alpha"]},
                                   {"img_size": 64, "batch_size": 2, "teachers": ["beta"]}]
    history = _history(run)
    assert [h["step"] for h in history] == [1, 2, 3]
    first = history[0]
    parts = sum(v for k, v in first.items() if k.startswith("loss/"))
    assert first["loss"] == pytest.approx(parts, rel=1e-5)  # the partitions' losses summed (weights 1)
    assert {k for k in first if k.startswith("loss/")} == {"loss/alpha/summary", "loss/alpha/patches",
                                                           "loss/beta/patches"}
    assert first["images_per_s"] > 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["loader"] == [{"epoch": 0, "position": 3}, {"epoch": 0, "position": 3}]


def test_two_partitions_stop_and_resume_bit_identically(tiny_root: Path, tmp_path: Path) -> None:
    # 12 steps cross an epoch boundary of the 32 px partition (few samples at batch 4), not of the other
    straight = train(_config(tiny_root, tmp_path / "straight", steps=12))
    train(_config(tiny_root, tmp_path / "resumed", steps=12), stop_at=5)
    resumed = train(_config(tiny_root, tmp_path / "resumed", steps=12), resume=True)
    a, b = _history(straight), _history(resumed)
    assert [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k.startswith(("loss", "grad_norm", "lr"))} == \
               {k: v for k, v in rb.items() if k.startswith(("loss", "grad_norm", "lr"))}
    wa = torch.load(straight / "checkpoint.pt", weights_only=True)
    wb = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert wa["loader"] == wb["loader"] and wa["loader"][0]["epoch"] >= 1
    for part in ("student", "heads"):
        for k in wa[part]:
            assert torch.equal(wa[part][k], wb[part][k]), (part, k)


def test_ddp_two_partitions_on_two_gloo_ranks_equals_one_process(tiny_root: Path, tmp_path: Path) -> None:
    single = train(_config(tiny_root, tmp_path / "single", parts=("32:4:alpha", "64:2:beta"), grad_clip=1.0))
    spawn_train(_config(tiny_root, tmp_path / "ddp", parts=("32:2:alpha", "64:1:beta"), grad_clip=1.0), world_size=2)
    assert_same_run(single, tmp_path / "ddp", steps=6)


def test_per_teacher_batch_partitions(tiny_root: Path, tmp_path: Path) -> None:
    rows = teacher_rows(("a", "b", "c"), 8)
    covered = [i for s in rows.values() for i in range(8)[s]]
    assert covered == list(range(8))  # disjoint, contiguous, every row once
    with pytest.raises(ValueError, match="fewer rows than teachers"):
        _config(tiny_root, tmp_path / "x", parts=("32:1:alpha,beta",), teacher_batches="split")
    split = train(_config(tiny_root, tmp_path / "split", parts=("32:4:alpha,beta",), steps=2, teacher_batches="split"))
    shared = train(_config(tiny_root, tmp_path / "shared", parts=("32:4:alpha,beta",), steps=2))
    assert json.loads((split / "config.json").read_text())["teacher_batches"] == "split"
    hs, hh = _history(split), _history(shared)
    assert hs[0]["loss"] != hh[0]["loss"]  # each teacher scored on its own two images, not all four
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hs)


def test_one_partition_is_a_run_without_partitions_bit_for_bit(tiny_root: Path, tmp_path: Path) -> None:
    plain = train(DistillConfig(student="vit_tiny_test", teachers=("alpha", "beta"), root=tiny_root,
                                out_dir=tmp_path / "plain", img_size=32, batch_size=4, steps=3, lr=2e-3,
                                warmup_steps=2, log_every=1, seed=4))
    one = train(_config(tiny_root, tmp_path / "one", parts=("32:4:alpha,beta",), steps=3))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("images_per_s", "elapsed_s")} for r in rows]  # noqa: E731
    assert strip(_history(plain)) == strip(_history(one))
    wa = torch.load(plain / "checkpoint.pt", weights_only=True)
    wb = torch.load(one / "checkpoint.pt", weights_only=True)
    assert wa["loader"] == wb["loader"] == {"epoch": 0, "position": 3}  # the checkpoint form of every earlier run
    assert all(torch.equal(wa["student"][k], wb["student"][k]) for k in wa["student"])


def test_ada_variant_weights_every_partitions_terms_once_per_step(tiny_root: Path, tmp_path: Path) -> None:
    """Ada-PHI-S (stages/normalize/adaloss.py) over two partitions: one AdaLoss update per step holding every
    partition's terms (the stores' terms are one dict: a store belongs to one partition)."""
    run = train(_config(tiny_root, tmp_path / "ada", steps=3, norm="ada_phis"))
    first = _history(run)[0]
    assert {k for k in first if k.startswith("ada_w/")} == {"ada_w/alpha/summary", "ada_w/alpha/patches",
                                                            "ada_w/beta/patches"}
    ada = torch.load(run / "checkpoint.pt", weights_only=True)["adaloss"]
    assert ada["steps"] == 3 and set(ada["ema"]) == {"loss/alpha/summary", "loss/alpha/patches", "loss/beta/patches"}
