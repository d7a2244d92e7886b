"""AdaLoss (Ada-MSE / Ada-PHI-S of the PHI-S paper, arXiv 2410.01680 Table 12): known answers of the moving
averages and weights, and a stopped-and-resumed ada_phis run equal bit for bit to an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from stages.distill.config import DistillConfig
from stages.distill.train import distill_loss, train
from stages.normalize.adaloss import AdaLoss
from test_distill_loader import make_tiny_stores

torch.set_num_threads(1)


def test_constant_loss_gets_weight_one_over_itself_every_step() -> None:
    ada = AdaLoss(beta=0.9)
    for _ in range(50):
        w = ada.update({"a": 4.0, "b": 0.25})
        assert w == {"a": 0.25, "b": 4.0}  # exactly: the average of a constant is the constant
    assert ada.steps == 50 and ada.ema == {"a": 4.0, "b": 0.25}


def test_moving_average_known_answers() -> None:
    ada = AdaLoss(beta=0.5)
    assert ada.update({"x": 1.0}) == {"x": 1.0}  # started at the first value
    assert ada.update({"x": 2.0}) == {"x": 1.0 / 1.5}  # 0.5·1 + 0.5·2
    assert ada.update({"x": 4.0}) == {"x": 1.0 / 2.75}  # 0.5·1.5 + 0.5·4
    w = ada.update({"x": 2.75, "y": 8.0})  # a new term starts at its own value
    assert w == {"x": 1.0 / 2.75, "y": 0.125}
    with pytest.raises(ValueError, match="non-finite loss terms \\['x'\\]"):
        ada.update({"x": float("nan")})
    with pytest.raises(ValueError, match="beta"):
        AdaLoss(beta=1.0)
    again = AdaLoss(beta=0.5)
    again.load_state_dict(json.loads(json.dumps(ada.state_dict())))
    assert again.ema == ada.ema and again.steps == ada.steps == 4
    with pytest.raises(ValueError, match="beta 0.5 differs"):
        AdaLoss(beta=0.9).load_state_dict(ada.state_dict())


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stores(tmp_path_factory.mktemp("ada") / "store", teachers=("alpha", "beta"))


def _config(root: Path, out: Path, norm: str = "ada_phis") -> DistillConfig:
    return DistillConfig(student="vit_tiny_test", teachers=("alpha", "beta"), root=root, out_dir=out, norm=norm,
                         img_size=64, steps=7, batch_size=5, lr=2e-3, warmup_steps=2, log_every=1, seed=3)


def test_each_term_divided_by_its_average(tiny_root: Path, tmp_path: Path) -> None:
    """On the first step every weighted term is exactly 1 (its average is its value): the total is the
    configured weights' sum; the plain variant's total is the weighted sum of the raw terms."""
    torch.manual_seed(0)
    preds = {t: (torch.randn(4, 16), torch.randn(4, 4, 4, 24)) for t in ("alpha", "beta")}
    targets = {f"{t}/{k}": torch.randn_like(preds[t][i]) for t in preds for i, k in ((0, "summary"), (1, "patches"))}
    config = dataclasses.replace(_config(tiny_root, tmp_path / "x"), teacher_weights={"beta": 2.0})
    ada = AdaLoss()
    total, parts = distill_loss(config, preds, targets, torch.device("cpu"), ada=ada)
    assert total.item() == pytest.approx(1 + 1 + 2 * (1 + 1), rel=1e-6)
    assert parts["ada_w/alpha/patches"].item() == pytest.approx(1.0 / parts["loss/alpha/patches"].item(), rel=1e-6)
    plain, p = distill_loss(dataclasses.replace(config, norm="phis"), preds, targets, torch.device("cpu"))
    assert "ada_w/alpha/patches" not in p
    assert plain.item() == pytest.approx(sum((2.0 if k.startswith("loss/beta") else 1.0) * v.item()
                                             for k, v in p.items()), rel=1e-6)
    with pytest.raises(ValueError, match="needs its AdaLoss state"):
        distill_loss(config, preds, targets, torch.device("cpu"))


def test_ada_run_resumes_bit_identical(tiny_root: Path, tmp_path: Path) -> None:
    full = train(_config(tiny_root, tmp_path / "full"))
    part = train(_config(tiny_root, tmp_path / "part"), stop_at=3)
    stopped = torch.load(part / "checkpoint.pt", weights_only=True)
    assert stopped["adaloss"]["steps"] == 3 and set(stopped["adaloss"]["ema"]) == {
        "loss/alpha/patches", "loss/alpha/summary", "loss/beta/patches"}  # beta has no summary token
    train(_config(tiny_root, tmp_path / "part"), resume=True)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert a["adaloss"] == b["adaloss"] and a["adaloss"]["steps"] == 7
    for group in ("student", "heads"):
        for k, v in a[group].items():
            assert torch.equal(v, b[group][k]), f"{group}.{k} differs after resume"
    logs = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (full, part)]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert logs[0][0]["loss"] == pytest.approx(3.0, rel=1e-5)  # three terms, each exactly 1 on step 1
    assert "ada_w/beta/patches" in logs[0][-1]
