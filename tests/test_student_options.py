"""ViT student options (stages/students/cpe.py, vit.py; AM-RADIO arXiv 2312.06709 §3 / App. C): cropped
position embeddings, windowed attention, activation checkpointing, and torch.compile of the training step.
Checkpointing and compile must not change what a run computes (the same losses, to float tolerance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stages.distill.config import DistillConfig
from stages.distill.train import train
from stages.students.contract import StudentOptions
from stages.students.cpe import CroppedPosEmbed, from_windows, global_blocks, to_windows
from stages.students.registry import build_student
from test_distill_loader import make_tiny_stores

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stores(tmp_path_factory.mktemp("opts") / "store", teachers=("alpha", "beta"))


def _losses(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k.startswith(("loss", "grad_norm"))}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def _config(root: Path, out: Path, **kw) -> DistillConfig:
    base = dict(student="vit_tiny_test", teachers=(), partitions=("32:4:alpha", "64:2:beta"), root=root, out_dir=out,
                steps=3, lr=2e-3, warmup_steps=1, log_every=1, seed=2)
    return DistillConfig(**{**base, **kw})


def _assert_same_losses(a: list[dict], b: list[dict], rel: float) -> None:
    assert len(a) == len(b) and a
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=rel, abs=1e-7), k


def test_cpe_at_evaluation_is_the_plain_position_embedding_when_the_table_is_the_grid() -> None:
    """A CPE table holding the plain embedding's grid, interpolated to that same grid (eval), is the plain
    embedding: the student computes exactly what the student without CPE computes."""
    torch.manual_seed(0)
    plain = build_student("vit_tiny_test", img_size=64, num_summary_tokens=2).eval()
    cpe = build_student("vit_tiny_test", img_size=64, num_summary_tokens=2, options=StudentOptions(cpe_grid=4)).eval()
    sd = plain.state_dict()
    pos = sd.pop("model.pos_embed")
    cpe.load_state_dict({**sd, "prefix_pos_1KC": pos[:, :2], "cpe.table_1NC": pos[:, 2:]})
    x = torch.randn(2, 3, 64, 64)
    a, b = plain(x), cpe(x)
    torch.testing.assert_close(b.features_BhwC, a.features_BhwC, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.summary_BKC, a.summary_BKC, rtol=1e-5, atol=1e-6)


def test_cpe_crops_per_sample_in_training_inside_the_table() -> None:
    torch.manual_seed(1)
    cpe = CroppedPosEmbed(grid=16, dim=8)
    pos_BNC = cpe(6, 5, 7)
    assert pos_BNC.shape == (6, 35, 8)
    assert not torch.allclose(pos_BNC[0], pos_BNC[1])  # each sample its own crop
    table = cpe.table_1NC.detach()
    assert pos_BNC.min() >= table.min() - 1e-6 and pos_BNC.max() <= table.max() + 1e-6  # bilinear: convex
    cpe.eval()
    assert cpe(6, 16, 16).shape == (1, 256, 8)
    torch.testing.assert_close(cpe(6, 16, 16), table)  # the whole table at its own size
    pos_BNC.sum().backward()
    assert cpe.table_1NC.grad is not None and cpe.table_1NC.grad.abs().sum() > 0


def test_windowed_attention() -> None:
    x = torch.randn(2, 4, 6, 3)
    assert torch.equal(from_windows(to_windows(x, 2), 2, 4, 6), x)
    with pytest.raises(ValueError, match="not divisible by the window 4"):
        to_windows(x, 4)
    assert global_blocks(12, 4) == {3, 7, 11} and global_blocks(2, 4) == {1}
    torch.manual_seed(0)
    student = build_student("vit_tiny_test", img_size=64, num_summary_tokens=1,
                            options=StudentOptions(window_size=2, window_min_size=64))
    assert student.windowed_for(64) and not student.windowed_for(32)
    x = torch.randn(2, 3, 64, 64)
    student.train()
    windowed, full = student(x, windowed=True), student(x)
    assert not torch.allclose(windowed.features_BhwC, full.features_BhwC)
    student.eval()  # evaluation always attends globally
    torch.testing.assert_close(student(x, windowed=True).features_BhwC, student(x).features_BhwC)


def test_grad_checkpointing_gives_the_same_losses(tiny_root: Path, tmp_path: Path) -> None:
    base = train(_config(tiny_root, tmp_path / "base", cpe_grid=8, window_size=2, window_min_size=64))
    ckpt = train(_config(tiny_root, tmp_path / "ckpt", cpe_grid=8, window_size=2, window_min_size=64,
                         grad_checkpointing=True))
    _assert_same_losses(_losses(base), _losses(ckpt), rel=1e-6)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_gives_the_same_losses(tiny_root: Path, tmp_path: Path, backend: str) -> None:
    """inductor compiles C++ kernels with the machine's gcc; aot_eager traces without code generation."""
    kw = {"partitions": ("32:4:alpha,beta",)} if backend == "inductor" else {}  # one graph: minutes of compiling
    base = train(_config(tiny_root, tmp_path / "base", **kw))
    compiled = train(_config(tiny_root, tmp_path / "compiled", torch_compile=backend, **kw))
    _assert_same_losses(_losses(base), _losses(compiled), rel=1e-4)
