"""Property tests for the PHI-S normalization variants (arXiv 2410.01680), float64 throughout.

Shape legend: N tokens, D channels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from stages.normalize import variants
from stages.normalize.losses import LossKind
from stages.normalize import normalizer as normalizer_mod
from stages.normalize.normalizer import (
    NORMALIZER_VERSION,
    Normalizer,
    NormalizerMismatchError,
    fit_normalizer,
    load_or_fit,
)
from stages.normalize.variants import NormVariant, eigh_descending, fit_affine, sign_canonical
from stages.stats import Moments

AFFINE = [v for v in NormVariant if v.is_affine]
WHITENING = [NormVariant.PCA_W, NormVariant.ZCA, NormVariant.HCA]
WHITENING_NF = [NormVariant.PCA_W_NF, NormVariant.ZCA_NF, NormVariant.HCA_NF]


def correlated_data(n: int, d: int, *, seed: int) -> np.ndarray:
    """Correlated Gaussian tokens with a spread-out, well-separated spectrum and a non-zero mean."""
    rng = np.random.default_rng(seed)
    mix_DD = np.eye(d) + 0.5 * rng.standard_normal((d, d)) / np.sqrt(d)
    scale_D = np.geomspace(5.0, 0.05, d)
    return rng.standard_normal((n, d)) * scale_D @ mix_DD + rng.normal(0, 3, d)


def random_moments(d: int, *, seed: int, count: int = 10_000) -> Moments:
    """Random statistics without sampling: Σ = B diag(s) Bᵀ, B a perturbed identity."""
    rng = np.random.default_rng(seed)
    B_DD = np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)
    cov_DD = (B_DD * np.geomspace(10.0, 0.01, d)) @ B_DD.T
    return Moments(count, rng.normal(0, 2, d), count * 0.5 * (cov_DD + cov_DD.T))


def output_cov(norm, m: Moments) -> np.ndarray:
    """Covariance of the normalized targets, exactly from the fitted statistics: W Σ Wᵀ."""
    return norm.W_DD @ m.covariance() @ norm.W_DD.T


@pytest.mark.parametrize("width", [384, 768, 1152, 1280, 1536])
def test_phis_unit_variance_and_hca_identity(width: int) -> None:
    m = random_moments(width, seed=width)
    phis = fit_normalizer("phis", m)
    np.testing.assert_allclose(np.diag(output_cov(phis, m)), 1.0, rtol=0, atol=1e-6)
    alpha = (np.trace(m.covariance()) / width) ** -0.5
    # W = α H Uᵀ with H, U orthogonal, so W Wᵀ = α² I
    np.testing.assert_allclose(phis.W_DD @ phis.W_DD.T, alpha**2 * np.eye(width), atol=1e-10 * alpha**2)
    hca = fit_normalizer("hca", m)
    assert phis.construction and hca.construction == phis.construction
    np.testing.assert_allclose(output_cov(hca, m), np.eye(width), atol=1e-8)


@pytest.mark.parametrize("width", [64, 384])
@pytest.mark.parametrize("variant", WHITENING)
def test_whitening_gives_identity_covariance(variant: NormVariant, width: int) -> None:
    m = Moments.from_batch(correlated_data(4 * width, width, seed=1))
    norm = fit_normalizer(variant, m)
    np.testing.assert_allclose(output_cov(norm, m), np.eye(width), atol=1e-9)


def test_standardize_and_global_std_on_data() -> None:
    y_ND = correlated_data(3000, 96, seed=2)
    m = Moments.from_batch(y_ND)
    std = fit_normalizer("standardize", m)
    np.testing.assert_allclose(np.diag(output_cov(std, m)), 1.0, atol=1e-12)
    z_ND = std.apply(y_ND)
    np.testing.assert_allclose(z_ND.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z_ND.var(axis=0), 1.0, atol=1e-12)
    g = fit_normalizer("global_std", m)
    zg_ND = g.apply(y_ND)
    assert abs(zg_ND.mean()) < 1e-12 and abs(zg_ND.var() - 1.0) < 1e-12
    assert np.allclose(g.mu_D, y_ND.mean()) and np.allclose(np.diag(g.W_DD), 1 / y_ND.std())
    # global_std is one scalar: channel variances keep their ratios
    assert zg_ND.var(axis=0).max() / zg_ND.var(axis=0).min() > 10


def test_phis_on_data_every_channel_unit_variance() -> None:
    y_ND = correlated_data(2000, 384, seed=3)
    norm = fit_normalizer("phis", Moments.from_batch(y_ND))
    np.testing.assert_allclose(norm.apply(y_ND).var(axis=0), 1.0, atol=1e-10)


@pytest.mark.parametrize("variant", list(NormVariant))
def test_inverse_of_apply_is_identity(variant: NormVariant) -> None:
    y_ND = correlated_data(800, 128, seed=4)
    norm = fit_normalizer(variant, Moments.from_batch(y_ND))
    np.testing.assert_allclose(norm.W_DD @ norm.W_inv_DD, np.eye(128), atol=1e-12)
    np.testing.assert_allclose(norm.invert(norm.apply(y_ND)), y_ND, rtol=0, atol=1e-11 * np.abs(y_ND).max())
    if not variant.is_affine:
        np.testing.assert_array_equal(norm.apply(y_ND), y_ND)


@pytest.mark.parametrize("variant", AFFINE)
def test_refit_is_bit_identical(variant: NormVariant) -> None:
    m = random_moments(96, seed=5)
    a, b = fit_normalizer(variant, m), fit_normalizer(variant, m)
    for name in ("mu_D", "W_DD", "W_inv_DD"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_sign_canonical_ignores_eigenvector_signs() -> None:
    rng = np.random.default_rng(6)
    _, U_DD = eigh_descending(random_moments(64, seed=6).covariance())
    flips_D = rng.choice([-1.0, 1.0], size=64)
    np.testing.assert_array_equal(sign_canonical(U_DD * flips_D), U_DD)
    pivots = np.argmax(np.abs(U_DD), axis=0)
    assert np.all(U_DD[pivots, np.arange(64)] > 0)
    tie_D = np.array([[-0.5], [0.5], [0.5], [-0.5]])  # tie: lowest index decides
    np.testing.assert_array_equal(sign_canonical(tie_D), -tie_D)


@pytest.mark.parametrize("variant", WHITENING + [NormVariant.PHIS])
def test_fit_with_flipped_eigenvectors_gives_same_W(variant: NormVariant, monkeypatch) -> None:
    m = random_moments(64, seed=7)
    ref = fit_affine(variant, m)
    real_eigh = np.linalg.eigh
    flips_D = np.random.default_rng(7).choice([-1.0, 1.0], size=64)

    def flipped_eigh(a):
        lam, U = real_eigh(a)
        return lam, U * flips_D

    monkeypatch.setattr(variants.np.linalg, "eigh", flipped_eigh)
    got = fit_affine(variant, m)
    np.testing.assert_array_equal(got.W_DD, ref.W_DD)
    np.testing.assert_array_equal(got.W_inv_DD, ref.W_inv_DD)


def test_eigenvalues_sorted_descending() -> None:
    lam_D, U_DD = eigh_descending(random_moments(48, seed=8).covariance())
    assert np.all(np.diff(lam_D) <= 0)
    np.testing.assert_allclose(U_DD.T @ U_DD, np.eye(48), atol=1e-12)


@pytest.mark.parametrize("variant", AFFINE)
def test_moments_merged_from_shards_fit_the_same_normalizer(variant: NormVariant) -> None:
    y_ND = correlated_data(2000, 64, seed=9)
    cuts = [0, 137, 600, 601, 1500, 2000]
    merged = Moments.merge_all([Moments.from_batch(y_ND[a:b]) for a, b in zip(cuts, cuts[1:])])
    whole = Moments.from_batch(y_ND)
    assert merged.count == whole.count
    np.testing.assert_allclose(merged.mean_D, whole.mean_D, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(merged.m2_DD, whole.m2_DD, rtol=0, atol=1e-10 * np.abs(whole.m2_DD).max())
    a, b = fit_normalizer(variant, merged), fit_normalizer(variant, whole)
    np.testing.assert_allclose(a.mu_D, b.mu_D, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.W_DD, b.W_DD, rtol=0, atol=1e-8 * np.abs(b.W_DD).max())
    np.testing.assert_allclose(a.W_inv_DD, b.W_inv_DD, rtol=0, atol=1e-8 * np.abs(b.W_inv_DD).max())


@pytest.fixture(scope="module")
def rank_deficient() -> tuple[np.ndarray, Moments]:
    """Rank 300 of 768 plus a dead (constant) channel."""
    rng = np.random.default_rng(10)
    A_RD = rng.standard_normal((300, 768))
    A_RD[:, 5] = 0.0
    y_ND = rng.standard_normal((700, 300)) @ A_RD + rng.normal(0, 1, 768)
    y_ND[:, 5] = 3.0
    return y_ND, Moments.from_batch(y_ND)


@pytest.mark.parametrize("variant", list(NormVariant))
def test_rank_deficient_teacher(variant: NormVariant, rank_deficient) -> None:
    y_ND, m = rank_deficient
    norm = fit_normalizer(variant, m)
    for arr in (norm.mu_D, norm.W_DD, norm.W_inv_DD):
        assert np.all(np.isfinite(arr))
    z_ND = norm.apply(y_ND)
    assert np.all(np.isfinite(z_ND))
    np.testing.assert_allclose(norm.invert(z_ND), y_ND, rtol=0, atol=1e-9 * np.abs(y_ND).max())
    cov_DD = output_cov(norm, m)
    if variant in WHITENING_NF:  # the 300 directions above the floor are white, the rest ~0
        assert abs(np.trace(cov_DD) - 300) < 1e-6
    if variant in WHITENING:  # paper-exact: the null space (eigenvalues ~1e-12, roundoff) sits at the guard
        assert abs(np.trace(cov_DD) - 300) < 1e-2
    if variant in (NormVariant.PCA_W, NormVariant.PCA_W_NF):
        np.testing.assert_allclose(np.diag(cov_DD)[:300], 1.0, atol=1e-6 if variant is NormVariant.PCA_W else 1e-9)
    if variant is NormVariant.PHIS:
        np.testing.assert_allclose(np.diag(cov_DD), 1.0, atol=1e-9)


def test_variant_properties_and_parse() -> None:
    assert [v.value for v in NormVariant] == ["mse", "cosine", "hyb_mse", "hyb_smoothl1", "global_std",
                                              "standardize", "pca_w", "zca", "hca", "phis", "ada_mse", "ada_phis",
                                              "standardize_nf", "pca_w_nf", "zca_nf", "hca_nf"]
    assert NormVariant.HYB_SMOOTHL1.loss is LossKind.HYB_SMOOTHL1 and not NormVariant.COSINE.is_affine
    assert all(v.loss is LossKind.MSE for v in AFFINE) and len(AFFINE) == 11
    assert sum(v.in_paper for v in NormVariant) == 12  # the paper's ten (Table 1) + AdaLoss's two (Table 12)
    assert NormVariant.ADA_MSE.fit_as is NormVariant.MSE and not NormVariant.ADA_MSE.is_affine
    assert NormVariant.ADA_PHIS.fit_as is NormVariant.PHIS and NormVariant.ADA_PHIS.adaptive
    assert NormVariant.ZCA.floored_alternative is NormVariant.ZCA_NF and NormVariant.PHIS.floored_alternative is None
    with pytest.raises(ValueError, match="unknown normalization variant 'phi'.*phis"):
        NormVariant.parse("phi")


def test_variant_is_a_typer_option() -> None:
    app = typer.Typer()
    seen: list[NormVariant] = []

    @app.command()
    def main(norm: NormVariant = typer.Option(NormVariant.MSE, "--norm")) -> None:
        seen.append(norm)

    assert CliRunner().invoke(app, ["--norm", "phis"]).exit_code == 0
    assert seen == [NormVariant.PHIS]
    assert CliRunner().invoke(app, ["--norm", "bogus"]).exit_code != 0


def test_loss_side_variants_fit_identity() -> None:
    norm = fit_normalizer("cosine", random_moments(12, seed=11))
    np.testing.assert_array_equal(norm.W_DD, np.eye(12))
    np.testing.assert_array_equal(norm.mu_D, np.zeros(12))


def test_fit_errors() -> None:
    m = random_moments(30, seed=12)
    with pytest.raises(ValueError, match="width 30.*28 below and 32 above"):
        fit_normalizer("phis", m)
    with pytest.raises(ValueError, match="empty statistics"):
        fit_normalizer("zca", Moments.empty(8))
    const = Moments.from_batch(np.ones((5, 8)))
    for variant in AFFINE:
        with pytest.raises(ValueError, match="constant"):
            fit_normalizer(variant, const)
    with pytest.raises(ValueError, match="eig_floor"):
        fit_normalizer("zca", random_moments(8, seed=1), eig_floor=0.0)


def test_torch_apply_invert_match_numpy() -> None:
    y_ND = correlated_data(300, 64, seed=13)
    norm = fit_normalizer("phis", Moments.from_batch(y_ND))
    y_BND = torch.from_numpy(y_ND).reshape(3, 100, 64)
    z_BND = norm.apply(y_BND)
    assert z_BND.dtype == torch.float64 and z_BND.shape == (3, 100, 64)
    np.testing.assert_allclose(z_BND.reshape(300, 64).numpy(), norm.apply(y_ND), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm.invert(z_BND), y_BND)
    z32 = norm.apply(y_BND.float())
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32, z_BND.float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="width 64"):
        norm.apply(torch.zeros(2, 63))


@pytest.mark.parametrize("variant", ["phis", "standardize", "hyb_smoothl1"])
def test_save_load_bit_identical(variant: str, tmp_path) -> None:
    norm = fit_normalizer(variant, random_moments(96, seed=14), hadamard_cache=tmp_path / "hadamard")
    path = tmp_path / "n" / f"{variant}.safetensors"
    norm.save(path)
    back = Normalizer.load(path)
    for name in ("mu_D", "W_DD", "W_inv_DD"):
        np.testing.assert_array_equal(getattr(back, name), getattr(norm, name))
    assert (back.variant, back.stats_hash, back.construction, back.eig_floor) == (
        norm.variant, norm.stats_hash, norm.construction, norm.eig_floor)
    assert back.meta["normalizer_version"] == str(NORMALIZER_VERSION)
    if variant == "phis":
        assert (tmp_path / "hadamard" / "96.npy").exists()


def test_load_or_fit_reuses_and_refuses(tmp_path, monkeypatch) -> None:
    m = random_moments(64, seed=15)
    path = tmp_path / "phis.safetensors"
    first = load_or_fit(path, "phis", m)
    assert path.exists()
    refit = fit_normalizer("phis", m)  # refitting identical statistics is bit-identical
    np.testing.assert_array_equal(refit.W_DD, first.W_DD)

    def no_refit(*args, **kwargs):
        raise AssertionError("load_or_fit recomputed a stored normalizer")

    monkeypatch.setattr(normalizer_mod, "fit_affine", no_refit)
    again = load_or_fit(path, NormVariant.PHIS, m)
    np.testing.assert_array_equal(again.W_DD, first.W_DD)
    other = random_moments(64, seed=16)
    with pytest.raises(NormalizerMismatchError) as err:
        load_or_fit(path, "phis", other)
    for part in (m.content_hash(), other.content_hash(), str(path)):
        assert part in str(err.value)
    with pytest.raises(NormalizerMismatchError, match="variant 'phis'.*'zca'"):
        load_or_fit(path, "zca", m)
    with pytest.raises(NormalizerMismatchError, match="eig_floor"):
        load_or_fit(path, "phis", m, eig_floor=1e-3)


def test_load_refuses_other_version(tmp_path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "old.safetensors"
    save_file({"mu_D": np.zeros(4), "W_DD": np.eye(4), "W_inv_DD": np.eye(4)}, str(path),
              metadata={"normalizer_version": "0", "variant": "mse"})
    with pytest.raises(NormalizerMismatchError, match="version '0'"):
        Normalizer.load(path)


# ---- issue 11: rotation-consistent signs, noise-aware floor, what the normalizer file records ------------

def _random_rotation(d: int, seed: int) -> np.ndarray:
    q_DD, r_DD = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q_DD * np.sign(np.diag(r_DD))


@pytest.mark.parametrize("variant", [NormVariant.PHIS, NormVariant.HCA, NormVariant.PCA_W])
def test_fit_is_rotation_consistent(variant: NormVariant) -> None:
    """Fitting on rotated statistics (Qμ, QΣQᵀ) and applying to Qy gives the targets of fitting on (μ, Σ)
    and applying to y (distinct eigenvalues): the sign rule u_iᵀμ ≥ 0 is rotation-invariant."""
    d = 64
    m = random_moments(d, seed=21)
    Q_DD = _random_rotation(d, 22)
    rotated = Moments(m.count, Q_DD @ m.mean_D, Q_DD @ m.m2_DD @ Q_DD.T)
    y_ND = np.random.default_rng(23).normal(size=(50, d)) * 2.0 + m.mean_D
    a, b = fit_normalizer(variant, m), fit_normalizer(variant, rotated)
    diff = np.abs(a.apply(y_ND) - b.apply(y_ND @ Q_DD.T)).max()
    assert diff < 1e-9, diff
    # the old rule (largest entry positive) is not rotation-consistent: some targets flip sign
    lam_D, U_DD = np.linalg.eigh(m.covariance())
    lam_r, U_r = np.linalg.eigh(rotated.covariance())
    old_a, old_b = sign_canonical(U_DD), sign_canonical(U_r)
    assert np.abs(old_a.T @ (y_ND - m.mean_D).T - old_b.T @ ((y_ND - m.mean_D) @ Q_DD.T).T).max() > 1.0


def test_sign_rule_follows_the_mean_and_falls_back_when_negligible() -> None:
    U_DD = np.array([[0.6, -0.8], [0.8, 0.6]])
    mu_D = np.array([-1.0, 0.0])  # u0ᵀμ = -0.6 < 0 -> flip; u1ᵀμ = 0.8 > 0 -> keep
    np.testing.assert_array_equal(sign_canonical(U_DD, mu_D), U_DD * [-1.0, 1.0])
    # μ orthogonal to u1 (negligible projection): u1's largest-magnitude entry (-0.8) is made positive
    mu_D = np.array([0.6, 0.8])
    np.testing.assert_array_equal(sign_canonical(U_DD, mu_D), U_DD * [1.0, -1.0])
    np.testing.assert_array_equal(sign_canonical(U_DD, np.zeros(2)), sign_canonical(U_DD))


def test_storage_noise_var_matches_measured_bf16_rounding() -> None:
    """The noise model E[y_c²]·2^-2k/24 against the store's own rounding (keepbits 7, bf16)."""
    from store_schema.codecs import CodecSpec, round_as_stored

    y_ND = correlated_data(20_000, 8, seed=24).astype(np.float32)
    err_ND = round_as_stored(y_ND, CodecSpec(keepbits=7)).astype(np.float64) - y_ND
    measured_D = np.mean(err_ND ** 2, axis=0)
    predicted_D = variants.storage_noise_var(Moments.from_batch(y_ND), 7)
    np.testing.assert_allclose(measured_D, predicted_D, rtol=0.35)
    assert np.all(variants.storage_noise_var(Moments.from_batch(y_ND), None) == 0.0)


