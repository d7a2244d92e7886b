"""Small evaluation datasets in their released layouts, drawn with PIL in a test's tmp folder (never through
the project's demo-corpus), so layout parsing and `pipeline evaluate --on` meet data built outside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIDE = 48
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


def _scene(rng: np.random.Generator, side: int = SIDE) -> tuple[Image.Image, np.ndarray]:
    """An RGB scene of 1-3 filled shapes on grey and its mask (0 = background, k = shape kind k in 1..3)."""
    img = Image.new("RGB", (side, side), (128, 128, 128))
    mask = Image.new("L", (side, side), 0)
    d_img, d_mask = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(1, 4))
        x0, y0 = (int(v) for v in rng.integers(0, side - 16, 2))
        x1, y1 = x0 + int(rng.integers(10, 16)), y0 + int(rng.integers(10, 16))
        colour = list(COLOURS.values())[kind - 1]
        draw = {1: "rectangle", 2: "ellipse", 3: "polygon"}[kind]
        box = [x0, y0, x1, y1] if kind != 3 else [(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)]
        getattr(d_img, draw)(box, fill=colour)
        getattr(d_mask, draw)(box, fill=kind)
    return img, np.array(mask)


def build_imagefolder(root: Path, *, per_class: tuple[int, int] = (8, 4), seed: int = 0) -> Path:
    """train/<colour>/*.png and val/<colour>/*.png: a disc of the class colour on noise."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for label, colour in COLOURS.items():
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.integers(0, 80, (SIDE, SIDE, 3), dtype=np.uint8)
                img = Image.fromarray(noise)
                r = int(rng.integers(10, 20))
                c = rng.integers(r, SIDE - r, 2)
                ImageDraw.Draw(img).ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=colour)
                img.save(root / split / label / f"{label}_{i:03d}.png")
    (root / "classes.txt").write_text("".join(f"{c}\t{c} disc\n" for c in COLOURS))
    return root


def build_ade20k(root: Path, *, counts: tuple[int, int] = (12, 6), seed: int = 0) -> Path:
    """images/{training,validation}/*.jpg + annotations/…/*.png (0 = other, k = class k) + objectInfo150.csv."""
    rng = np.random.default_rng(seed)
    for folder, n in zip(("training", "validation"), counts):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = _scene(rng)
            name = f"ADE_{folder[:5]}_{i:05d}"
            img.save(root / "images" / folder / f"{name}.jpg", quality=95)
            Image.fromarray(mask, mode="L").save(root / "annotations" / folder / f"{name}.png")
    rows = ["Idx,Ratio,Train,Val,Name", "1,0.1,1,1,rectangle;box", "2,0.1,1,1,ellipse", "3,0.1,1,1,triangle"]
    (root / "objectInfo150.csv").write_text("\n".join(rows) + "\n")
    return root


def build_voc(root: Path, *, counts: tuple[int, int] = (6, 4), seed: int = 0) -> Path:
    """JPEGImages, SegmentationClass (palette PNGs, 255 borders), ImageSets/Segmentation/{train,val}.txt."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    palette = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]
    for split, n in zip(("train", "val"), counts):
        stems = [f"2007_{split}_{i:04d}" for i in range(n)]
        for stem in stems:
            img, mask = _scene(rng)
            mask = mask.copy()
            mask[0, :] = 255  # a boundary row, ignored
            img.save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
            pal = Image.fromarray(mask, mode="P")
            pal.putpalette(palette)
            pal.save(root / "SegmentationClass" / f"{stem}.png")
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def build_depth(root: Path, *, counts: tuple[int, int] = (8, 4), seed: int = 0, normals: bool = True,
                scale: float = 0.001) -> Path:
    """{train,val}/rgb/*.png + depth/*.png (16-bit, frontal planes at known depths) [+ normals], depth_meta.json."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), counts):
        for sub in ("rgb", "depth") + (("normals",) if normals else ()):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = _scene(rng)
            depth_m = np.where(mask > 0, 1.0 + 0.5 * mask, 4.0)  # each shape kind on its own plane
            img.save(root / split / "rgb" / f"{i:04d}.png")
            Image.fromarray(np.round(depth_m / scale).astype(np.uint16)).save(root / split / "depth" / f"{i:04d}.png")
            if normals:
                n_rgb = np.zeros((SIDE, SIDE, 3), np.uint8) + np.array([128, 128, 0], np.uint8)  # (0, 0, -1)
                Image.fromarray(n_rgb).save(root / split / "normals" / f"{i:04d}.png")
    meta = {"depth_scale": scale, "intrinsics": {"fx": 50.0, "fy": 50.0, "cx": SIDE / 2, "cy": SIDE / 2}}
    (root / "depth_meta.json").write_text(json.dumps(meta))
    return root
