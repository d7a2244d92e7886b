"""Each teacher's own resize rule (stages/teachers/resize.py): geometric alignment of the student's
predictions with every rule's targets, on a synthetic image whose pixels are position codes; a padded
(SAM-style) view's padded tokens carry no loss and no statistics; existing stores read back as squashed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from stages.extract.config import ExtractConfig
from stages.extract.driver import run_extract
from stages.corpus.views import render_teacher_view, render_view
from stages.extract.transcode import shard_moments
from stages.extract.verify import verify_store
from stages.normalize import target_loss
from stages.teachers import registry
from stages.teachers.resize import (ResizeRule, content_tokens, frame_of, sample_on_frame, teacher_frames)
from stages.teachers.spec import TeacherSpec
from store_schema import layout
from store_schema.teacher_store import open_teacher_store

pytest_plugins = ["tests.ray_fixture"]
RES, PATCH, STUDENT, STUDENT_PATCH = 64, 8, 96, 12


def _position_image(w: int = 300, h: int = 180) -> Image.Image:
    """Red = x, green = y (a linear code of the position on the image), blue = 255 (so padding, 0, shows)."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255.0 / (w - 1), yy * 255.0 / (h - 1), np.full_like(xx, 255.0)], -1)
    return Image.fromarray(arr.round().astype(np.uint8))