@pytest.mark.parametrize("variant", WHITENING_NF + [NormVariant.STANDARDIZE_NF])
def test_noise_floor_binds_on_a_noise_only_direction(variant: NormVariant) -> None:
    """A direction whose stored variance is only storage noise is not lifted to unit variance: its
    variance after the map is at most 1 / NOISE_FLOOR_FACTOR (hand-built: channel 0 is a constant 100
    plus rounding noise, the others carry signal)."""
    k = 7
    mean_D = np.array([100.0, 0.0, 0.0, 0.0])
    noise0 = (100.0 ** 2) * 2.0 ** (-2 * k) / 24.0  # the noise variance keepbits 7 implies on channel 0
    cov_DD = np.diag([noise0, 1.0, 2.0, 3.0])
    m = Moments(1000, mean_D, 1000 * cov_DD)
    with_floor = fit_normalizer(variant, m, keepbits=k)
    without = fit_normalizer(variant, m, keepbits=None)
    paper = fit_normalizer(NormVariant(variant.value.removesuffix("_nf")), m, keepbits=k)  # no floor at all
    assert float(paper.W_DD[:, 0] @ paper.W_DD[:, 0]) * noise0 == pytest.approx(1.0, rel=1e-6)
    out_with, out_without = output_cov(with_floor, m), output_cov(without, m)
    noise_share_with = float(with_floor.W_DD[:, 0] @ with_floor.W_DD[:, 0]) * noise0
    noise_share_without = float(without.W_DD[:, 0] @ without.W_DD[:, 0]) * noise0
    assert noise_share_without == pytest.approx(1.0, rel=1e-6)  # the old floor whitens noise to unit variance
    # (E[y²] = μ² + noise, so the implied noise is a hair above noise0: rel 1e-4)
    assert noise_share_with == pytest.approx(1.0 / variants.NOISE_FLOOR_FACTOR, rel=1e-4)
    assert np.trace(out_with) == pytest.approx(3.0 + 1.0 / variants.NOISE_FLOOR_FACTOR, rel=1e-4)
    assert np.trace(out_without) == pytest.approx(4.0, rel=1e-6)
    assert with_floor.floor_D is not None and with_floor.floor_D.max() == pytest.approx(
        variants.NOISE_FLOOR_FACTOR * noise0, rel=1e-4)


