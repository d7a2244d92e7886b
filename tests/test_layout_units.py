"""Evaluation datasets (`pipeline corpus --layout`) go through the corpus build's units like any corpus: the
same manifest bytes in one unit, in many, and on Ray; annotations checked in the unit's worker (a dataset
off its layout is the same one error from a Ray task); resumable parts, a changed mask rebuilding its unit;
a manifest with both tar-member ("located") and dataset columns reads back both."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stages.corpus.build_manifest import build_corpus
from stages.corpus.layouts import LayoutError
from store_schema.manifest import (DATASET_COLUMNS, DatasetInfo, ManifestRow, ManifestWriter, ViewSpec,
                                   manifest_metadata, read_manifest, write_manifest)
from tests.dataset_builders import build_ade20k, build_imagefolder

pytest_plugins = ["tests.ray_fixture"]


def _bytes(root) -> bytes:
    return (root / "manifest.parquet").read_bytes()


def test_layout_dataset_in_units_and_on_ray_gives_one_manifest(tmp_path, ray_session):
    src = build_ade20k(tmp_path / "ADEChallengeData2016")  # 12 training + 6 validation images
    (src / "annotations" / "validation" / "ADE_valid_00002.png").unlink()  # recorded, not fatal
    one = build_corpus(src, out_dir=tmp_path / "one" / "ade", workers=0, dataset_layout="ade20k")
    units = build_corpus(src, out_dir=tmp_path / "units" / "ade", workers=0, files_per_task=4,
                         dataset_layout="ade20k")
    on_ray = build_corpus(src, out_dir=tmp_path / "ray" / "ade", workers=2, files_per_task=4,
                          dataset_layout="ade20k")
    assert one.units == 1 and units.units == 5 and on_ray.units == 5
    assert on_ray.parts.engine == "Ray" and on_ray.parts.workers.isdisjoint(units.parts.workers)
    assert _bytes(tmp_path / "one" / "ade") == _bytes(tmp_path / "units" / "ade") == _bytes(tmp_path / "ray" / "ade")
    m = on_ray.manifest
    assert m.dataset.layout == "ade20k" and m.dataset.name == "ade" and m.val_fraction == 0.0
    assert set(DATASET_COLUMNS) <= set(m.table.column_names) and not m.located
    j = m.uris.index("images/validation/ADE_valid_00002.jpg")
    assert not m.ok_N[j] and "no annotation" in m.reasons[j] and m.split[j] == "val"
    assert int(m.ok_N.sum()) == 17 and int((m.split == "train").sum()) == 12
    assert m.dataset_path("mask_uri", 0).is_file()


def test_layout_error_from_a_ray_task_is_the_same_one_line(tmp_path, ray_session):
    src = build_ade20k(tmp_path / "ade")
    Image.fromarray(np.zeros((10, 12), np.uint8), mode="L").save(src / "annotations" / "training" / "ADE_train_00007.png")
    with pytest.raises(LayoutError, match=r"ADE_train_00007.png: size 12x10 differs from its image"):
        build_corpus(src, out_dir=tmp_path / "out", workers=2, files_per_task=3, dataset_layout="ade20k")
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_layout_build_resumes_and_a_changed_annotation_rebuilds_its_unit(tmp_path):
    src = build_ade20k(tmp_path / "ade")
    first = build_corpus(src, out_dir=tmp_path / "root", workers=0, files_per_task=4, dataset_layout="ade20k")
    assert first.parts.built == 5 and first.parts.reused == 0
    again = build_corpus(src, out_dir=tmp_path / "root", workers=0, files_per_task=4, dataset_layout="ade20k")
    assert again.parts.built == 0 and again.parts.reused == 5 and again.manifest.hash == first.manifest.hash
    mask = src / "annotations" / "training" / "ADE_train_00005.png"
    size = Image.open(mask).size
    Image.fromarray(np.full(size[::-1], 2, np.uint8), mode="L").save(mask)  # another valid mask: rechecked
    changed = build_corpus(src, out_dir=tmp_path / "root", workers=0, files_per_task=4, dataset_layout="ade20k")
    assert changed.parts.built == 1 and changed.parts.reused == 4 and changed.stale_parts_removed == 1
    Image.fromarray(np.zeros((3, 3), np.uint8), mode="L").save(mask)  # now off the layout: the unit says so
    with pytest.raises(LayoutError, match="ADE_train_00005.png: size 3x3 differs"):
        build_corpus(src, out_dir=tmp_path / "root", workers=0, files_per_task=4, dataset_layout="ade20k")


def test_plain_build_of_the_same_folder_has_no_dataset_columns(tmp_path):
    src = build_imagefolder(tmp_path / "src")
    plain = build_corpus(src, out_dir=tmp_path / "plain", workers=0, files_per_task=5)
    assert plain.manifest.dataset is None and not set(DATASET_COLUMNS) & set(plain.manifest.table.column_names)
    ds = build_corpus(src, out_dir=tmp_path / "ds", workers=0, files_per_task=5, dataset_layout="imagefolder")
    assert ds.manifest.labels[ds.manifest.uris.index("train/green/green_003.png")] == "green"
    assert ds.manifest.hash != plain.manifest.hash


def test_manifest_with_located_and_dataset_columns_reads_both(tmp_path):
    rows = [ManifestRow(uri=f"s.tar#{i}.jpg", sha256=f"{i:064x}", size_bytes=10, width=8, height=8, mode="RGB",
                        split="val" if i else "train", status="ok", reason="",
                        boxes_V4=np.array([[0.0, 0.0, 1.0, 1.0]]), flips_V=np.zeros(1, bool), shard="s.tar",
                        member=f"{i}.jpg", offset=512 * (2 * i + 1), length=10, label=("a", "b")[i],
                        mask_uri=f"masks/{i}.png" if i else "") for i in range(2)]
    info = DatasetInfo(layout="imagefolder", name="mix", classes=("a", "b"), class_names=("a", "b"))
    path = tmp_path / "manifest.parquet"
    write_manifest(path, rows, view_spec=ViewSpec(), source="s.tar", image_root=".", pixel_limit=10**7,
                   min_side=1, val_fraction=0.0, located=True, dataset=info)
    m = read_manifest(path)
    assert m.located and m.dataset == info and list(m.labels) == ["a", "b"]
    assert m.byte_range(1) == (1536, 10) and m.members[1] == "1.jpg"
    assert m.dataset_path("mask_uri", 0) is None and m.dataset_path("mask_uri", 1) == tmp_path / "masks" / "1.png"
    names = m.table.column_names
    assert names.index("sidecars") < names.index("label")  # located columns, then the dataset's
    with pytest.raises(ValueError, match="go together"):
        ManifestWriter(tmp_path / "x.parquet", num_views=1, located=False, dataset=True,
                       metadata=manifest_metadata(view_spec=ViewSpec(), source="", image_root=".", pixel_limit=1,
                                                  min_side=1, val_fraction=0.0))
