"""Hadamard constructions used by Hadamard whitening and PHI-S (arXiv 2410.01680)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.normalize.hadamard import find_construction, hadamard_matrix, nearest_valid_widths

WIDTHS = [4, 8, 12, 20, 64, 96, 192, 256, 384, 512, 640, 768, 1024, 1152, 1280, 1360, 1408, 1536, 1664,
          2048, 3072]


def _assert_normalized_hadamard(H_CC: np.ndarray, width: int) -> None:
    assert H_CC.shape == (width, width) and H_CC.dtype == np.float64
    np.testing.assert_array_equal(np.abs(H_CC), np.full((width, width), 1.0 / np.sqrt(width)))
    # exact integer check: the ±1 matrix times its transpose is C·I (float32 is exact for these sums)
    S_CC = np.rint(H_CC * np.sqrt(width)).astype(np.float32)
    np.testing.assert_array_equal(S_CC @ S_CC.T, width * np.eye(width, dtype=np.float32))
    np.testing.assert_allclose(H_CC @ H_CC.T, np.eye(width), atol=1e-13)


@pytest.mark.parametrize("width", WIDTHS)
def test_normalized_hadamard_for_every_teacher_width(width: int) -> None:
    H_CC, name = hadamard_matrix(width)
    _assert_normalized_hadamard(H_CC, width)
    assert name


@pytest.mark.parametrize("width, name", [
    (384, "sylvester(32)⊗paley1(11)"),
    (1152, "sylvester(32)⊗paley2(17)"),
    (1280, "sylvester(64)⊗paley1(19)"),
    (1024, "sylvester(1024)"),
    (12, "paley1(11)"),
    (1360, "paley1(19)⊗paley1(67)"),  # needs two Paley factors
])
def test_construction_names(width: int, name: str) -> None:
    assert hadamard_matrix(width)[1] == name


def test_paley2_alone_is_hadamard() -> None:
    H_CC, name = hadamard_matrix(36)  # 36 = 2 (17 + 1), 17 ≡ 1 mod 4
    assert name == "paley2(17)"
    _assert_normalized_hadamard(H_CC, 36)


@pytest.mark.parametrize("width", [1030, 6, 1028, 52])
def test_width_without_construction_names_neighbours(width: int) -> None:
    below, above = nearest_valid_widths(width)
    assert find_construction(below) is not None and find_construction(above) is not None
    assert below < width < above
    with pytest.raises(ValueError, match=rf"width {width}\b.*{below} below and {above} above"):
        hadamard_matrix(width)


def test_1030_neighbours() -> None:
    assert nearest_valid_widths(1030) == (1024, 1032)


def test_cache_round_trip(tmp_path) -> None:
    H_CC, name = hadamard_matrix(768, cache_dir=tmp_path)
    stored = np.load(tmp_path / "768.npy")
    assert stored.dtype == np.int8 and set(np.unique(stored)) == {-1, 1}
    assert json.loads((tmp_path / "768.json").read_text())["construction"] == name
    H2_CC, name2 = hadamard_matrix(768, cache_dir=tmp_path)
    np.testing.assert_array_equal(H_CC, H2_CC)
    assert name2 == name


def test_cache_is_authoritative_and_verified(tmp_path) -> None:
    # a different valid Hadamard matrix in the cache is what gets used (fits must not change under us)
    H_CC, _ = hadamard_matrix(12)
    other = (np.rint(H_CC * np.sqrt(12)).astype(np.int8))[::-1].copy()  # row permutation: still Hadamard
    np.save(tmp_path / "12.npy", other)
    (tmp_path / "12.json").write_text(json.dumps({"width": 12, "construction": "custom"}))
    H2_CC, name = hadamard_matrix(12, cache_dir=tmp_path)
    assert name == "custom"
    np.testing.assert_array_equal(H2_CC, other / np.sqrt(12))
    broken = other.copy()
    broken[3, 4] *= -1
    np.save(tmp_path / "12.npy", broken)
    with pytest.raises(ValueError, match="not an int8 Hadamard"):
        hadamard_matrix(12, cache_dir=tmp_path)
