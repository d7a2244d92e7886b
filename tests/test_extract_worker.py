"""The in-process shard worker (stage one of AM-RADIO, arXiv 2312.06709): real tiny teachers, real zarr.

What is stored equals the teacher's output for the manifest's views (pooled to the storage grid, rounded
by the codec); statistics are those of the stored values; bad / undecodable / non-finite views are masked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stages.corpus.views import render_view
from stages.extract.pooling import check_storage_grid, pool_patches
from stages.extract.worker import ShardWorker
from stages.stats import Moments
from stages.teachers.preprocess import to_pixels
from stages.teachers.registry import get_teacher_spec, weights_identity
from stages.teachers.spec import TeacherOutput
from store_schema.codecs import CodecSpec, round_as_stored
from store_schema.layout import manifest_path, teacher_store_path
from store_schema.manifest import read_manifest
from store_schema.teacher_store import create_teacher_store

pytest_plugins = ["tests.ray_fixture"]

TEACHER = "tiny_clip"  # grid 8x8, summary 48, patches 96


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _store(root, grid, shard_size=4):
    spec = get_teacher_spec(TEACHER)
    manifest = read_manifest(manifest_path(root))
    store = create_teacher_store(teacher_store_path(root, TEACHER), spec=spec, weights_identity=weights_identity(spec),
                                 manifest=manifest, shard_size=shard_size, storage_grid=grid, codec=CodecSpec())
    return spec, manifest, store


def _worker(root, spec, batch_size=8):
    return ShardWorker(spec, store_path=teacher_store_path(root, TEACHER), manifest_path=manifest_path(root),
                       batch_size=batch_size)


@pytest.mark.parametrize("grid", [(8, 8), (3, 5)])
def test_shard_holds_teacher_outputs_as_stored(tmp_path, grid, make_corpus):
    root = make_corpus(tmp_path)
    spec, manifest, store = _store(root, grid)
    worker = _worker(root, spec)
    k = 1  # images 4..7; image 4 is the empty file (bad in the manifest)
    lo, hi = store.shard_range(k)
    assert not manifest.ok_N[4] and manifest.ok_N[[5, 6, 7]].all()
    result = worker.run_shard(k)

    assert (result.shard, result.num_images, result.num_bad_images, result.num_views) == (k, 4, 1, 6)
    assert result.masked == [] and not store.is_complete(k)  # completion is the driver's job
    summary_SVC, patches_SVhwC, valid_SV = store.read_shard(k)
    assert valid_SV.tolist() == [[False, False]] + [[True, True]] * 3
    assert not summary_SVC[0].any() and not patches_SVhwC[0].any()

    # Same views, same single batch as the worker (6 views <= batch 8): bit-exact after the codec rounding.
    views = [render_view(Image.open(manifest.image_path(i)).convert("RGB"), manifest.view_boxes_NV4[i, v],
                         bool(manifest.view_flips_NV[i, v]), spec.resolution) for i in range(5, 8) for v in range(2)]
    with torch.inference_mode():
        out = worker.teacher(to_pixels(np.stack(views), spec))
    expected_patches = pool_patches(out.patches_BhwC.float(), grid).numpy()
    np.testing.assert_array_equal(patches_SVhwC[1:].reshape(6, *grid, 96), round_as_stored(expected_patches, store.codec))
    np.testing.assert_array_equal(summary_SVC[1:].reshape(6, 48), round_as_stored(out.summary_BC.numpy(), store.codec))
    assert not np.array_equal(patches_SVhwC[1:].reshape(6, *grid, 96), expected_patches)  # BitRound did round

    ref_p = Moments.from_batch(patches_SVhwC[valid_SV].reshape(-1, 96))
    ref_s = Moments.from_batch(summary_SVC[valid_SV])
    for got, ref in ((result.patches, ref_p), (result.summary, ref_s)):
        assert got.count == ref.count
        np.testing.assert_allclose(got.mean_D, ref.mean_D, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got.m2_DD, ref.m2_DD, rtol=1e-10, atol=1e-12 * np.abs(ref.m2_DD).max())
    assert ref_p.count == 6 * grid[0] * grid[1]


def test_pooling_is_adaptive_average_and_refuses_larger_grids():
    x_BhwC = torch.randn(2, 8, 8, 5)
    pooled = pool_patches(x_BhwC, (3, 5))
    ref = F.adaptive_avg_pool2d(x_BhwC.permute(0, 3, 1, 2), (3, 5)).permute(0, 2, 3, 1)
    torch.testing.assert_close(pooled, ref)
    assert pool_patches(x_BhwC, (8, 8)) is x_BhwC
    torch.testing.assert_close(pool_patches(x_BhwC, (1, 1))[:, 0, 0], x_BhwC.mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="larger than the teacher's patch grid 8x8"):
        check_storage_grid((8, 8), (9, 8))
    with pytest.raises(ValueError, match="positive"):
        check_storage_grid((8, 8), (0, 4))


class _NaNOnFirstView(torch.nn.Module):
    """A real teacher whose first output of the first batch is poisoned with NaN (a numerically
    unstable forward pass, as bf16 overflow produces)."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.teacher, self.calls = teacher, 0

    def forward(self, pixels_BCHW):
        out = self.teacher(pixels_BCHW)
        self.calls += 1
        if self.calls == 1:
            out.patches_BhwC[0, 2, 3, 4] = float("nan")
        return TeacherOutput(out.summary_BC, out.patches_BhwC)


def test_nonfinite_outputs_and_decode_failures_are_masked_not_fatal(tmp_path, make_corpus):
    root = make_corpus(tmp_path)
    spec, manifest, store = _store(root, (8, 8))
    # After the manifest was built: image 5 becomes undecodable, image 6 changes content.
    manifest.image_path(5).write_bytes(b"\xff\xd8 truncated jpeg")
    Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(manifest.image_path(6), format="PNG")
    worker = _worker(root, spec, batch_size=3)
    worker.teacher = _NaNOnFirstView(worker.teacher)
    result = worker.run_shard(1)  # images 4 (bad), 5 (undecodable), 6 (changed), 7 (ok)

    reasons = {(m.image_id, m.view): m.reason for m in result.masked}
    assert set(reasons) == {(5, 0), (5, 1), (6, 0), (6, 1), (7, 0)}
    assert reasons[(5, 0)].startswith("decode: ") and "content changed since the manifest" in reasons[(6, 0)]
    assert reasons[(7, 0)] == "non-finite teacher output"
    _, patches_SVhwC, valid_SV = store.read_shard(1)
    assert valid_SV.tolist() == [[False, False], [False, False], [False, False], [False, True]]
    assert np.isfinite(patches_SVhwC).all() and not patches_SVhwC[3, 0].any() and patches_SVhwC[3, 1].any()
    assert result.num_views == 1 and result.patches.count == 64 and result.summary.count == 1
    assert np.isfinite(result.patches.m2_DD).all()


def test_worker_refuses_a_spec_that_differs_from_the_store(tmp_path, make_corpus):
    root = make_corpus(tmp_path, n_ok=3)
    _store(root, (8, 8))
    with pytest.raises(ValueError, match="differs from the spec recorded"):
        ShardWorker(get_teacher_spec("tiny_dinov2"), store_path=teacher_store_path(root, TEACHER),
                    manifest_path=manifest_path(root))
