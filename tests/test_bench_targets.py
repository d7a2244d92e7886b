"""Targets of evaluation datasets (stages/evaluate/bench_targets.py) and the demo's datasets in released
layouts (stages/corpus/demo_bench.py): exact by construction, so their known answers are checked here."""

from __future__ import annotations

import numpy as np

from stages.corpus.demo_bench import INTRINSICS, depth_scene, plane_depth
from stages.evaluate.bench_targets import derive_normals


def test_normals_derived_from_a_plane_are_its_normal():
    n = np.array([0.3, -0.2, -1.0])
    n /= np.linalg.norm(n)
    got_SS3 = derive_normals(plane_depth(n, 2.0), INTRINSICS)
    assert np.allclose(got_SS3, n, atol=1e-6)  # central and one-sided differences of a plane are exact


def test_normals_next_to_missing_depth_are_undefined():
    depth = plane_depth(np.array([0.0, 0.0, -1.0]), 2.0)
    depth[10, 10] = 0.0
    n_SS3 = derive_normals(depth, INTRINSICS)
    assert not n_SS3[10, 10].any() and not n_SS3[10, 11].any() and not n_SS3[9, 10].any()
    assert np.allclose(n_SS3[30, 30], [0.0, 0.0, -1.0])


def test_demo_depth_scene_normals_match_its_depth_away_from_edges():
    _, depth_SS, normals_SS3 = depth_scene(2003)
    derived_SS3 = derive_normals(depth_SS, INTRINSICS)
    # pixels whose 3x3 neighbourhood lies on one plane: derived normal = the plane's normal
    same = np.ones(depth_SS.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same &= (np.roll(normals_SS3, (dy, dx), (0, 1)) == normals_SS3).all(-1)
    same[[0, -1], :] = same[:, [0, -1]] = False
    assert same.sum() > 1000
    assert np.allclose(derived_SS3[same], normals_SS3[same], atol=1e-6)
