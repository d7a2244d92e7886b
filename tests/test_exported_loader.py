"""The one loader of export.safetensors (stages/distill/exported.py): the student's preprocessing travels in
the file, and an export written before that record existed is read by the legacy path (ImageNet mean / std,
patch 16, the config's input size). Files are written here the way stages/distill/export.py writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from stages.distill.config import DistillConfig
from stages.distill.exported import LEGACY_PREPROCESSING, load_exported
from stages.students import HeadTarget
from stages.students.build import build_models, heads_to_json
from stages.students.preprocess import STUDENT_MEAN, STUDENT_STD, preprocessing, student_pixels

TARGETS = [HeadTarget("a", 8, 16, (2, 2)), HeadTarget("b", 0, 12, (4, 4))]


def _write_export(path: Path, *, with_preprocessing: bool, mean=STUDENT_MEAN) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    config = DistillConfig(student="vit_tiny_test", teachers=("a", "b"), root=Path("r"), out_dir=path.parent,
                           img_size=32)
    student, heads = build_models(config, TARGETS)
    tensors = {f"student.{k}": v.contiguous() for k, v in student.state_dict().items()}
    tensors.update({f"heads.{k}": v.contiguous() for k, v in heads.state_dict().items()})
    meta = {"config": json.dumps({**config.to_dict(), "heads": heads_to_json(TARGETS)}), "outputs": "teacher_space"}
    if with_preprocessing:
        meta["preprocessing"] = json.dumps({**preprocessing(img_size=32, patch_size=16), "mean": list(mean)})
    path.write_bytes(save(tensors, metadata=meta))
    return student.eval(), heads.eval()


@pytest.mark.parametrize("with_preprocessing", [True, False], ids=["recorded", "legacy"])
def test_export_loads_with_its_preprocessing(tmp_path, with_preprocessing):
    student, heads = _write_export(tmp_path / "export.safetensors", with_preprocessing=with_preprocessing)
    model = load_exported(tmp_path)  # the run folder holding the file
    assert model.input_mean == STUDENT_MEAN and model.input_std == STUDENT_STD
    assert (model.img_size, model.patch_size) == (32, 16) and model.adaptor_names == ["a", "b"]
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x_BCHW = model.pixels(images)
    torch.testing.assert_close(x_BCHW, student_pixels(torch.from_numpy(images), device="cpu"))
    with torch.no_grad():
        out, want = model(x_BCHW), heads(student(x_BCHW))
    torch.testing.assert_close(out.adaptors["a"].features_BhwC, want["a"][1])
    assert out.adaptors["b"].summary_BC is None


def test_recorded_preprocessing_is_what_pixels_applies(tmp_path):
    _write_export(tmp_path / "export.safetensors", with_preprocessing=True, mean=(0.5, 0.5, 0.5))
    model = load_exported(tmp_path / "export.safetensors")
    assert model.input_mean == (0.5, 0.5, 0.5)
    x = model.pixels(np.full((1, 32, 32, 3), 255, np.uint8))
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([0.5 / s for s in STUDENT_STD]))
    assert LEGACY_PREPROCESSING["mean"] == list(STUDENT_MEAN)  # what exports before the record were trained with


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(save({"w": torch.zeros(1)}, metadata={"outputs": "normalized"}))
    with pytest.raises(ValueError, match="is not a student export"):
        load_exported(tmp_path / "x.safetensors")
