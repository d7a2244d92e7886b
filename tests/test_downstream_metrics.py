"""Downstream metrics on hand-built cases with known answers: mIoU, the linear segmentation probe,
open-vocabulary labelling and zero-shot classification (stages/evaluate/segmentation.py, zeroshot.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stages.evaluate.segmentation import (IGNORE_INDEX, linear_probe_miou, miou, open_vocab_miou,
                                          predict_open_vocab, read_mask)
from stages.evaluate.zeroshot import zeroshot_predict, zeroshot_scores
from stages.prompts import PromptSet, load_templates, read_classes


def _masks(n: int, L: int, side: int, seed: int) -> list[np.ndarray]:
    """Blocky masks on a side/4 grid (so a side/4 feature grid upsampled can represent them)."""
    rng = np.random.default_rng(seed)
    return [np.kron(rng.integers(0, L, (side // 4, side // 4)), np.ones((4, 4), np.int64)).astype(np.uint8)
            for _ in range(n)]


def _one_hot_grid(mask_HW: np.ndarray, L: int) -> np.ndarray:
    """One-hot of the mask at the mask's resolution: [H, W, L] (upsampling is then the identity; on a
    coarser grid bilinear upsampling ties exactly half-way between two patch centres)."""
    return np.eye(L, dtype=np.float32)[mask_HW]


def test_miou_counts_by_hand():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, IGNORE_INDEX]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 0]], np.uint8)
    # class 0: inter 3, union 3 + 1 (pred 0 on a truth-1 pixel) + 1 (truth 0 predicted 1) = 5 -> 0.6
    # class 1: inter 2, union 3 (truth, unignored) + 1 -> 0.5 ; the ignored pixel counts nowhere
    value, per_class = miou([pred], [target], 3)
    assert per_class[:2] == pytest.approx([3 / 5, 2 / 4]) and per_class[2] is None
    assert value == pytest.approx((0.6 + 0.5) / 2)


def test_linear_probe_on_one_hot_of_mask_reaches_miou_1():
    L = 4
    train, val = _masks(8, L, 8, 0), _masks(4, L, 8, 1)
    x_train = np.stack([_one_hot_grid(m, L) for m in train])
    x_val = np.stack([_one_hot_grid(m, L) for m in val])
    assert linear_probe_miou(x_train, train, x_val, val, L, steps=60, lr=0.1) == pytest.approx(1.0)


def test_linear_probe_on_noise_is_far_from_1():
    L = 4
    train, val = _masks(12, L, 32, 0), _masks(4, L, 32, 1)
    rng = np.random.default_rng(0)
    noise = lambda n: rng.normal(size=(n, 8, 8, L)).astype(np.float32)  # noqa: E731
    assert linear_probe_miou(noise(12), train, noise(4), val, L, steps=30) < 0.5


def test_open_vocab_with_text_equal_to_features_is_exact():
    L = 3
    masks = _masks(3, L, 16, 2)
    joint = np.stack([_one_hot_grid(m, L) for m in masks]) * 5.0  # scale does not matter (cosine)
    assert open_vocab_miou(joint, np.eye(L, dtype=np.float32), masks) == pytest.approx(1.0)
    # permuting the text embeddings permutes the predicted classes
    perm = np.array([1, 2, 0])
    pred = predict_open_vocab(joint, np.eye(L, dtype=np.float32)[perm], [m.shape for m in masks])
    assert all((p == np.argsort(perm)[m]).all() for p, m in zip(pred, masks))


def test_zeroshot_with_text_equal_to_class_means_has_known_accuracy():
    rng = np.random.default_rng(0)
    L, C, per = 4, 16, 10
    centres_LC = rng.normal(size=(L, C)) * 3
    labels_N = np.repeat(np.arange(L), per)
    emb_NC = centres_LC[labels_N] + rng.normal(size=(L * per, C))
    means_LC = np.stack([emb_NC[labels_N == k].mean(0) for k in range(L)])
    # the known answer: nearest class mean by cosine, computed directly
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = float(np.mean(np.argmax(unit(emb_NC) @ unit(means_LC).T, 1) == labels_N))
    assert expected > 0.9  # well-separated classes
    # flip 5 labels' embeddings to another class centre: exactly those become wrong
    emb_bad = emb_NC.copy()
    emb_bad[:5] = centres_LC[1] * 10
    s = zeroshot_scores(emb_bad, emb_NC, means_LC, labels_N)
    assert s["teacher_top1"] == pytest.approx(expected)
    assert s["top1"] == pytest.approx(expected - 5 / len(labels_N))
    assert s["agreement"] == pytest.approx(1 - 5 / len(labels_N))
    assert (zeroshot_predict(means_LC, means_LC) == np.arange(L)).all()


def test_read_mask_refuses_values_outside_the_classes(tmp_path):
    Image.fromarray(np.array([[0, 1], [7, 255]], np.uint8), mode="L").save(tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"values \[7\] outside the 3 classes"):
        read_mask(tmp_path / "m.png", 3)
    assert read_mask(tmp_path / "m.png", 8)[1, 1] == IGNORE_INDEX
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="single-channel"):
        read_mask(tmp_path / "rgb.png", 3)


def test_prompt_sets_classes_templates_and_hash(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# comment\nface\nnonface\tnon-face object\n\n")
    labels, names = read_classes(f)
    assert labels == ("face", "nonface") and names == ("face", "non-face object")
    ps = PromptSet(labels, names, load_templates("imagenet"))
    assert len(ps.templates) == 80 and ps.sentences(1)[0] == "a bad photo of a non-face object."
    assert PromptSet(labels, names, load_templates("simple")).hash != ps.hash
    with pytest.raises(ValueError, match="neither a shipped set"):
        load_templates(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="exactly one"):
        PromptSet(("a",), ("a",), ("no placeholder",))
    with pytest.raises(ValueError, match="duplicate class labels"):
        PromptSet(("a", "a"), ("a", "a"), ("{}",))
