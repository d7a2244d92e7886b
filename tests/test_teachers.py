"""Registry-driven tests of the teacher adapters (AM-RADIO arXiv 2312.06709 teachers, PHI-S arXiv 2410.01680
scales).

Tiny teachers are built for real (random weights) and checked against the output contract and against
their underlying timm / open_clip model; every real registry entry is built on the meta device (shapes only,
no memory) and checked against its spec and the library's pretrained config. `pipeline teachers` is tested
through typer's CliRunner on a throwaway app.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline.cmd_teachers import register, stored_bytes_per_view, teacher_rows
from stages.teachers.preprocess import to_pixels
from stages.teachers.registry import TEACHERS, build_teacher, get_teacher_spec, teacher_names
from stages.teachers.spec import Family, TeacherOutput, TeacherSpec, WeightsSource

TINY = [n for n, s in TEACHERS.items() if s.weights is WeightsSource.RANDOM]
REAL = [n for n, s in TEACHERS.items() if s.weights is WeightsSource.PRETRAINED]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_teachers() -> dict[str, torch.nn.Module]:
    return {n: build_teacher(get_teacher_spec(n)) for n in TINY}


def _views(spec: TeacherSpec, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, spec.resolution, spec.resolution, 3), dtype=np.uint8)


def test_registry_names_the_papers_teachers_and_tiny_ones() -> None:
    names = teacher_names()
    for size in "sblg":
        assert f"dinov2_{size}" in names and f"dinov2_{size}_reg" in names
    for name in ["clip_h_dfn", "clip_l_openai", "siglip_so400m", "sam_b", "sam_l", "sam_h"]:
        assert name in names
    assert set(TINY) >= {"tiny_dinov2", "tiny_clip", "tiny_sam"}
    assert {TEACHERS[n].family for n in TINY} == set(Family)


def test_unknown_teacher_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown teacher 'dinov3_x'") as e:
        get_teacher_spec("dinov3_x")
    for name in teacher_names():
        assert name in str(e.value)


@pytest.mark.parametrize("name", teacher_names())
def test_spec_survives_json_round_trip(name: str) -> None:
    spec = TEACHERS[name]
    assert TeacherSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("name", TINY)
def test_tiny_teacher_honours_output_contract(name: str, tiny_teachers: dict) -> None:
    spec, teacher = TEACHERS[name], tiny_teachers[name]
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        out = teacher(to_pixels(_views(spec, 3), spec))
    assert isinstance(out, TeacherOutput)
    h, w = spec.grid
    assert out.patches_BhwC.shape == (3, h, w, spec.patch_dim)
    assert out.patches_BhwC.dtype == torch.float32
    assert torch.isfinite(out.patches_BhwC).all()
    if spec.has_summary:
        assert out.summary_BC is not None and out.summary_BC.shape == (3, spec.summary_dim)
        assert out.summary_BC.dtype == torch.float32 and torch.isfinite(out.summary_BC).all()
    else:
        assert out.summary_BC is None
    # Views in a batch are independent: no token leaks across images.
    with torch.no_grad():
        single = teacher(to_pixels(_views(spec, 3)[1:2], spec))
    torch.testing.assert_close(single.patches_BhwC[0], out.patches_BhwC[1], rtol=1e-4, atol=1e-5 * spec.activation_scale)


def test_tiny_dinov2_drops_cls_and_registers(tiny_teachers: dict) -> None:
    spec, teacher = TEACHERS["tiny_dinov2"], tiny_teachers["tiny_dinov2"]
    x = to_pixels(_views(spec, 2), spec)
    with torch.no_grad():
        tokens_BNC = teacher.vit.forward_features(x)
        out = teacher(x)
    h, w = spec.grid
    assert spec.num_prefix_tokens == 5 and tokens_BNC.shape[1] == 5 + h * w
    torch.testing.assert_close(out.summary_BC, tokens_BNC[:, 0] * spec.activation_scale)
    torch.testing.assert_close(out.patches_BhwC.reshape(2, h * w, -1), tokens_BNC[:, 5:] * spec.activation_scale)
    # token (row 0, col 1) is the second patch, not a register
    torch.testing.assert_close(out.patches_BhwC[:, 0, 1], tokens_BNC[:, 6] * spec.activation_scale)


def test_tiny_clip_summary_is_projected_embedding_and_patches_are_tokens(tiny_teachers: dict) -> None:
    spec, teacher = TEACHERS["tiny_clip"], tiny_teachers["tiny_clip"]
    x = to_pixels(_views(spec, 2), spec)
    visual = teacher.visual
    with torch.no_grad():
        out = teacher(x)
        embedding_BC = visual(x)  # open_clip's own forward: ln_post(CLS) @ proj
        x_BNC = visual.transformer(visual._embeds(x))
        tokens_BNC = visual.ln_post(x_BNC)
    s = spec.activation_scale
    assert embedding_BC.shape[1] == spec.summary_dim != spec.patch_dim
    torch.testing.assert_close(out.summary_BC, embedding_BC * s)
    h, w = spec.grid
    assert tokens_BNC.shape[1] == 1 + h * w
    torch.testing.assert_close(out.patches_BhwC.reshape(2, h * w, -1), tokens_BNC[:, 1:] * s)


def test_tiny_sam_features_are_taken_before_the_neck(tiny_teachers: dict) -> None:
    spec, teacher = TEACHERS["tiny_sam"], tiny_teachers["tiny_sam"]
    x = to_pixels(_views(spec, 2), spec)
    with torch.no_grad():
        out = teacher(x)
        neck_BChw = teacher.vit.forward_features(x)
    assert neck_BChw.shape[1] == spec.arch_kwargs["neck_chans"] != spec.patch_dim
    assert out.patches_BhwC.shape[-1] == spec.patch_dim == teacher.vit.embed_dim


def test_tiny_teachers_differ_in_scale_by_orders_of_magnitude(tiny_teachers: dict) -> None:
    stds = {}
    for name in TINY:
        spec = TEACHERS[name]
        with torch.no_grad():
            out = tiny_teachers[name](to_pixels(_views(spec, 4, seed=1), spec))
        stds[name] = out.patches_BhwC.double().std().item()
    assert max(stds.values()) / min(stds.values()) >= 100.0, stds


def test_random_weights_are_reproducible_across_builds() -> None:
    spec = TEACHERS["tiny_sam"]
    x = to_pixels(_views(spec, 2), spec)
    torch.manual_seed(123)  # the global RNG state must not matter, nor be consumed
    state = torch.get_rng_state()
    a = build_teacher(spec)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    b = build_teacher(spec)
    other = build_teacher(dataclasses.replace(spec, name="tiny_sam_other"))  # seed follows the name
    with torch.no_grad():
        pa, pb, po = a(x).patches_BhwC, b(x).patches_BhwC, other(x).patches_BhwC
    assert torch.equal(pa, pb)
    assert not torch.allclose(pa, po)


@pytest.mark.parametrize("name", REAL)
def test_real_spec_matches_its_model_code(name: str) -> None:
    """Build the full-size architecture on the meta device (shapes only) and run a meta forward."""
    spec = TEACHERS[name]
    assert spec.arch_kwargs == {} and spec.activation_scale == 1.0 and spec.weights_id
    teacher = build_teacher(dataclasses.replace(spec, weights=WeightsSource.RANDOM), device="meta")
    out = teacher(torch.empty(2, 3, spec.resolution, spec.resolution, device="meta"))
    h, w = spec.grid
    assert tuple(out.patches_BhwC.shape) == (2, h, w, spec.patch_dim)
    if spec.has_summary:
        assert tuple(out.summary_BC.shape) == (2, spec.summary_dim)
    else:
        assert out.summary_BC is None


@pytest.mark.parametrize("name", REAL)
def test_real_spec_preprocessing_matches_library_pretrained_cfg(name: str) -> None:
    spec = TEACHERS[name]
    if spec.family is Family.OPEN_CLIP:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.weights_id)
        assert cfg, f"open_clip has no {spec.arch}/{spec.weights_id}"
        np.testing.assert_allclose(spec.mean, cfg["mean"])
        np.testing.assert_allclose(spec.std, cfg["std"])
        # weights trained with QuickGELU need the QuickGELU config (else open_clip silently mismatches)
        assert open_clip.get_model_config(spec.arch).get("quick_gelu", False) == cfg.get("quick_gelu", False)
        assert open_clip.get_model_config(spec.arch)["vision_cfg"]["image_size"] == spec.resolution
    else:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(f"{spec.arch}.{spec.weights_id}")
        assert cfg is not None and cfg.hf_hub_id
        np.testing.assert_allclose(spec.mean, cfg.mean)
        np.testing.assert_allclose(spec.std, cfg.std)
        assert cfg.license == spec.license


def test_to_pixels_normalizes_with_spec_mean_std() -> None:
    spec = TEACHERS["tiny_clip"]
    views = np.zeros((2, spec.resolution, spec.resolution, 3), np.uint8)
    views[1] = 255
    x = to_pixels(views, spec)
    assert x.shape == (2, 3, spec.resolution, spec.resolution) and x.dtype == torch.float32
    for c in range(3):
        assert x[0, c].unique().item() == pytest.approx(-spec.mean[c] / spec.std[c], rel=1e-6)
        assert x[1, c].unique().item() == pytest.approx((1 - spec.mean[c]) / spec.std[c], rel=1e-6)
    with pytest.raises(ValueError, match="render views at spec.resolution"):
        to_pixels(np.zeros((1, 10, 10, 3), np.uint8), spec)
    with pytest.raises(ValueError, match="uint8"):
        to_pixels(np.zeros((1, spec.resolution, spec.resolution, 3), np.float32), spec)


def test_stored_bytes_per_view_uses_the_codec_bits() -> None:
    spec = TEACHERS["sam_h"]
    assert stored_bytes_per_view(spec) == round(64 * 64 * 1280 * 11.5 / 8)  # ≈ 7.5 MB, no summary
    assert stored_bytes_per_view(TEACHERS["dinov2_g_reg"]) == round((1536 + 256 * 1536) * 11.5 / 8)


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps typer in multi-command mode, as in the real CLI
    def _noop() -> None:
        pass

    return app


def test_cli_teachers_lists_the_registry() -> None:
    result = CliRunner().invoke(_app(), ["teachers"])
    assert result.exit_code == 0, result.output
    for name in teacher_names():
        assert name in result.output
    assert "ViT-H-14-378-quickgelu" in result.output and "64x64" in result.output


def test_cli_teachers_json_rows_and_unknown_name() -> None:
    runner = CliRunner()
    result = runner.invoke(_app(), ["teachers", "tiny_sam", "sam_h", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows == teacher_rows(names=["tiny_sam", "sam_h"])
    assert [r["name"] for r in rows] == ["tiny_sam", "sam_h"]
    assert rows[0]["available"] == "random" and rows[0]["grid"] == "8x8" and rows[0]["summary_dim"] == 0
    assert rows[1]["weights"] == "pretrained:sa1b" and rows[1]["bytes_per_view"] == stored_bytes_per_view(TEACHERS["sam_h"])
    bad = runner.invoke(_app(), ["teachers", "nope"])
    assert bad.exit_code != 0 and "tiny_dinov2" in bad.output
    assert "--format" in runner.invoke(_app(), ["teachers", "--help"]).output
