"""`pipeline corpus` and `pipeline demo-corpus` through typer's CliRunner."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from store_schema import layout
from store_schema.manifest import ViewSpec, read_manifest

runner = CliRunner()


def _plain(text: str) -> str:
    """Help text without ANSI codes and box drawing, whitespace collapsed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("command, options", [
    ("corpus", {"--out": "manifest.parquet", "--views": "Views per image", "--view-seed": "Seed of the view",
                "--pixel-limit": "before decoding", "--min-side": "side shorter", "--val-fraction": "val split"}),
    ("demo-corpus", {}),
])
def test_help_describes_every_option(command, options):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    text = _plain(result.output)
    for option, help_fragment in options.items():
        assert option in text and help_fragment in text, (option, text)
    assert ("SOURCE" in text.upper()) if command == "corpus" else ("previous demo export" in text)


def test_top_level_help_lists_commands():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "corpus" in result.output and "demo-corpus" in result.output


def test_corpus_command_writes_manifest(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(4):
        Image.new("RGB", (24, 16), (i * 40, 0, 0)).save(src / f"{i}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    out = tmp_path / "store"
    result = runner.invoke(app, ["corpus", str(src), "--out", str(out), "--views", "3", "--view-seed", "5",
                                 "--min-side", "4", "--val-fraction", "0.5", "--pixel-limit", "1000"])
    assert result.exit_code == 0, result.output
    assert "images: 5  ok: 4  bad: 1" in result.output
    m = read_manifest(layout.manifest_path(out))
    assert str(m.path) in result.output and m.hash in result.output
    assert m.view_spec == ViewSpec(num_views=3, seed=5)
    assert (m.pixel_limit, m.min_side, m.val_fraction) == (1000, 4, 0.5)
    bad = runner.invoke(app, ["corpus", str(tmp_path / "nope"), "--out", str(out)])
    assert bad.exit_code != 0 and "does not exist" in _plain(bad.output)
    bad = runner.invoke(app, ["corpus", str(src), "--out", str(out), "--views", "0"])
    assert bad.exit_code != 0 and "num_views must be >= 1" in _plain(bad.output)


def test_demo_corpus_exports_deterministic_labeled_corpus(tmp_path):
    demo = tmp_path / "demo"
    result = runner.invoke(app, ["demo-corpus", str(demo)])
    assert result.exit_code == 0, result.output
    assert "lfw: 200" in result.output
    images = layout.demo_images_dir(demo)
    photos = sorted(p.name for p in (images / "photos").iterdir())
    assert "astronaut.png" in photos and "coffee.png" in photos and "lfw_subset.npy" not in photos
    modes = {Image.open(images / "photos" / p).mode for p in ("astronaut.png", "camera.png", "horse.png")}
    assert modes == {"RGB", "L", "RGBA"}  # mixed modes, as a real corpus has
    with open(layout.demo_probe_labels_path(demo), newline="") as f:
        labels = list(csv.DictReader(f))
    assert len(labels) == 200 and {r["label"] for r in labels} == {"face", "nonface"}
    assert sum(r["label"] == "face" for r in labels) == 100
    face = np.asarray(Image.open(images / labels[0]["uri"]))
    assert face.shape == (25, 25) and face.dtype == np.uint8 and face.std() > 10  # a real image

    before = {p: p.read_bytes() for p in demo.rglob("*") if p.is_file()}
    assert runner.invoke(app, ["demo-corpus", str(demo)]).exit_code == 0  # re-export: identical
    assert {p: p.read_bytes() for p in demo.rglob("*") if p.is_file()} == before

    out = tmp_path / "store"
    result = runner.invoke(app, ["corpus", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = read_manifest(layout.manifest_path(out))
    assert {r["uri"] for r in labels} <= set(m.uris)
    assert all(m.ok_N[m.uris.index(r["uri"])] for r in labels)
    assert m.num_images == len(photos) + 200 + 48 and m.ok_N.sum() >= m.num_images - 2

    # the random-shapes segmentation set: masks exact by construction (shape pixels = non-white pixels)
    from stages.corpus.demo import SHAPE_CLASSES
    from stages.prompts import read_classes

    assert read_classes(layout.demo_seg_classes_path(demo))[0] == SHAPE_CLASSES
    assert read_classes(layout.demo_zeroshot_classes_path(demo))[0] == ("face", "nonface")
    masks = sorted((layout.demo_seg_masks_dir(demo) / "shapes").iterdir())
    assert len(masks) == 48
    seen = set()
    for mask_path in masks:
        mask = np.asarray(Image.open(mask_path))
        rgb = np.asarray(Image.open(images / "shapes" / mask_path.name))
        assert mask.shape == rgb.shape[:2] and ((mask > 0) == (rgb != 255).any(-1)).all()
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(SHAPE_CLASSES)))

    (demo / "stranger.txt").write_text("not mine")
    bad = runner.invoke(app, ["demo-corpus", str(demo)])
    assert bad.exit_code != 0 and "not part of the demo corpus" in _plain(bad.output)


def _images(folder, n, *, start=0):
    folder.mkdir(exist_ok=True)
    for i in range(start, start + n):
        Image.new("RGB", (24, 16), (i * 40 % 256, 0, 0)).save(folder / f"{i}.png")


def test_corpus_refuses_to_replace_a_manifest_that_stores_were_built_from(tmp_path):
    from stages.teachers.registry import get_teacher_spec, weights_identity
    from store_schema.codecs import CodecSpec
    from store_schema.teacher_store import create_teacher_store

    src, out = tmp_path / "imgs", tmp_path / "store"
    _images(src, 4)
    assert runner.invoke(app, ["corpus", str(src), "--out", str(out)]).exit_code == 0
    before = read_manifest(layout.manifest_path(out))
    spec = get_teacher_spec("tiny_sam")
    create_teacher_store(layout.teacher_store_path(out, "tiny_sam"), spec=spec, weights_identity=weights_identity(spec),
                         manifest=before, shard_size=2, storage_grid=spec.grid, codec=CodecSpec())
    # the same corpus and options give the same bytes: allowed
    assert runner.invoke(app, ["corpus", str(src), "--out", str(out)]).exit_code == 0
    _images(src, 1, start=4)  # the corpus grew: another manifest
    res = runner.invoke(app, ["corpus", str(src), "--out", str(out)])
    text = _plain(res.output)
    assert res.exit_code == 2, res.output
    assert f"{out} holds teacher stores built from its current manifest ({before.hash[:12]}...): tiny_sam" in text
    assert "--out NEW_ROOT" in text and "remove those stores first" in text and "the current manifest is kept" in text
    assert read_manifest(layout.manifest_path(out)).hash == before.hash  # untouched
    # a new root is fine
    assert runner.invoke(app, ["corpus", str(src), "--out", str(tmp_path / "new")]).exit_code == 0


def test_corpus_prints_bad_files_per_reason_and_keeps_urls(tmp_path):
    src = tmp_path / "imgs"
    _images(src, 2)
    for i in range(5):
        (src / f"empty{i}.jpg").write_bytes(b"")
    (src / "text.png").write_text("not an image")
    listing = tmp_path / "list.txt"
    entries = ["imgs/0.png", "imgs/1.png", *[f"imgs/empty{i}.jpg" for i in range(5)], "imgs/text.png",
               "https://example.com/a/b.jpg"]
    listing.write_text("\n".join(entries) + "\n")
    res = runner.invoke(app, ["corpus", str(listing), "--out", str(tmp_path / "store")])
    assert res.exit_code == 0, res.output
    assert "images: 9  ok: 2  bad: 7" in res.output
    lines = res.output.splitlines()
    assert "  5 empty file (0 bytes): imgs/empty0.jpg, imgs/empty1.jpg, imgs/empty2.jpg, ... 2 more" in lines
    assert "  1 not an image (unrecognized format): imgs/text.png" in lines
    assert "  1 web URL (http / https): https://example.com/a/b.jpg" in lines
    m = read_manifest(layout.manifest_path(tmp_path / "store"))
    assert "https://example.com/a/b.jpg" in m.uris  # not folded to https:/example.com
