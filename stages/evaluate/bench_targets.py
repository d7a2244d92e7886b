"""An evaluation dataset's targets: full-resolution ones for scoring, and training ones resized once.

Segmentation masks become class ids 0..L-1 with 255 ignored (ADE20k's 0 = "other" ignored, as the usual
protocol does; VOC's 255 boundaries ignored). Depth is metres (PNG value × ``depth_scale``, 0 = no
depth). Surface normals are unit vectors in camera coordinates (x right, y down, z forward; a surface
facing the camera has n_z < 0), read from the dataset's normals PNGs (RGB = (n + 1) · 127.5) or, where
the dataset has none, derived from depth and the camera intrinsics (Probe 3D, El Banani et al. CVPR
2024, evaluates both; NYUv2's normals are themselves derived from depth): back-project every pixel,
take central differences along x and y, n = −(∂P/∂u × ∂P/∂v) normalized; pixels next to a pixel without
depth get none.

Training targets are the full-resolution ones resized (nearest: no mixing across object borders) to
``side`` × ``side``, the view-0 geometry of the features (the whole image squashed to a square), and
cached once per dataset root in ``<root>/bench/targets_<side>px.zarr`` (``store_schema.eval_cache``).

Shape legend: N images, H/W full-resolution sides, T training side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from stages.corpus.layouts import class_of_mask
from store_schema import layout
from store_schema.eval_cache import BlockCache, open_block_cache

TARGETS_RECIPE = 1  # bump when how targets are derived changes: cached targets are then rebuilt
DENSE_TASKS = {"ade20k": ("seg",), "voc": ("seg",), "depth": ("depth", "normals")}


def _png(path: Any) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def derive_normals(depth_HW: np.ndarray, intrinsics: dict[str, float]) -> np.ndarray:
    """Unit normals [H, W, 3] from metric depth (0 = none) and pinhole intrinsics; zero where undefined."""
    z = np.asarray(depth_HW, np.float64)
    H, W = z.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    P_HW3 = np.stack([(u - intrinsics["cx"]) * z / intrinsics["fx"], (v - intrinsics["cy"]) * z / intrinsics["fy"],
                      z], -1)
    dPdu, dPdv = np.gradient(P_HW3, axis=1), np.gradient(P_HW3, axis=0)
    n = -np.cross(dPdu, dPdv)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    valid = z > 0
    pad = np.pad(valid, 1, constant_values=True)  # image borders: one-sided differences (np.gradient)
    valid &= pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return np.where(valid[..., None], n, 0.0).astype(np.float32)


def full_target(manifest: Any, i: int, task: str) -> np.ndarray:
    """Image i's full-resolution target: class ids [H, W] uint8, depth [H, W] float32 metres, or unit
    normals [H, W, 3] float32 (zero = none)."""
    info = manifest.dataset
    if task == "seg":
        return class_of_mask(info, _png(manifest.dataset_path("mask_uri", i)))
    depth_HW = _png(manifest.dataset_path("depth_uri", i)).astype(np.float32) * np.float32(info.depth_scale)
    if task == "depth":
        return depth_HW
    path = manifest.dataset_path("normals_uri", i)
    if path is None:
        return derive_normals(depth_HW, info.intrinsics)
    n = _png(path)[..., :3].astype(np.float32) / 127.5 - 1.0
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(norm > 0.5, n / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def _resize_nearest(target: np.ndarray, side: int) -> np.ndarray:
    H, W = target.shape[:2]
    rows = np.minimum((np.arange(side) + 0.5) * H / side, H - 1).astype(np.int64)
    cols = np.minimum((np.arange(side) + 0.5) * W / side, W - 1).astype(np.int64)
    return target[rows][:, cols]


def dataset_targets(manifest: Any, root: Any, side: int, *, log: Any = None) -> BlockCache:
    """The dataset's training targets at side x side, cached under <root>/bench (built once, resumable)."""
    tasks = DENSE_TASKS[manifest.dataset.layout]
    arrays = {t: ((side, side, 3) if t == "normals" else (side, side), "uint8" if t == "seg" else "float32")
              for t in tasks}
    key = {"manifest_hash": manifest.hash, "side": int(side), "recipe": TARGETS_RECIPE}
    path = layout.bench_targets_path(root, side)
    cache, what = open_block_cache(path, kind=layout.BENCH_TARGETS_KIND, key=key, num_images=manifest.num_images,
                                   block_size=256, arrays=arrays)
    todo = cache.incomplete_blocks()
    if log is not None and todo:
        log(f"training targets {path}: {what}; {len(todo)} of {cache.num_blocks} blocks to build")
    for k in todo:
        lo, hi = cache.block_range(k)
        block = {t: np.zeros((hi - lo, *shape), dtype) for t, (shape, dtype) in arrays.items()}
        for i in np.flatnonzero(manifest.ok_N[lo:hi]) + lo:
            for t in tasks:
                block[t][i - lo] = _resize_nearest(full_target(manifest, int(i), t), side)
        cache.write_block(k, block)
    return cache