def test_normalizer_file_records_split_floor_and_construction(tmp_path) -> None:
    m = random_moments(12, seed=25)
    path = tmp_path / "n.safetensors"
    norm = load_or_fit(path, "hca_nf", m, keepbits=7, split="train")
    back = Normalizer.load(path)
    assert (back.split, back.keepbits, back.noise_floor_factor) == ("train", 7, variants.NOISE_FLOOR_FACTOR)
    assert back.construction == norm.construction and back.construction
    np.testing.assert_array_equal(back.floor_D, norm.floor_D)
    assert NORMALIZER_VERSION == 3
    load_or_fit(tmp_path / "p.safetensors", "phis", m, keepbits=7)
    assert Normalizer.load(tmp_path / "p.safetensors").floor_D is None  # PHI-S divides by no eigenvalue
    for key, kw in (("split", {"keepbits": 7, "split": "all"}), ("keepbits", {"keepbits": None, "split": "train"})):
        with pytest.raises(NormalizerMismatchError, match=key):
            load_or_fit(path, "hca_nf", m, **kw)


# ---- issue 21: the paper's exact formulas; the floored fits under their own names -----------------------

@pytest.mark.parametrize("variant", WHITENING + [NormVariant.STANDARDIZE])
def test_paper_exact_whitening_reaches_identity_on_a_steep_spectrum(variant: NormVariant) -> None:
    """A spectrum reaching 1e-7 × its mean eigenvalue (far below the old floor of 1e-6 × mean, far above
    the numerical guard) is whitened to the identity within 1e-6: no eigenvalue is floored."""
    d = 64
    top_D = np.geomspace(5.0, 1e-5, d - 1)
    lam_D = np.append(top_D, 1e-7 * top_D.sum() / (d - 1e-7))  # smallest = 1e-7 × the mean, exactly
    U_DD = _random_rotation(d, 31) if variant is not NormVariant.STANDARDIZE else np.eye(d)
    cov_DD = (U_DD * lam_D) @ U_DD.T
    m = Moments(1000, np.random.default_rng(32).normal(size=d), 1000 * 0.5 * (cov_DD + cov_DD.T))
    assert lam_D.min() / (np.trace(cov_DD) / d) == pytest.approx(1e-7, rel=1e-6)
    norm = fit_normalizer(variant, m, keepbits=7)  # the storage precision does not floor a paper variant
    np.testing.assert_allclose(output_cov(norm, m), np.eye(d), rtol=0, atol=1e-6)
    floored = fit_normalizer(NormVariant(variant.value + "_nf"), m, keepbits=7)
    assert np.trace(output_cov(floored, m)) < d - 0.5  # floored: the smallest direction(s) below unit variance
    assert norm.floor_D.max() < 1e-12 * lam_D.max()  # the guard: far below any real eigenvalue


