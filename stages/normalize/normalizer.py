"""A fitted target normalizer (PHI-S, arXiv 2410.01680): apply, invert, persist, reuse.

All variants share one kernel: apply y' = (y − μ) Wᵀ, invert y = y' W⁻ᵀ + μ (row vectors), so the
training loop never branches on the variant. Eigendecompositions of nearly equal eigenvalues are
unstable and different valid Hadamard matrices give different targets, so a fit is data: it is stored
(safetensors, with the variant, format version, relative eigenvalue floor, the storage precision its
noise floor came from and the floor applied per direction, Hadamard construction, the manifest split the
statistics cover and the sha256 of those statistics) and reused, never silently recomputed.
``load_or_fit`` refuses a stored fit that came from other statistics or options.

Shape legend: D channels; ``...`` any leading dimensions (tokens, batch, grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import safe_open

from store_schema import location

from stages.normalize.variants import (DEFAULT_EIG_FLOOR, NOISE_FLOOR_FACTOR, NormVariant, fit_affine,
                                      storage_noise_var)
from stages.stats import Moments
from store_schema.errors import DamagedFileError
from store_schema.io_errors import write_guard

# 2: noise-aware floor (keepbits, floor_D) and the fitted split. 3: standardize / pca_w / zca / hca are the
# paper's exact formulas; their version-2 fits were noise-floored (now standardize_nf / pca_w_nf / ...)
NORMALIZER_VERSION = 3
# version-2 files still read as version 3: those of the variants whose fit did not change between them
_V2_UNCHANGED = frozenset({"mse", "cosine", "hyb_mse", "hyb_smoothl1", "global_std", "phis"})
_TENSORS = ("mu_D", "W_DD", "W_inv_DD")

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class NormalizerMismatchError(ValueError):
    """A stored normalizer does not match the statistics or options it was asked for."""


@dataclass(eq=False)
class Normalizer:
    """Fitted (μ_D, W_DD, W_inv_DD), float64, plus where they came from.

    ``stats_hash`` is ``Moments.content_hash()`` of the source statistics; ``construction`` names the
    Hadamard matrix (hca, phis) or is None; ``eig_floor`` is the relative eigenvalue floor of the fit;
    ``keepbits`` the stored precision the noise floor was derived from (None: lossless, no noise floor)
    and ``noise_floor_factor`` its multiple of the storage noise variance;
    ``floor_D`` the variance floor applied per eigen-direction / channel (None for variants without one);
    ``split`` the manifest split the statistics cover ("train", or "all" for every image).
    """

    variant: NormVariant
    mu_D: np.ndarray
    W_DD: np.ndarray
    W_inv_DD: np.ndarray
    stats_hash: str
    construction: str | None = None
    eig_floor: float = DEFAULT_EIG_FLOOR
    keepbits: int | None = None
    noise_floor_factor: float = NOISE_FLOOR_FACTOR
    floor_D: np.ndarray | None = None
    split: str = "all"
    _torch_cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = field(
        default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.variant = NormVariant.parse(self.variant)
        d = self.mu_D.shape[0]
        for name in _TENSORS:
            arr = getattr(self, name)
            assert arr.dtype == np.float64, f"{name} must be float64, got {arr.dtype}"
            assert arr.shape == ((d,) if name == "mu_D" else (d, d)), f"{name} has shape {arr.shape}"

    @property
    def dim(self) -> int:
        return int(self.mu_D.shape[0])

    @property
    def meta(self) -> dict[str, str]:
        """The metadata stored with the tensors."""
        return {
            "variant": self.variant.value,
            "normalizer_version": str(NORMALIZER_VERSION),
            "stats_hash": self.stats_hash,
            "construction": self.construction or "",
            "eig_floor": repr(float(self.eig_floor)),
            "keepbits": "" if self.keepbits is None else str(int(self.keepbits)),
            "noise_floor_factor": repr(float(self.noise_floor_factor)),
            "split": self.split,
            "dim": str(self.dim),
        }

    def _torch(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = like.dtype if like.is_floating_point() else torch.float32
        key = (like.device, dtype)
        if key not in self._torch_cache:
            self._torch_cache[key] = tuple(
                torch.from_numpy(np.ascontiguousarray(a)).to(device=like.device, dtype=dtype)
                for a in (self.mu_D, self.W_DD.T, self.W_inv_DD.T))
        return self._torch_cache[key]

    def _numpy(self, like: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64
        return self.mu_D.astype(dtype), self.W_DD.T.astype(dtype), self.W_inv_DD.T.astype(dtype)

    def _check(self, y: Any) -> None:
        if y.shape[-1] != self.dim:
            raise ValueError(f"normalizer of width {self.dim} got an array of shape {tuple(y.shape)}")

    def apply(self, y: ArrayT) -> ArrayT:
        """Teacher space → normalized space: (y − μ) Wᵀ over the last dimension (numpy or torch).

        Computes in the input's float dtype (float32 for integer input; numpy integer input: float64).
        """
        self._check(y)
        mu, W_t, _ = self._torch(y) if isinstance(y, torch.Tensor) else self._numpy(y)
        return (y - mu) @ W_t

    def invert(self, y_norm: ArrayT) -> ArrayT:
        """Normalized space → teacher space: y' W⁻ᵀ + μ over the last dimension (numpy or torch)."""
        self._check(y_norm)
        mu, _, W_inv_t = self._torch(y_norm) if isinstance(y_norm, torch.Tensor) else self._numpy(y_norm)
        return y_norm @ W_inv_t + mu

    def save(self, path: Path) -> None:
        """Write the tensors and metadata to a safetensors file (atomically, parents created)."""
        from safetensors.numpy import save

        tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in _TENSORS}
        if self.floor_D is not None:
            tensors["floor_D"] = np.ascontiguousarray(self.floor_D, np.float64)
        data = save(tensors, metadata={**self.meta, "digest": _tensors_digest(tensors)})
        with write_guard(path, "the fitted normalizer", kept="nothing was trained with it yet"):
            location.write_bytes(location.as_location(path), data)  # local (atomic) or URL

    @classmethod
    def load(cls, path: Path) -> "Normalizer":
        """Read a normalizer written by ``save``; refuses other format versions. A truncated or altered
        file (safetensors cannot parse it, or its tensors fail the crc32c recorded at save time) raises
        DamagedFileError naming the file and how to recover; it is never refitted silently."""
        path = location.as_location(path)
        if location.is_url(path):  # safetensors reads files: bring an object-store copy to a local one
            import tempfile

            with tempfile.NamedTemporaryFile(suffix=".safetensors") as tmp:
                tmp.write(location.read_bytes(path))
                tmp.flush()
                return cls._load_local(Path(tmp.name), shown=path)
        return cls._load_local(path, shown=path)

    @classmethod
    def _load_local(cls, local: Path, *, shown: object) -> "Normalizer":
        path = shown
        try:
            with safe_open(str(local), framework="np") as fh:
                meta = fh.metadata() or {}
                _check_version(path, meta)
                missing = [name for name in _TENSORS if name not in fh.keys()]
                if missing:
                    raise _damaged_normalizer(path, f"tensors {missing} are missing")
                tensors = {name: fh.get_tensor(name) for name in _TENSORS}
                floor_D = fh.get_tensor("floor_D") if "floor_D" in fh.keys() else None
        except (NormalizerMismatchError, DamagedFileError):
            raise
        except Exception as e:  # safetensors raises its own SafetensorError (not exported)
            raise _damaged_normalizer(path, f"safetensors cannot read it ({str(e).splitlines()[0][:160]})") from e
        stored = tensors if floor_D is None else {**tensors, "floor_D": floor_D}
        if "digest" in meta and _tensors_digest(stored) != meta["digest"]:
            raise _damaged_normalizer(path, f"its tensors do not match the checksum recorded when it was "
                                            f"written ({meta['digest']} recorded, {_tensors_digest(stored)} found)")
        try:
            dims_ok = all(t.dtype == np.float64 for t in tensors.values()) and tensors["W_DD"].shape == \
                tensors["W_inv_DD"].shape == (len(tensors["mu_D"]),) * 2
        except (TypeError, AttributeError):
            dims_ok = False
        if not dims_ok or "variant" not in meta or "stats_hash" not in meta:
            raise _damaged_normalizer(path, "its tensors or metadata do not describe a normalizer")
        return cls(NormVariant.parse(meta["variant"]), stats_hash=meta["stats_hash"],
                   construction=meta["construction"] or None, eig_floor=float(meta["eig_floor"]),
                   keepbits=int(meta["keepbits"]) if meta["keepbits"] else None,
                   noise_floor_factor=float(meta["noise_floor_factor"]), floor_D=floor_D,
                   split=meta["split"], **tensors)


