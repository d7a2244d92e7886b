"""`pipeline corpus --layout imagefolder|ade20k|voc|depth`: datasets in their released layouts (drawn with PIL
here, tests/dataset_builders.py) become manifests with labels, annotation paths, class names and splits;
a dataset that does not match its layout is one clear error naming the file and what was expected."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from stages.corpus.build_manifest import build_manifest
from stages.corpus.layouts import VOC_CLASSES, LayoutError
from store_schema.manifest import read_manifest, manifest_schema
from tests.dataset_builders import build_ade20k, build_depth, build_imagefolder, build_voc

runner = CliRunner()


def test_imagefolder_labels_splits_and_class_names(tmp_path):
    src = build_imagefolder(tmp_path / "src")
    (src / "val" / "red" / "broken.png").write_bytes(b"not a png")
    m = build_manifest(src, out_dir=tmp_path / "colours", dataset_layout="imagefolder")
    d = m.dataset
    assert d.layout == "imagefolder" and d.name == "colours"
    assert d.classes == ("blue", "green", "red") and d.class_names == ("blue disc", "green disc", "red disc")
    i = m.uris.index("train/green/green_003.png")
    assert m.labels[i] == "green" and m.split[i] == "train" and m.ok_N[i]
    bad = m.uris.index("val/red/broken.png")
    assert not m.ok_N[bad] and "not an image" in m.reasons[bad] and m.split[bad] == "val"
    assert int((m.split == "train").sum()) == 24 and int((m.split == "val").sum()) == 13


def test_ade20k_masks_and_class_list(tmp_path):
    src = build_ade20k(tmp_path / "ADEChallengeData2016")
    (src / "annotations" / "validation" / "ADE_valid_00002.png").unlink()  # one image without its mask
    m = build_manifest(src, out_dir=tmp_path / "ade", dataset_layout="ade20k")
    assert m.dataset.classes == ("rectangle;box", "ellipse", "triangle") and m.dataset.class_names[0] == "rectangle"
    assert m.dataset.mask_offset == 1
    i = m.uris.index("images/training/ADE_train_00003.jpg")
    assert m.split[i] == "train" and m.mask_uris[i] == "annotations/training/ADE_train_00003.png"
    assert m.dataset_path("mask_uri", i).is_file()
    j = m.uris.index("images/validation/ADE_valid_00002.jpg")
    assert not m.ok_N[j] and "no annotation" in m.reasons[j]


def test_voc_lists_and_palette_masks(tmp_path):
    src = build_voc(tmp_path / "VOC2012")
    m = build_manifest(src, out_dir=tmp_path / "voc", dataset_layout="voc")
    assert m.dataset.classes == VOC_CLASSES and m.num_images == 10 and m.ok_N.all()
    assert sorted(set(m.split)) == ["train", "val"]


def test_depth_pairs_scale_and_normals(tmp_path):
    src = build_depth(tmp_path / "nyu")
    m = build_manifest(src, out_dir=tmp_path / "nyu_root", dataset_layout="depth")
    assert m.dataset.depth_scale == 0.001 and m.dataset.normals == "dataset" and m.ok_N.all()
    assert m.depth_uris[0].startswith("train/depth/") and m.normals_uris[0].startswith("train/normals/")
    src2 = build_depth(tmp_path / "nyu2", normals=False)
    assert build_manifest(src2, out_dir=tmp_path / "r2", dataset_layout="depth").dataset.normals == "from depth"


def test_plain_manifest_keeps_its_schema(tmp_path):
    src = build_imagefolder(tmp_path / "src")
    m = build_manifest(src, out_dir=tmp_path / "plain")
    assert m.dataset is None and m.labels is None
    assert m.table.schema.remove_metadata().equals(manifest_schema(1))


def _error(tmp_path, src, layout_name):
    result = runner.invoke(app, ["corpus", str(src), "--out", str(tmp_path / "out"), "--layout", layout_name])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    return lines[0]


def test_missing_annotations_folder(tmp_path):
    src = build_ade20k(tmp_path / "ade")
    import shutil
    shutil.rmtree(src / "annotations")
    line = _error(tmp_path, src, "ade20k")
    assert "annotations is missing" in line and "annotations/{training,validation}/*.png" in line


def test_mask_size_differs_from_image(tmp_path):
    src = build_ade20k(tmp_path / "ade")
    path = src / "annotations" / "training" / "ADE_train_00001.png"
    Image.fromarray(np.zeros((10, 12), np.uint8), mode="L").save(path)
    line = _error(tmp_path, src, "ade20k")
    assert "ADE_train_00001.png" in line and "12x10 differs from its image" in line and "expected the same size" in line


def test_class_ids_beyond_the_class_list(tmp_path):
    src = build_voc(tmp_path / "voc")
    path = src / "SegmentationClass" / "2007_val_0001.png"
    mask = np.array(Image.open(path))
    mask[5, 5] = 42
    Image.fromarray(mask, mode="L").save(path)
    line = _error(tmp_path, src, "voc")
    assert "2007_val_0001.png" in line and "class ids [42] are beyond the 21 classes" in line and "0..20 or 255" in line


def test_depth_without_a_scale(tmp_path):
    src = build_depth(tmp_path / "nyu")
    (src / "depth_meta.json").write_text(json.dumps({"intrinsics": None}))
    line = _error(tmp_path, src, "depth")
    assert "depth_meta.json" in line and "depth_scale" in line
    (src / "depth_meta.json").unlink()
    assert "depth needs a scale" in _error(tmp_path, src, "depth")


def test_depth_png_must_be_sixteen_bit(tmp_path):
    src = build_depth(tmp_path / "nyu")
    Image.new("L", (48, 48), 3).save(src / "val" / "depth" / "0002.png")
    line = _error(tmp_path, src, "depth")
    assert "0002.png" in line and "expected a 16-bit depth PNG" in line


def test_val_class_not_in_train_and_unknown_layout(tmp_path):
    src = build_imagefolder(tmp_path / "src")
    (src / "val" / "purple").mkdir()
    line = _error(tmp_path, src, "imagefolder")
    assert "purple" in line and "not one of the 3 train classes" in line
    line = _error(tmp_path, src, "coco")
    assert "unknown layout 'coco'" in line and "imagefolder" in line and "ade20k" in line


def test_cli_prints_the_dataset_summary(tmp_path):
    src = build_imagefolder(tmp_path / "src")
    result = runner.invoke(app, ["corpus", str(src), "--out", str(tmp_path / "colours"), "--layout", "imagefolder"])
    assert result.exit_code == 0, result.output
    assert "dataset 'colours' (imagefolder): 3 classes; ok images: train 24, val 12" in result.output
    with pytest.raises(LayoutError, match="train is missing"):
        build_manifest(tmp_path / "colours", out_dir=tmp_path / "x", dataset_layout="imagefolder")
    assert read_manifest(tmp_path / "colours" / "manifest.parquet").dataset.name == "colours"
