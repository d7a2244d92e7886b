"""Your own images, first hour (issue 26 item 3): the README's walk-through from a copy of a preset, on images
that are not the demo's and have no labels, every stage really started (real Ray, Zarr, training): probes
that need labels are skipped with a line saying so (`probe_labels: null` is no label probe, even with a
labels file beside the images), runs evaluate and report from another directory, and
symlinked folders and files are followed (a broken link recorded with its reason, never dropped)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from stages.corpus.images import is_image_name
from stages.corpus.walk import matching_files
from store_schema.layout import manifest_path
from store_schema.manifest import read_manifest

pytest_plugins = ["tests.ray_fixture"]
REPO = Path(__file__).resolve().parents[1]


def _pipeline(*args) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"pipeline {' '.join(map(str, args))}:\n{res.output}\n{res.exception!r}"
    return res.output


def _photos(base: Path) -> Path:
    """A user's photo folder: plain images, a symlinked folder, a symlinked file, a broken link, a cycle."""
    rng = np.random.default_rng(7)

    def save(path: Path, i: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = (rng.random((36 + i % 5, 40, 3)) * 255).astype(np.uint8)
        arr[: 12 + i % 9] //= 2  # a little structure
        Image.fromarray(arr).save(path)

    photos = base / "photos"
    for i in range(14):
        save(photos / "trip" / f"IMG_{i:03d}.png", i)
    for i in range(4):
        save(base / "other_disk" / "cats" / f"cat{i}.png", 20 + i)
    save(base / "other_disk" / "best.png", 30)
    (photos / "cats").symlink_to(base / "other_disk" / "cats", target_is_directory=True)
    (photos / "trip" / "best.png").symlink_to(base / "other_disk" / "best.png")
    (photos / "gone.png").symlink_to(base / "deleted.png")  # broken
    (photos / "trip" / "loop").symlink_to(photos, target_is_directory=True)  # a cycle: listed once
    return photos


def _labels_beside(photos: Path) -> Path:
    """probe_labels.csv beside the photo folder (the demo corpus layout): cats against the rest."""
    path = photos.parent / "probe_labels.csv"
    uris = sorted(p.relative_to(photos).as_posix() for p in matching_files(photos, is_image_name))
    path.write_text("uri,label\n" + "".join(f"{u},{'cat' if u.startswith('cats/') else 'other'}\n" for u in uris))
    return path


def test_null_probe_labels_means_no_probe_and_a_left_out_key_looks_beside_the_images(tmp_path):
    """`evaluate.probe_labels: null` is no label probe even with a labels file beside the images; the key left
    out (or `auto`) is that file when it exists; a path is that path."""
    from pipeline.params import parse_params
    from stages.evaluate.config import AUTO_LABELS, probe_labels_file

    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert parse_params({**raw, "evaluate": {**raw["evaluate"], "probe_labels": None}}).evaluate.probe_labels is None
    left_out = {k: v for k, v in raw["evaluate"].items() if k != "probe_labels"}
    assert parse_params({**raw, "evaluate": left_out}).evaluate.probe_labels == AUTO_LABELS
    photos = _photos(tmp_path)
    assert probe_labels_file(AUTO_LABELS, photos)[0] is None
    assert "left out (auto) and there is no probe_labels.csv" in probe_labels_file(AUTO_LABELS, photos)[1]
    beside = _labels_beside(photos)
    labels, why = probe_labels_file(None, photos)
    assert labels is None and "evaluate.probe_labels is null, which runs no label probe" in why
    assert probe_labels_file(AUTO_LABELS, photos) == (beside, "")
    assert probe_labels_file(tmp_path / "mine.csv", photos) == (tmp_path / "mine.csv", "")


def test_symlinked_folders_and_files_are_followed_and_a_cycle_listed_once(tmp_path):
    photos = _photos(tmp_path)
    rel = sorted(p.relative_to(photos).as_posix() for p in matching_files(photos, is_image_name))
    assert rel == sorted(["gone.png", "trip/best.png", *(f"cats/cat{i}.png" for i in range(4)),
                          *(f"trip/IMG_{i:03d}.png" for i in range(14))])


@pytest.mark.slow
def test_own_images_walk_through_from_a_preset_copy(tmp_path, ray_session, monkeypatch):
    photos = _photos(tmp_path)
    project = tmp_path / "my_project"
    project.mkdir()
    shutil.copy(REPO / "configs" / "demo.yaml", project / "params.yaml")
    params = yaml.safe_load((project / "params.yaml").read_text())
    # the README's edits: the images, no labels; small sizes for the test
    params["corpus"].update(source=str(photos), val_fraction=0.3)
    params["extract"].update(teachers=["tiny_dinov2"], text_teachers=[], fidelity_images=2, shard_size=8)
    params["distill"].update(norms=["phis", "mse"], seeds=[0], steps=4, batch_size=4, warmup_steps=1,
                             img_size=32, log_every=1)
    params["evaluate"].update(probe_labels=None, zeroshot_classes=None, seg_masks=None, seg_classes=None,
                              bench_datasets={}, bench_text_datasets=[], batch_size=8)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # a labels file beside the image folder: `probe_labels: null` ignores it; without a params.yaml (auto) it is used
    beside = _labels_beside(photos)
    monkeypatch.chdir(project)

    out = _pipeline("corpus")
    manifest = read_manifest(manifest_path(project / "data" / "store"))
    rows = {u: (bool(ok), reason) for u, ok, reason in zip(manifest.uris, manifest.ok_N, manifest.reasons)}
    assert manifest.num_images == 20 and rows["cats/cat0.png"][0] and rows["trip/best.png"][0], out
    assert not rows["gone.png"][0] and "broken symbolic link" in rows["gone.png"][1]
    _pipeline("extract", "--teacher", "tiny_dinov2", "--no-progress")
    _pipeline("views")
    for norm in ("phis", "mse"):
        _pipeline("distill", "--sweep", "--norm", norm, "--seed", "0")
    out = _pipeline("evaluate", "runs/phis-seed0", "runs/mse-seed0")
    assert "probe: skipped (no labels: evaluate.probe_labels is null, which runs no label probe" in out, out
    assert "zero-shot: skipped (no zero-shot class file given)" in out
    assert "segmentation: skipped (no segmentation masks folder / class file given)" in out
    out = _pipeline("report")
    text = (project / "reports" / "sweep" / "report.md").read_text()
    assert "Probe: not evaluated (no labels)." in text and "**Teacher MSE**" in text
    assert "| phis | phis |" in text and "| mse | mse |" in text

    # from any other directory: the runs recorded their store root, so nothing "moved"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runs = [project / "runs" / "phis-seed0", project / "runs" / "mse-seed0"]
    out = _pipeline("evaluate", *runs)  # no params.yaml here: probe_labels auto, the file beside the images
    assert f"labels: {beside})" in out and "probe: skipped" not in out and "moved" not in out, out
    _pipeline("report", *runs, "--out", elsewhere / "rep")
    assert (elsewhere / "rep" / "report.md").is_file()
    assert os.path.isabs(yaml.safe_load((runs[0] / "config.json").read_text())["root"])