def _check_version(path: object, meta: dict[str, str]) -> None:
    """Refuse a file of another format version, except a version-2 fit of a variant whose formula did
    not change in version 3. A version-2 standardize / pca_w / zca / hca was noise-floored: it is refused
    (never silently reused as the paper-exact fit of the same name), with what to do instead."""
    version, variant = meta.get("normalizer_version"), meta.get("variant", "")
    if version == str(NORMALIZER_VERSION) or (version == "2" and variant in _V2_UNCHANGED):
        return
    if version == "2":
        raise NormalizerMismatchError(
            f"{path} is a version-2 {variant!r} normalizer, fitted with the noise-aware floor; since version "
            f"{NORMALIZER_VERSION} {variant!r} means the PHI-S paper's exact formula and the floored fit is "
            f"{variant}_nf. Delete the file to refit the paper's {variant} (runs trained with it trained the "
            f"floored targets: retrain them as {variant}_nf to keep those targets)")
    raise NormalizerMismatchError(f"{path} has normalizer version {version!r}, this code reads {NORMALIZER_VERSION}")


def _tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    """crc32c over the tensors' names, shapes and bytes (what a normalizer file records and checks)."""
    import crc32c

    crc = 0
    for name in (*_TENSORS, "floor_D"):
        if name not in tensors:
            continue
        arr = np.ascontiguousarray(tensors[name])
        crc = crc32c.crc32c(f"{name}{arr.dtype}{arr.shape}".encode(), crc)
        crc = crc32c.crc32c(arr, crc)
    return f"crc32c:{crc:08x}"


