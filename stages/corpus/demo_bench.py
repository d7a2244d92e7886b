"""The demo's evaluation datasets, in released layouts, exact by construction and offline.

`pipeline demo-corpus` writes them under <demo>/bench/ beside the training corpus (never inside its
images/ folder, so the training manifest is unchanged); `pipeline corpus --layout` turns each into a
dataset root and `pipeline evaluate --on` scores every run on them (docs/EVALUATION.md):

* ``lfw`` (layout imagefolder): the 200 LFW face / non-face crops of the kNN probe (scikit-image's
  ``lfw_subset.npy``), ``train/<face|nonface>/`` and every fifth image in ``val/``; ``classes.txt`` names the
  classes for zero-shot prompts.
* ``shapes_ade`` (layout ade20k): held-out random-shapes scenes (``stages.corpus.demo.shapes_image``, seeds
  apart from the training corpus's), ``images/{training,validation}`` and ``annotations/…`` with ADE20k's
  convention (0 = "other", ignored; shape kind k = k), ``objectInfo150.csv`` with the four shape classes.
* ``shapes_depth`` (layout depth): random-shapes scenes in which every shape is a plane at a known pose
  (depth z0 on the optical axis, normal tilted up to ~27° from facing the camera) in front of a tilted
  background plane, seen by a pinhole camera (``INTRINSICS``): depth per pixel is the ray-plane
  intersection (16-bit PNG, millimetres), normals the planes' normals (RGB = (n + 1) · 127.5), both exact
  up to their PNG quantization; ``depth_meta.json`` holds the scale and the intrinsics.

Shape legend: S image side.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from stages.corpus.demo_content import (LFW_CLASSES, SHAPE_CLASSES, SHAPES_SIDE, ZEROSHOT_CLASS_LINES, shape_layers,
                                       shapes_image)

BENCH_DATASETS = {"lfw": "imagefolder", "shapes_ade": "ade20k", "shapes_depth": "depth"}  # name -> layout
ADE_COUNTS, DEPTH_COUNTS = (48, 16), (32, 16)  # (train, val) scenes
ADE_SEED, DEPTH_SEED = 1000, 2000
DEPTH_SCALE = 0.001  # metres per unit of the depth PNGs
# pixel centres at integer coordinates (OpenCV's convention, as NYUv2's intrinsics): the image centre is (S-1)/2
INTRINSICS = {"fx": 64.0, "fy": 64.0, "cx": (SHAPES_SIDE - 1) / 2, "cy": (SHAPES_SIDE - 1) / 2}
BACKGROUND_PLANE = (np.array([0.0, -0.6, -1.0]) / np.linalg.norm([0.0, -0.6, -1.0]), 4.0)  # (normal, z0)


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, "PNG")
    return buf.getvalue()


def lfw_files(faces_N25x25: np.ndarray) -> dict[str, bytes]:
    """lfw/{train,val}/<class>/<class>_<i>.png (every fifth image of a class in val) + lfw/classes.txt."""
    out: dict[str, bytes] = {}
    per_class = faces_N25x25.shape[0] // len(LFW_CLASSES)
    for i, face in enumerate(faces_N25x25):
        label, j = LFW_CLASSES[i // per_class], i % per_class
        split = "val" if j % 5 == 4 else "train"
        pixels = np.round(np.clip(face, 0.0, 1.0) * 255).astype(np.uint8)
        out[f"lfw/{split}/{label}/{label}_{j:03d}.png"] = _png(pixels, "L")
    out["lfw/classes.txt"] = ("\n".join(ZEROSHOT_CLASS_LINES) + "\n").encode()
    return out


def shapes_ade_files() -> dict[str, bytes]:
    """shapes_ade/images|annotations/{training,validation}/shapes_<i>.png + objectInfo150.csv."""
    out: dict[str, bytes] = {}
    for folder, n, offset in (("training", ADE_COUNTS[0], 0), ("validation", ADE_COUNTS[1], ADE_COUNTS[0])):
        for i in range(n):
            image_SS3, mask_SS = shapes_image(ADE_SEED + offset + i)
            out[f"shapes_ade/images/{folder}/shapes_{offset + i:03d}.png"] = _png(image_SS3, "RGB")
            out[f"shapes_ade/annotations/{folder}/shapes_{offset + i:03d}.png"] = _png(mask_SS, "L")
    rows = ["Idx,Ratio,Train,Val,Name"] + [f"{k},0,1,1,{name}" for k, name in enumerate(SHAPE_CLASSES) if k > 0]
    out["shapes_ade/objectInfo150.csv"] = ("\n".join(rows) + "\n").encode()
    return out


def plane_depth(normal_3: np.ndarray, z0: float) -> np.ndarray:
    """Depth [S, S] of the plane through (0, 0, z0) with unit normal n: z = n_z z0 / (n · ((u−cx)/fx, (v−cy)/fy, 1))."""
    v, u = np.mgrid[0:SHAPES_SIDE, 0:SHAPES_SIDE].astype(np.float64)
    ray_SS3 = np.stack([(u - INTRINSICS["cx"]) / INTRINSICS["fx"], (v - INTRINSICS["cy"]) / INTRINSICS["fy"],
                        np.ones_like(u)], -1)
    return normal_3[2] * z0 / (ray_SS3 @ normal_3)


def depth_scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB [S, S, 3] uint8, depth [S, S] metres, unit normals [S, S, 3]) of one scene of planar shapes."""
    rng = np.random.default_rng(seed + 7)  # plane poses; the shapes themselves come from shape_layers(seed)
    n_bg, z_bg = BACKGROUND_PLANE
    depth_SS = plane_depth(n_bg, z_bg)
    normals_SS3 = np.broadcast_to(n_bg, (SHAPES_SIDE, SHAPES_SIDE, 3)).copy()
    shade = np.clip(255 * (1.0 - depth_SS / 8.0), 0, 255).astype(np.uint8)
    image_SS3 = np.repeat(shade[..., None], 3, axis=-1)
    for _, layer, pixels in shape_layers(seed):
        tilt = rng.uniform(-0.5, 0.5, 2)
        normal = np.array([tilt[0], tilt[1], -1.0]) / np.linalg.norm([tilt[0], tilt[1], -1.0])
        depth_SS[pixels] = plane_depth(normal, float(rng.uniform(1.0, 3.0)))[pixels]
        normals_SS3[pixels] = normal
        image_SS3[pixels] = layer[pixels]
    return image_SS3, depth_SS, normals_SS3


