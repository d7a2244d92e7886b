"""Student initialization (stages/students/weights.py): random, timm's pretrained weights through the hub
cache (as teachers find theirs, never downloaded, never a silent fallback), or a local file whose sha256 the
run records. The PHI-S ablations (arXiv 2410.01680) start from timm's pretrained ViTs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from pipeline.cli import app
from stages.distill.config import DistillConfig
from stages.distill.train import train
from stages.students.contract import StudentOptions
from stages.students.registry import build_student, student_pretrained_name
from stages.students.weights import load_student_weights, resample_grid_embed, resolve_student_weights
from stages.teachers.errors import MissingWeightsError
from test_distill_loader import make_tiny_stores
from test_teacher_weights import _put_in_hub_cache
from test_teacher_weights import offline_hub as _offline_hub  # noqa: F401  (autouse: an empty, offline hub cache)

torch.set_num_threads(1)
TINY_TIMM = "timm:vit_tiny_patch16_224"  # a real timm ViT with published weights (5.7 M parameters)


@pytest.fixture
def offline_hub(request: pytest.FixtureRequest) -> Path:
    """The empty hub cache of test_teacher_weights' autouse fixture (network refused)."""
    return request.getfixturevalue("_offline_hub")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stores(tmp_path_factory.mktemp("sw") / "store", teachers=("alpha", "beta"))


def _timm_weights() -> dict[str, torch.Tensor]:
    """What timm's hub file for vit_tiny_patch16_224 holds: a 224 px model with its 1000-class head."""
    torch.manual_seed(3)
    return {k: v.contiguous() for k, v in timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict().items()}


def test_pretrained_without_the_weights_names_the_hub_id_and_the_cache(offline_hub: Path) -> None:
    name = student_pretrained_name("vit_b16")
    assert name == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    with pytest.raises(MissingWeightsError) as err:
        resolve_student_weights("vit_b16", "pretrained", pretrained_name=name, seed=0)
    text = str(err.value)
    assert "student 'vit_b16'" in text and "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k" in text
    assert str(offline_hub) in text and "--student-weights PATH" in text
    with pytest.raises(ValueError, match="has no timm pretrained weights"):
        resolve_student_weights("eradio_xt", "pretrained", pretrained_name=student_pretrained_name("eradio_xt"), seed=0)


def test_cli_stops_with_one_error_before_writing_a_run(tiny_root: Path, tmp_path: Path, offline_hub: Path) -> None:
    result = CliRunner().invoke(app, ["distill", "--teachers", "alpha,beta", "--root", str(tiny_root), "--out",
                                      str(tmp_path / "runs"), "--student", "vit_b16", "--student-weights", "pretrained",
                                      "--steps", "2", "--img-size", "32", "--batch-size", "2"])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k" in errors[0]
    assert str(offline_hub) in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "runs" / "phis").exists()  # nothing written


@pytest.mark.parametrize("cpe_grid", [0, 8])
def test_pretrained_timm_weights_from_the_hub_cache_are_adapted(offline_hub: Path, cpe_grid: int) -> None:
    repo = timm.models.get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id
    ckpt = _timm_weights()
    save_file(ckpt, str(_put_in_hub_cache(offline_hub, repo, "model.safetensors")))
    init = resolve_student_weights(TINY_TIMM, "pretrained", pretrained_name=student_pretrained_name(TINY_TIMM), seed=0)
    assert init.source == "hub" and init.id == "timm:vit_tiny_patch16_224"
    student = build_student(TINY_TIMM, img_size=64, num_summary_tokens=2, options=StudentOptions(cpe_grid=cpe_grid))
    reg_before = student.model.reg_token.detach().clone()
    load_student_weights(student, init)
    sd = student.state_dict()
    for key in ("patch_embed.proj.weight", "blocks.11.mlp.fc2.weight", "norm.weight", "cls_token"):
        torch.testing.assert_close(sd[f"model.{key}"], ckpt[key], rtol=0, atol=0)
    torch.testing.assert_close(sd["model.reg_token"], reg_before, rtol=0, atol=0)  # not in the checkpoint: kept
    assert not any(k.startswith("model.head.") and v.numel() > 0 for k, v in sd.items())
    grid = ckpt["pos_embed"][:, 1:]
    if cpe_grid:
        torch.testing.assert_close(sd["cpe.table_1NC"], resample_grid_embed(grid, 8))
        torch.testing.assert_close(sd["prefix_pos_1KC"][:, :1], ckpt["pos_embed"][:, :1])
    else:
        torch.testing.assert_close(sd["model.pos_embed"][:, 2:], resample_grid_embed(grid, 4))
        torch.testing.assert_close(sd["model.pos_embed"][:, :1], ckpt["pos_embed"][:, :1])
    out = student(torch.randn(1, 3, 64, 64))
    assert out.features_BhwC.shape == (1, 4, 4, 192) and torch.isfinite(out.features_BhwC).all()


def test_a_file_that_does_not_fit_is_refused_naming_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3), "something.else": torch.zeros(2)}, str(path))
    init = resolve_student_weights("vit_tiny_test", str(path), pretrained_name=None, seed=0)
    with pytest.raises(ValueError, match="do not fit student ViTStudent: unexpected keys .*something.else"):
        load_student_weights(build_student("vit_tiny_test", img_size=64), init)


def test_a_local_file_is_loaded_and_its_sha256_recorded(tiny_root: Path, tmp_path: Path) -> None:
    """A previous run's student as the start of a new one (its own layout), sha256 in config.json."""
    base = dict(student="vit_tiny_test", teachers=("alpha", "beta"), root=tiny_root, img_size=32, batch_size=4,
                warmup_steps=1, log_every=1, lr=1e-3)
    first = train(DistillConfig(**base, out_dir=tmp_path / "first", steps=2))
    weights = {k: v.contiguous() for k, v in torch.load(first / "checkpoint.pt", weights_only=True)["student"].items()}
    path = tmp_path / "student.safetensors"
    save_file(weights, str(path))
    run = train(DistillConfig(**base, out_dir=tmp_path / "second", steps=1, student_weights=str(path)))
    init = json.loads((run / "config.json").read_text())["student_init"]
    assert init == {"source": "local", "id": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    # what the second run started from: the file's weights, exactly
    student = build_student("vit_tiny_test", img_size=32, num_summary_tokens=1)  # beta has no summary
    load_student_weights(student, resolve_student_weights("vit_tiny_test", str(path), pretrained_name=None, seed=0))
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)
    random_run = json.loads((first / "config.json").read_text())["student_init"]
    assert random_run == {"source": "random", "id": "random-init:seed=0", "sha256": None}