def _damaged_normalizer(path: Path, problem: str) -> DamagedFileError:
    return DamagedFileError(path, problem, "Delete it to refit it from the store's statistics on the next "
                            "distill run (a refit from the same statistics gives the same normalizer on the "
                            "same machine; runs evaluated with the old file should be re-evaluated); it was "
                            "not refitted automatically")


def fit_normalizer(
    variant: NormVariant | str,
    moments: Moments,
    *,
    hadamard_cache: Path | None = None,
    eig_floor: float = DEFAULT_EIG_FLOOR,
    keepbits: int | None = None,
    noise_floor_factor: float = NOISE_FLOOR_FACTOR,
    split: str = "all",
) -> Normalizer:
    """Fit a normalizer of ``variant`` from float64 moments (see ``variants.fit_affine``).

    ``keepbits``: mantissa bits the statistics' values were stored with; the eigenvalue / variance floor
    is then at least ``noise_floor_factor`` times the storage noise variance that precision implies
    (``storage_noise_var``).
    ``split``: which manifest split the moments cover (recorded, not used in the fit). An AdaLoss variant
    gives its base variant's normalizer (``NormVariant.fit_as``)."""
    variant = NormVariant.parse(variant).fit_as
    if noise_floor_factor < 0:
        raise ValueError(f"noise_floor_factor must be >= 0, got {noise_floor_factor}")
    fit = fit_affine(variant, moments, hadamard_cache=hadamard_cache, eig_floor=eig_floor,
                     noise_D=noise_floor_factor * storage_noise_var(moments, keepbits))
    return Normalizer(variant, fit.mu_D, fit.W_DD, fit.W_inv_DD, moments.content_hash(),
                      construction=fit.construction, eig_floor=eig_floor, keepbits=keepbits,
                      noise_floor_factor=noise_floor_factor, floor_D=fit.floor_D, split=split)


def load_or_fit(
    path: Path,
    variant: NormVariant | str,
    moments: Moments,
    *,
    hadamard_cache: Path | None = None,
    eig_floor: float = DEFAULT_EIG_FLOOR,
    keepbits: int | None = None,
    noise_floor_factor: float = NOISE_FLOOR_FACTOR,
    split: str = "all",
) -> Normalizer:
    """The normalizer stored at ``path`` if it was fitted from these statistics; else fit, save, return.

    A stored fit is never recomputed. One fitted from other statistics, for another variant, with another
    eigenvalue floor, storage precision or split raises NormalizerMismatchError naming both values and
    the path.
    """
    path = location.as_location(path)
    variant = NormVariant.parse(variant).fit_as
    if not location.exists(path):
        norm = fit_normalizer(variant, moments, hadamard_cache=hadamard_cache, eig_floor=eig_floor,
                              keepbits=keepbits, noise_floor_factor=noise_floor_factor, split=split)
        norm.save(path)
        return norm
    norm = Normalizer.load(path)
    expected = {"variant": variant.value, "stats hash": moments.content_hash(), "eig_floor": float(eig_floor),
                "keepbits": keepbits, "noise_floor_factor": float(noise_floor_factor), "split": split}
    found = {"variant": norm.variant.value, "stats hash": norm.stats_hash, "eig_floor": norm.eig_floor,
             "keepbits": norm.keepbits, "noise_floor_factor": norm.noise_floor_factor, "split": norm.split}
    for key, want in expected.items():
        if found[key] != want:
            raise NormalizerMismatchError(
                f"stored normalizer {path} was fitted with {key} {found[key]!r}, but {want!r} was asked "
                f"for; delete it to refit (refitting changes the targets of every run that used it)")
    return norm
