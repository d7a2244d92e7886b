"""Dense linear probes trained by mini-batches of random crops (stages/evaluate/dense_probe.py), on features
with known answers: one-hot masks give mIoU 1.0, features linear in depth give AbsRel ~ 0, features that
are the normals give 0° error."""

from __future__ import annotations

import numpy as np
import pytest

from stages.evaluate.dense_probe import ProbeConfig, score_dense_probe, train_dense_probe

N, G, L = 24, 8, 4  # images, grid side (= target side: one target pixel per feature cell), classes


def _masks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks_NGG = np.zeros((N, G, G), np.uint8)
    for n in range(N):
        for _ in range(3):
            y, x, s = rng.integers(0, G - 2), rng.integers(0, G - 2), rng.integers(2, 5)
            masks_NGG[n, y : y + s, x : x + s] = rng.integers(1, L)
    masks_NGG[:, 0, 0] = 255  # an ignored pixel per image
    return masks_NGG


def _reader(arr):
    return lambda ids: arr[ids]


def test_segmentation_probe_on_one_hot_of_mask_features_reaches_miou_one():
    masks_NGG = _masks(0)
    eye = np.vstack([np.eye(L, dtype=np.float32), np.zeros((256 - L, L), np.float32)])
    feats_NGGC = eye[masks_NGG]  # one-hot class per cell; ignored cells all zero
    cfg = ProbeConfig(iterations=300, batch_size=8, lr=5e-2, crop=0.75)
    train, val = np.arange(0, 16), np.arange(16, N)
    head = train_dense_probe(_reader(feats_NGGC), _reader(masks_NGG), train, task="seg", grid=(G, G),
                             channels=L, target_side=G, cfg=cfg, num_classes=L)
    # full resolution = the grid itself, so bilinear upsampling is the identity
    res = score_dense_probe(head, _reader(feats_NGGC), ((int(i), masks_NGG[i]) for i in val), task="seg",
                            num_classes=L)
    assert res["miou"] == 1.0 and res["num_val"] == len(val)


def test_depth_probe_on_features_linear_in_depth_reaches_abs_rel_below_1e_3():
    rng = np.random.default_rng(1)
    depth_NGG = rng.uniform(1.0, 10.0, (N, G, G)).astype(np.float32)
    depth_NGG[:, 0, :2] = 0.0  # pixels without depth are ignored
    feats_NGGC = np.concatenate([(0.3 * depth_NGG - 1.0)[..., None], rng.normal(size=(N, G, G, 5))], -1)
    feats_NGGC = feats_NGGC.astype(np.float32)
    cfg = ProbeConfig(iterations=600, batch_size=8, lr=5e-2, weight_decay=0.0)
    head = train_dense_probe(_reader(feats_NGGC), _reader(depth_NGG), np.arange(16), task="depth", grid=(G, G),
                             channels=6, target_side=G, cfg=cfg)
    res = score_dense_probe(head, _reader(feats_NGGC), ((i, depth_NGG[i]) for i in range(16, N)), task="depth")
    assert res["abs_rel"] < 1e-3 and res["delta1"] == 1.0


def test_normal_probe_on_normal_features_is_within_threshold_everywhere():
    rng = np.random.default_rng(2)
    n_NGG3 = rng.normal(size=(N, G, G, 3))
    n_NGG3[..., 2] = -np.abs(n_NGG3[..., 2]) - 0.5  # facing the camera
    n_NGG3 /= np.linalg.norm(n_NGG3, axis=-1, keepdims=True)
    n_NGG3 = n_NGG3.astype(np.float32)
    cfg = ProbeConfig(iterations=400, batch_size=8, lr=5e-2, weight_decay=0.0)
    head = train_dense_probe(_reader(n_NGG3), _reader(n_NGG3), np.arange(16), task="normals", grid=(G, G),
                             channels=3, target_side=G, cfg=cfg)
    res = score_dense_probe(head, _reader(n_NGG3), ((i, n_NGG3[i]) for i in range(16, N)), task="normals")
    assert res["within_11_25"] == 1.0 and res["mean_angle_deg"] < 2.0


def test_probe_inputs_are_checked():
    with pytest.raises(ValueError, match="crop"):
        ProbeConfig(crop=1.5)
    with pytest.raises(ValueError, match="unknown dense task"):
        train_dense_probe(_reader(np.zeros((2, 2, 2, 1))), _reader(np.zeros((2, 2, 2))), np.arange(2),
                          task="flow", grid=(2, 2), channels=1, target_side=2, cfg=ProbeConfig(iterations=1))
    with pytest.raises(ValueError, match="no training images"):
        train_dense_probe(_reader(np.zeros((2, 2, 2, 1))), _reader(np.zeros((2, 2, 2))), np.arange(0),
                          task="depth", grid=(2, 2), channels=1, target_side=2, cfg=ProbeConfig(iterations=1))