def _patch_means(view_HW3: np.ndarray, patch: int) -> torch.Tensor:
    """[1, h, w, 3]: a stand-in teacher whose features are each patch's mean colour (its position code)."""
    x = torch.from_numpy(view_HW3.astype(np.float32))
    H, W = x.shape[:2]
    return x.reshape(H // patch, patch, W // patch, patch, 3).mean(dim=(1, 3))[None]


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("rule", list(ResizeRule))
def test_every_resize_rule_keeps_the_students_targets_aligned_with_its_view(rule: ResizeRule, flip: bool) -> None:
    img, box = _position_image(), (0.1, 0.2, 0.95, 0.7)  # a wide view: crop and pad both act
    bw, bh = (box[2] - box[0]) * img.width, (box[3] - box[1]) * img.height
    frame = frame_of(rule, RES, bw, bh)
    teacher = _patch_means(render_teacher_view(img, box, flip, RES, frame), PATCH)  # targets, teacher grid
    student = _patch_means(render_view(img, box, flip, STUDENT), STUDENT_PATCH)  # the student's own view
    grid = (RES // PATCH, RES // PATCH)
    pred = sample_on_frame(student, torch.tensor([frame]), grid)
    content = content_tokens(torch.tensor([frame]), grid)
    err = (pred - teacher).abs()[..., :2]  # the position channels
    assert err[content].max() < 6.0, (rule, flip, float(err[content].max()))
    if rule == ResizeRule.LONGEST_PAD:
        assert 0 < int(content.sum()) < grid[0] * grid[1]
        assert torch.all(teacher[~content][:, 2] < 250)  # cells holding padding (0), wholly or in part
        assert torch.all(teacher[content][:, 2] > 254)  # cells wholly inside the view: the image's blue 255
    else:
        assert bool(content.all())
    if rule != ResizeRule.SQUASH:  # the control: read as a squash, the same targets are misaligned
        wrong = sample_on_frame(student, torch.tensor([(0.0, 0.0, 1.0, 1.0)]), grid)
        assert (wrong - teacher).abs()[..., :2][content].max() > 15.0


def test_squash_frames_sample_as_the_old_resize() -> None:
    from stages.students.heads import resize_grid

    x = torch.randn(2, 6, 6, 5)
    frames = torch.tensor([(0.0, 0.0, 1.0, 1.0)] * 2)
    torch.testing.assert_close(sample_on_frame(x, frames, (12, 12)), resize_grid(x, (12, 12)), atol=1e-5, rtol=0)
    torch.testing.assert_close(sample_on_frame(x, frames, (3, 3)), resize_grid(x, (3, 3)), atol=1e-5, rtol=0)


def test_existing_stores_read_back_as_squashed() -> None:
    spec = registry.get_teacher_spec("sam_h")
    assert spec.resize == ResizeRule.LONGEST_PAD and registry.get_teacher_spec("clip_l_openai").resize == \
        ResizeRule.SHORTEST_CROP and registry.get_teacher_spec("clip_h_dfn").resize == ResizeRule.SQUASH
    recorded = spec.to_dict()
    del recorded["resize"]  # a store written before resize rules
    assert TeacherSpec.from_dict(recorded).resize == ResizeRule.SQUASH
    assert "resize" not in registry.get_teacher_spec("siglip_so400m").to_dict()  # squash specs are unchanged


@pytest.fixture
def pad_teacher(monkeypatch) -> str:
    """tiny_sam with SAM's own rule (longest side + padding), registered for the test."""
    spec = dataclasses.replace(registry.get_teacher_spec("tiny_sam"), name="tiny_sam_pad",
                               resize=ResizeRule.LONGEST_PAD)
    monkeypatch.setitem(registry.TEACHERS, spec.name, spec)
    return spec.name


def test_padded_tokens_carry_no_statistics_and_no_loss(tmp_path, make_corpus, pad_teacher) -> None:
    root = make_corpus(tmp_path, n_ok=8, num_views=2)
    run_extract(root, pad_teacher, ExtractConfig(workers=0, shard_size=4, batch_size=4, progress=False))
    store = open_teacher_store(layout.teacher_store_path(root, pad_teacher))
    frames = store.frames_NV4
    from store_schema.manifest import read_manifest

    m = read_manifest(layout.manifest_path(root))
    np.testing.assert_array_equal(frames, teacher_frames(ResizeRule.LONGEST_PAD, 128, m.view_boxes_NV4, m.width_N,
                                                         m.height_N))
    valid_NV = np.asarray(store.valid[:], bool)
    content = store.content_mask(np.arange(store.num_images))
    assert content is not None and not content[valid_NV].all()  # non-square views: some tokens are padding
    stats = store.stats("patches")
    assert stats.count == int(content[valid_NV].sum()) < int(valid_NV.sum()) * 64  # only content tokens count
    assert verify_store(store).ok  # the recomputed statistics agree (padding excluded there too)
    from stages.extract.inspect import format_info, store_info

    assert "resize longest_side_pad" in format_info(store_info(store))

    # padding values do not move the statistics
    _, patches_SVhwC, valid_SV = store.read_shard(0)
    patches_SVhwC = np.asarray(patches_SVhwC, np.float32)
    c = content[:4]
    poked = patches_SVhwC.copy()
    poked[~c] = 1e6
    a, b = shard_moments(None, patches_SVhwC, valid_SV, c)["patches"], shard_moments(None, poked, valid_SV, c)["patches"]
    assert a.count == b.count and np.array_equal(a.mean_D, b.mean_D) and np.array_equal(a.m2_DD, b.m2_DD)

    # padded tokens carry no loss and no gradient
    from stages.distill.config import DistillConfig
    from stages.distill.train import distill_loss

    config = DistillConfig(student="vit_tiny_test", teachers=(pad_teacher,), root=root, out_dir=tmp_path / "o")
    frames_B4 = torch.from_numpy(frames[:4, 0].astype(np.float32))
    mask_Bhw = content_tokens(frames_B4, store.grid)
    pred = torch.randn(4, 8, 8, store.patch_dim, requires_grad=True)
    target = torch.randn(4, 8, 8, store.patch_dim)
    poked_target = target.clone()
    poked_target[~mask_Bhw] = 1e6
    loss, _ = distill_loss(config, {pad_teacher: (None, pred)}, {f"{pad_teacher}/patches": target}, torch.device("cpu"),
                           frames={pad_teacher: frames_B4})
    loss2, _ = distill_loss(config, {pad_teacher: (None, pred)}, {f"{pad_teacher}/patches": poked_target},
                            torch.device("cpu"), frames={pad_teacher: frames_B4})
    assert torch.equal(loss, loss2)
    loss.backward()
    assert torch.all(pred.grad[~mask_Bhw] == 0) and torch.any(pred.grad[mask_Bhw] != 0)
    assert torch.equal(loss, target_loss(config.norm.loss, pred[mask_Bhw], target[mask_Bhw]))


def test_a_padded_teacher_trains_and_evaluates_end_to_end(tmp_path, make_corpus, pad_teacher) -> None:
    from stages.distill.config import DistillConfig
    from stages.distill.train import train
    from stages.evaluate.evaluate import evaluate_run

    root = make_corpus(tmp_path, n_ok=12, num_views=2)
    run_extract(root, pad_teacher, ExtractConfig(workers=0, shard_size=4, batch_size=8, progress=False))
    run = train(DistillConfig(student="vit_tiny_test", teachers=(pad_teacher,), root=root, out_dir=tmp_path / "run",
                              img_size=64, steps=3, batch_size=4, warmup_steps=1, log_every=1, seed=0))
    metrics = evaluate_run(run, split="train", batch_size=4)
    errs = metrics["teachers"][pad_teacher]["patches"] if "teachers" in metrics else metrics[pad_teacher]["patches"]
    assert np.isfinite(errs["mse"])


@pytest.mark.parametrize("rule", [ResizeRule.LONGEST_PAD, ResizeRule.SHORTEST_CROP])
def test_a_teachers_map_brought_back_onto_the_view_lines_up_with_it(rule: ResizeRule) -> None:
    """What the segmentation references use: a stored teacher map resampled onto the view's grid."""
    from stages.teachers.resize import teacher_map_in_view

    img, box = _position_image(), (0.05, 0.1, 0.9, 0.8)
    frame = frame_of(rule, RES, (box[2] - box[0]) * img.width, (box[3] - box[1]) * img.height)
    teacher = _patch_means(render_teacher_view(img, box, False, RES, frame), PATCH)
    student = _patch_means(render_view(img, box, False, STUDENT), STUDENT_PATCH)  # the view's own grid, 8x8
    back = teacher_map_in_view(teacher, torch.tensor([frame]), (8, 8))
    # view cells whose centres lie between teacher cell centres (bilinear interpolates, never extrapolates
    # past the frame's first and last centres), and whose samples never blend in a cell holding padding
    c = (torch.arange(8, dtype=torch.float64) + 0.5) / 8
    t_u, t_v = (c - frame[0]) / (frame[2] - frame[0]), (c - frame[1]) / (frame[3] - frame[1])
    inner_u, inner_v = (t_u >= 0.5 / 8) & (t_u <= 1 - 0.5 / 8), (t_v >= 0.5 / 8) & (t_v <= 1 - 0.5 / 8)
    seen = (inner_v[:, None] & inner_u[None, :])[None]
    content = content_tokens(torch.tensor([frame]), (8, 8)).float()[..., None]
    seen = seen & (teacher_map_in_view(content, torch.tensor([frame]), (8, 8))[..., 0] == 1.0)
    assert seen.sum() >= 16
    err = (back - student).abs()[..., :2][seen]
    assert err.max() < 8.0, float(err.max())


def test_a_padded_store_transcoded_to_a_coarser_grid_still_verifies(tmp_path, make_corpus, pad_teacher) -> None:
    """Pooled cells that straddle the padding edge are padding too: the new statistics leave them out."""
    import shutil

    from stages.extract.transcode import transcode_store

    root = make_corpus(tmp_path, n_ok=6, num_views=1)
    run_extract(root, pad_teacher, ExtractConfig(workers=0, shard_size=4, batch_size=4, progress=False))
    dst = tmp_path / "coarse"
    dst.mkdir()
    shutil.copy(layout.manifest_path(root), layout.manifest_path(dst))
    transcode_store(root, pad_teacher, dst, storage_grid=(4, 4))
    store = open_teacher_store(layout.teacher_store_path(dst, pad_teacher))
    valid_NV = np.asarray(store.valid[:], bool)
    content = store.content_mask(np.arange(store.num_images))
    assert store.grid == (4, 4) and store.stats("patches").count == int(content[valid_NV].sum())
    assert verify_store(store).ok