def shapes_depth_files() -> dict[str, bytes]:
    """shapes_depth/{train,val}/{rgb,depth,normals}/<i>.png + depth_meta.json."""
    out: dict[str, bytes] = {}
    for split, n, offset in (("train", DEPTH_COUNTS[0], 0), ("val", DEPTH_COUNTS[1], DEPTH_COUNTS[0])):
        for i in range(n):
            image_SS3, depth_SS, normals_SS3 = depth_scene(DEPTH_SEED + offset + i)
            name = f"{offset + i:04d}.png"
            out[f"shapes_depth/{split}/rgb/{name}"] = _png(image_SS3, "RGB")
            depth_png = Image.fromarray(np.round(depth_SS / DEPTH_SCALE).astype(np.uint16))
            buf = io.BytesIO()
            depth_png.save(buf, "PNG")
            out[f"shapes_depth/{split}/depth/{name}"] = buf.getvalue()
            n_rgb = np.clip(np.round((normals_SS3 + 1.0) * 127.5), 0, 255).astype(np.uint8)
            out[f"shapes_depth/{split}/normals/{name}"] = _png(n_rgb, "RGB")
    meta = {"depth_scale": DEPTH_SCALE, "intrinsics": INTRINSICS}
    out["shapes_depth/depth_meta.json"] = (json.dumps(meta, sort_keys=True) + "\n").encode()
    return out


def bench_files(faces_N25x25: np.ndarray) -> dict[str, bytes]:
    """Relative path under <demo>/bench -> bytes, for every evaluation dataset of the demo."""
    return {**lfw_files(faces_N25x25), **shapes_ade_files(), **shapes_depth_files()}