def test_version_2_fits_of_the_floored_variants_are_refused_not_reused(tmp_path) -> None:
    """A version-2 file of zca (then noise-floored) must not be read as the paper's zca; a version-2 PHI-S
    (whose fit did not change) still reads."""
    from safetensors.numpy import save_file

    m = random_moments(8, seed=33)
    for variant in ("zca", "phis"):
        norm = fit_normalizer(variant if variant == "phis" else "zca_nf", m)
        tensors = {"mu_D": norm.mu_D, "W_DD": norm.W_DD, "W_inv_DD": norm.W_inv_DD}
        meta = {**norm.meta, "variant": variant, "normalizer_version": "2"}
        save_file(tensors, str(tmp_path / f"{variant}.safetensors"), metadata=meta)
    with pytest.raises(NormalizerMismatchError, match="version-2 'zca'.*noise-aware floor.*zca_nf"):
        load_or_fit(tmp_path / "zca.safetensors", "zca", m)
    assert Normalizer.load(tmp_path / "phis.safetensors").variant is NormVariant.PHIS


def test_ada_variants_train_against_their_base_normalizers() -> None:
    m = random_moments(16, seed=34)
    a, b = fit_normalizer("ada_phis", m), fit_normalizer("phis", m)
    assert a.variant is NormVariant.PHIS and np.array_equal(a.W_DD, b.W_DD)
    assert variants.kind_variant("ada_phis", "patches", "cosine") is NormVariant.PHIS
    assert variants.kind_variant("ada_mse", "summary", "variant") is NormVariant.MSE
