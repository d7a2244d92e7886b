"""Per-teacher heads (AM-RADIO, arXiv 2312.06709): shapes on different grids, summary-token routing, the
documented resize order, exposed last Linears (folded denormalization) and input validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stages.students import HeadTarget, StudentOutput, TeacherHeads

TARGETS = [
    HeadTarget("clip", summary_dim=24, patch_dim=24, grid=(6, 6)),
    HeadTarget("dino", summary_dim=40, patch_dim=32, grid=(4, 4)),
    HeadTarget("sam", summary_dim=0, patch_dim=20, grid=(8, 6)),
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _student_out(B: int = 2, K: int = 1, C: int = 16, h: int = 4, w: int = 4) -> StudentOutput:
    return StudentOutput(summary_BKC=torch.randn(B, K, C), features_BhwC=torch.randn(B, h, w, C))


def test_shapes_on_different_grids_and_missing_summary() -> None:
    heads = TeacherHeads(16, TARGETS)
    assert heads.hidden == 40  # widest teacher output
    preds = heads(_student_out())
    assert list(preds) == ["clip", "dino", "sam"]
    assert preds["clip"][0].shape == (2, 24) and preds["clip"][1].shape == (2, 6, 6, 24)
    assert preds["dino"][0].shape == (2, 40) and preds["dino"][1].shape == (2, 4, 4, 32)
    assert preds["sam"][0] is None and preds["sam"][1].shape == (2, 8, 6, 20)
    assert "sam" not in heads.summary_heads
    for summary, patches in preds.values():
        assert torch.isfinite(patches).all() and (summary is None or torch.isfinite(summary).all())


def test_head_mlp_layout_and_hidden_override() -> None:
    heads = TeacherHeads(16, TARGETS, hidden=8)
    mlp = heads.patch_heads["dino"]
    assert [type(m) for m in mlp] == [torch.nn.Linear, torch.nn.LayerNorm, torch.nn.GELU, torch.nn.Linear]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[-1].out_features) == (16, 8, 32)


def test_summary_head_i_reads_token_min_i_k_minus_1() -> None:
    targets = [
        HeadTarget("a", summary_dim=8, patch_dim=8, grid=(4, 4)),
        HeadTarget("nosum", summary_dim=0, patch_dim=8, grid=(4, 4)),
        HeadTarget("b", summary_dim=8, patch_dim=8, grid=(4, 4)),
        HeadTarget("c", summary_dim=8, patch_dim=8, grid=(4, 4)),
    ]
    heads = TeacherHeads(16, targets, num_summary_tokens=2).eval()
    assert heads.summary_token == {"a": 0, "b": 1, "c": 1}
    out = _student_out(K=2)
    before = heads(out)
    out.summary_BKC[:, 1] += torch.randn(2, 16)
    after = heads(out)
    torch.testing.assert_close(after["a"][0], before["a"][0])
    assert not torch.allclose(after["b"][0], before["b"][0])
    assert not torch.allclose(after["c"][0], before["c"][0])


def test_feature_mlp_runs_on_student_grid_then_resizes() -> None:
    heads = TeacherHeads(16, TARGETS)
    out = _student_out()
    preds = heads(out)
    # same grid: no resize
    torch.testing.assert_close(preds["dino"][1], heads.patch_heads["dino"](out.features_BhwC))
    # other grid: the MLP output, bilinearly resized
    mlp_BChw = heads.patch_heads["sam"](out.features_BhwC).permute(0, 3, 1, 2)
    expected_BChw = F.interpolate(mlp_BChw, size=(8, 6), mode="bilinear", align_corners=False)
    expected_BhwC = expected_BChw.permute(0, 2, 3, 1)
    torch.testing.assert_close(preds["sam"][1], expected_BhwC)


def test_last_linears_fold_an_affine_map_exactly() -> None:
    heads = TeacherHeads(16, TARGETS)
    out = _student_out()
    summary_lin, patch_lin = heads.last_linears("clip")
    assert summary_lin is heads.summary_heads["clip"][-1] and patch_lin is heads.patch_heads["clip"][-1]
    assert heads.last_linears("sam")[0] is None
    before_summary, before_patches = heads(out)["clip"]
    # fold y -> y A^T + c into both Linears; holds through the bilinear resize (6x6 from 4x4)
    A_DD, c_D = torch.randn(24, 24), torch.randn(24)
    with torch.no_grad():
        for lin in (summary_lin, patch_lin):
            lin.weight.copy_(A_DD @ lin.weight)
            lin.bias.copy_(lin.bias @ A_DD.T + c_D)
    after_summary, after_patches = heads(out)["clip"]
    torch.testing.assert_close(after_summary, before_summary @ A_DD.T + c_D, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after_patches, before_patches @ A_DD.T + c_D, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown teacher 'x'.*clip"):
        heads.last_linears("x")


def test_input_validation() -> None:
    heads = TeacherHeads(16, TARGETS)
    with pytest.raises(ValueError, match="built for 16"):
        heads(_student_out(C=8))
    with pytest.raises(ValueError, match="2 summary tokens"):
        heads(_student_out(K=2))
    with pytest.raises(ValueError, match="duplicate"):
        TeacherHeads(16, [TARGETS[0], TARGETS[0]])
    with pytest.raises(ValueError, match="at least one"):
        TeacherHeads(16, [])
    with pytest.raises(ValueError, match="no '.'"):
        TeacherHeads(16, [HeadTarget("a.b", 0, 8, (2, 2))])
    with pytest.raises(ValueError, match="invalid head target"):
        TeacherHeads(16, [HeadTarget("a", 0, 0, (2, 2))])


def test_gradients_reach_every_head_parameter() -> None:
    heads = TeacherHeads(16, TARGETS, num_summary_tokens=2)
    out = _student_out(K=2)
    out.features_BhwC.requires_grad_(True)
    preds = heads(out)
    loss = sum(p.square().mean() for s, f in preds.values() for p in (s, f) if p is not None)
    loss.backward()
    for name, param in heads.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert torch.isfinite(out.features_BhwC.grad).all()


def test_downsampling_is_area_pooling_and_every_token_gets_gradient() -> None:
    """32x32 student grid -> 8x8 teacher grid: each teacher cell is the mean of its 4x4 student block
    (hand-computed), and every student token receives gradient (bilinear would leave 768 of 1024 without)."""
    from stages.students.heads import resize_grid

    x_BhwC = torch.randn(1, 32, 32, 3, requires_grad=True)
    y_BhwC = resize_grid(x_BhwC, (8, 8))
    expected = x_BhwC.detach().reshape(1, 8, 4, 8, 4, 3).mean(dim=(2, 4))
    torch.testing.assert_close(y_BhwC, expected)
    y_BhwC.sum().backward()
    assert int((x_BhwC.grad.abs().sum(-1) > 0).sum()) == 32 * 32
    torch.testing.assert_close(x_BhwC.grad, torch.full_like(x_BhwC, 1 / 16))
    # upsampling stays bilinear; a mixed resize (one side up, one down) still has weights summing to one
    z_BChw = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(resize_grid(z_BChw.permute(0, 2, 3, 1), (8, 8)).permute(0, 3, 1, 2),
                               F.interpolate(z_BChw, size=(8, 8), mode="bilinear", align_corners=False))
    ones = torch.ones(1, 4, 8, 2)
    torch.testing.assert_close(resize_grid(ones, (6, 3)), torch.ones(1, 6, 3, 2))


def test_fold_is_exact_through_area_downsampling() -> None:
    heads = TeacherHeads(16, [HeadTarget("t", summary_dim=0, patch_dim=8, grid=(2, 2))])
    out = _student_out(h=8, w=8)
    before = heads(out)["t"][1]
    A_DD, c_D = torch.randn(8, 8), torch.randn(8)
    lin = heads.last_linears("t")[1]
    with torch.no_grad():
        lin.weight.copy_(A_DD @ lin.weight)
        lin.bias.copy_(lin.bias @ A_DD.T + c_D)
    torch.testing.assert_close(heads(out)["t"][1], before @ A_DD.T + c_D, rtol=1e-4, atol=1e-4)
