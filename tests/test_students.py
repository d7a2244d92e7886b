"""Registry-driven contract tests for the student trunks (ViT and E-RADIO).

Every registered student is built on the meta device (no memory, no init cost) and its output shapes are
checked; the tiny test sizes are also run for real (dtype, finite values, gradients).
"""

from __future__ import annotations

import pytest
import torch

from stages.students import HeadTarget, Student, StudentOutput, TeacherHeads, build_student, student_names
from stages.students.registry import student_max_summary_tokens
from stages.students.vit import ViTStudent

TINY = ["vit_tiny_test", "eradio_tiny_test"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_registry_lists_both_families_and_sizes() -> None:
    names = student_names()
    assert names == sorted(names)
    for name in ["vit_b16", "vit_l16", "vit_h16", *TINY]:
        assert name in names
    for size in ["xt", "t", "s", "b", "l"]:
        assert f"eradio_{size}" in names


def test_unknown_student_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown student 'vit_x'.*eradio_l.*vit_b16"):
        build_student("vit_x", img_size=64)


@pytest.mark.parametrize("name", student_names())
def test_every_student_honours_contract_shapes(name: str) -> None:
    with torch.device("meta"):
        student = build_student(name, img_size=224)
        out = student(torch.empty(2, 3, 224, 160))
    assert isinstance(student, Student)
    assert isinstance(out, StudentOutput)
    assert student.stride == 16 and student.img_size == 224
    assert out.summary_BKC.shape == (2, student.num_summary_tokens, student.embed_dim)
    assert out.features_BhwC.shape == (2, 224 // 16, 160 // 16, student.embed_dim)


@pytest.mark.parametrize("name", TINY)
def test_tiny_students_forward_finite(name: str) -> None:
    student = build_student(name, img_size=64)
    out = student(torch.randn(2, 3, 64, 96))
    assert out.summary_BKC.dtype == torch.float32 and out.features_BhwC.dtype == torch.float32
    assert out.features_BhwC.shape == (2, 4, 6, student.embed_dim)
    assert torch.isfinite(out.summary_BKC).all() and torch.isfinite(out.features_BhwC).all()
    assert out.features_BhwC.std() > 0


def test_vit_several_cls_tokens_are_summary_and_not_features() -> None:
    student = build_student("vit_tiny_test", img_size=64, num_summary_tokens=3)
    assert student.num_summary_tokens == 3 and student.model.num_prefix_tokens == 3
    x = torch.randn(2, 3, 64, 64)
    out = student(x)
    assert out.summary_BKC.shape == (2, 3, 64)
    tokens_BNC = student.model.forward_features(x)
    assert tokens_BNC.shape[1] == 3 + 16
    torch.testing.assert_close(out.summary_BKC, tokens_BNC[:, :3])
    torch.testing.assert_close(out.features_BhwC.reshape(2, 16, 64), tokens_BNC[:, 3:])
    # the three summary tokens are distinct learned tokens, not copies
    assert not torch.allclose(out.summary_BKC[:, 0], out.summary_BKC[:, 1])


def test_vit_any_timm_name_and_patch_check() -> None:
    student = ViTStudent("vit_small_patch16_224", img_size=32, depth=1)
    assert student.embed_dim == 384
    assert student(torch.randn(1, 3, 32, 48)).features_BhwC.shape == (1, 2, 3, 384)
    with pytest.raises(ValueError, match="patch size"):
        ViTStudent("vit_small_patch14_dinov2", img_size=112, depth=1)
    with pytest.raises(ValueError, match="multiples of 16"):
        student(torch.randn(1, 3, 40, 48))


def test_eradio_refuses_several_summary_tokens() -> None:
    with pytest.raises(ValueError, match="one summary token"):
        build_student("eradio_tiny_test", img_size=64, num_summary_tokens=2)


@pytest.mark.parametrize("name", student_names())
def test_max_summary_tokens_is_what_the_family_builds(name: str) -> None:
    cap = student_max_summary_tokens(name)
    assert cap == (1 if name.startswith("eradio_") else None)
    with torch.device("meta"):
        k = 3 if cap is None else cap
        assert build_student(name, img_size=64, num_summary_tokens=k).num_summary_tokens == k
    if cap is not None:
        with pytest.raises(ValueError, match="one summary token"):
            build_student(name, img_size=64, num_summary_tokens=cap + 1)
    with pytest.raises(ValueError, match="unknown student 'nope'"):
        student_max_summary_tokens("nope")


@pytest.mark.parametrize("name", TINY)
def test_gradients_reach_every_parameter(name: str) -> None:
    student = build_student(name, img_size=64, num_summary_tokens=2 if name.startswith("vit") else None)
    targets = [
        HeadTarget("clip", summary_dim=24, patch_dim=24, grid=(3, 3)),
        HeadTarget("dino", summary_dim=16, patch_dim=32, grid=(4, 4)),
        HeadTarget("sam", summary_dim=0, patch_dim=20, grid=(8, 8)),
    ]
    heads = TeacherHeads(student.embed_dim, targets, num_summary_tokens=student.num_summary_tokens)
    preds = heads(student(torch.randn(2, 3, 64, 64)))
    loss = sum(p.square().mean() for s, f in preds.values() for p in (s, f) if p is not None)
    loss.backward()
    for module in (student, heads):
        for pname, param in module.named_parameters():
            assert param.grad is not None, pname
            assert torch.isfinite(param.grad).all(), pname
            assert param.grad.abs().sum() > 0, pname


def test_any_timm_vit_by_name_in_the_timm_namespace():
    from stages.students.registry import build_student, student_max_summary_tokens

    student = build_student("timm:vit_small_patch14_dinov2", img_size=64, num_summary_tokens=2)
    out = student(torch.randn(2, 3, 64, 64))
    assert student.stride == 16 and out.features_BhwC.shape == (2, 4, 4, student.embed_dim)  # patch 16 forced
    assert out.summary_BKC.shape == (2, 2, student.embed_dim)
    assert student_max_summary_tokens("timm:vit_small_patch16_224") is None
    with pytest.raises(ValueError, match="'resnet50' is not a timm ViT"):
        build_student("timm:resnet50", img_size=64)
    with pytest.raises(ValueError, match=r"unknown student 'vit_nope'.*timm:<name>"):
        build_student("vit_nope", img_size=64)
