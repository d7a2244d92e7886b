"""kNN and linear-probe classification on summary vectors (AM-RADIO arXiv 2312.06709, PHI-S arXiv 2410.01680).

The papers' kNN protocol (from DINO, Caron et al. 2021): L2-normalize features, take the k training
vectors of highest cosine similarity, weight each neighbour's vote by exp(sim / τ) with τ = 0.07, and
predict the class with the largest summed weight. k defaults to 20 and is clipped to the training-set
size (the demo's probe sets are small). At ImageNet size (50,000 queries x 1,281,167 bank vectors) the
queries x bank similarity matrix would be 512 GB in float64: the bank is streamed in chunks (from memory
or from a zarr array on disk) and a running top-k per query is kept, with exactly the brute-force answer. The linear probe is an L2-regularized logistic regression on
standardized features (scikit-learn).

Shape legend: N training vectors, M query vectors, C feature channels, K neighbours, L classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

KNN_FEATURES = {"concat": "the K raw student summary tokens concatenated (RADIO's _extract_final), view 0",
                "token0": "raw student summary token 0, view 0"}


def summary_feature(summary_BKC: torch.Tensor, knn_feature: str) -> torch.Tensor:
    """The probe feature [B, K·C] (concat) or [B, C] (token0) from the student's summary tokens."""
    if knn_feature not in KNN_FEATURES:
        raise ValueError(f"unknown kNN feature {knn_feature!r}; valid: {', '.join(KNN_FEATURES)}")
    return summary_BKC.flatten(1) if knn_feature == "concat" else summary_BKC[:, 0]


def _features(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (vectors, channels) array, got shape {x.shape}")
    return x


def _shape(x: Any, name: str) -> tuple[int, int]:
    """(rows, channels) of an array-like or a row source (anything with .shape and row slicing: a zarr array)."""
    shape = tuple(getattr(x, "shape", np.shape(x)))
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D (vectors, channels) array, got shape {shape}")
    return int(shape[0]), int(shape[1])


# Unit vectors are rounded to multiples of 2^-UNIT_BITS before any dot product. Every product of two
# components is then an integer multiple of 2^-48 below 2^0, and by Cauchy-Schwarz every partial sum of a
# dot product stays below about 2^48 such units: exact in float64 (53 bits), whatever order or blocking
# BLAS sums in. So a similarity does not depend on how the bank and queries are chunked (plain float64
# matmuls differ in the last bit between block shapes), and ties stay ties. 2^-24 is finer than the
# features' own precision (bf16 / float32).
UNIT_BITS = 24


def _unit_rows(x: Any, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi-1 of a row source as float64 unit vectors on the 2^-UNIT_BITS lattice (see UNIT_BITS)."""
    x_BC = _features(x[lo:hi], "features")
    x_BC = x_BC / np.maximum(np.linalg.norm(x_BC, axis=1, keepdims=True), 1e-12)
    return np.round(x_BC * 2.0**UNIT_BITS) / 2.0**UNIT_BITS


def _labels(y: ArrayLike, n: int, name: str) -> np.ndarray:
    y_N = np.asarray(y)
    if y_N.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {y_N.shape}")
    return y_N


def _top_k_rows(sim_MJ: np.ndarray, idx_MJ: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k entries of highest similarity, ties to the lower bank index, in that order:
    exactly the first k columns of a stable argsort of -sim over the whole bank. Returns (sim_MK, idx_MK).

    A partition finds each row's k-th largest similarity; only entries at or above it (k plus ties) are
    sorted, by (row, -sim, index)."""
    M, J = sim_MJ.shape
    if J <= k:
        order_MJ = np.lexsort((idx_MJ, -sim_MJ), axis=1)
        return np.take_along_axis(sim_MJ, order_MJ, 1), np.take_along_axis(idx_MJ, order_MJ, 1)
    kth_M = -np.partition(-sim_MJ, k - 1, axis=1)[:, k - 1]
    rows_P, cols_P = np.nonzero(sim_MJ >= kth_M[:, None])  # each row has >= k candidates
    sims_P, ids_P = sim_MJ[rows_P, cols_P], idx_MJ[rows_P, cols_P]
    order_P = np.lexsort((ids_P, -sims_P, rows_P))
    rows_P, sims_P, ids_P = rows_P[order_P], sims_P[order_P], ids_P[order_P]
    first_M = np.searchsorted(rows_P, np.arange(M))
    take_MK = first_M[:, None] + np.arange(k)[None, :]
    return sims_P[take_MK], ids_P[take_MK]


def knn_top_k(train_NC: Any, query_MC: Any, *, k: int, bank_chunk: int = 16384,
              query_chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(sim_MK, idx_MK): each query's k most cosine-similar bank vectors, streamed over bank chunks.

    The bank (``train_NC``: an array or any row source with ``.shape`` and row slicing, such as a zarr
    array on disk) is read once, chunk by chunk; the queries are held (normalized, float64) and a running
    top-k per query is merged with each chunk. Memory: queries + one bank chunk + a query_chunk x
    bank_chunk similarity block, never queries x bank. The answer is exactly the brute-force one (the
    first k of a stable argsort of the whole similarity row: ties go to the lower bank index), because
    every similarity is an exact dot product of the same lattice unit vectors whatever the chunking
    (UNIT_BITS).
    """
    N, C = _shape(train_NC, "train features")
    M, Cq = _shape(query_MC, "query features")
    if C != Cq:
        raise ValueError(f"train and query widths differ: {C} vs {Cq}")
    if bank_chunk < 1 or query_chunk < 1:
        raise ValueError(f"chunk sizes must be >= 1, got bank_chunk={bank_chunk}, query_chunk={query_chunk}")
    k = min(k, N)
    queries = np.empty((M, C))  # filled chunk by chunk: the normalization's temporaries stay chunk-sized
    for lo in range(0, M, query_chunk):
        queries[lo : lo + query_chunk] = _unit_rows(query_MC, lo, min(lo + query_chunk, M))
    query_MC = queries
    best_sim_MK = np.full((M, 0), -np.inf)
    best_idx_MK = np.zeros((M, 0), np.int64)
    for lo in range(0, N, bank_chunk):
        bank_JC = _unit_rows(train_NC, lo, min(lo + bank_chunk, N))
        new_sim, new_idx = [], []
        for qlo in range(0, M, query_chunk):
            sim_QJ = query_MC[qlo : qlo + query_chunk] @ bank_JC.T
            idx_QJ = np.broadcast_to(np.arange(lo, lo + len(bank_JC)), sim_QJ.shape)
            chunk_sim, chunk_idx = _top_k_rows(sim_QJ, idx_QJ, k)
            merged = _top_k_rows(np.concatenate([best_sim_MK[qlo : qlo + query_chunk], chunk_sim], 1),
                                 np.concatenate([best_idx_MK[qlo : qlo + query_chunk], chunk_idx], 1), k)
            new_sim.append(merged[0])
            new_idx.append(merged[1])
        best_sim_MK, best_idx_MK = np.concatenate(new_sim), np.concatenate(new_idx)
    return best_sim_MK, best_idx_MK


def knn_predict(train_NC: Any, train_labels: ArrayLike, query_MC: Any, *, k: int = 20,
                temperature: float = 0.07, bank_chunk: int = 16384, query_chunk: int = 4096) -> np.ndarray:
    """Temperature-weighted cosine kNN vote; returns predicted labels [M] (same dtype as train labels).

    Neighbours come from ``knn_top_k`` (streamed over bank chunks; ``train_NC`` may be a zarr array).
    Ties in similarity go to the lower bank index, ties in the summed vote to the class that sorts first,
    so results are deterministic and do not depend on the chunk sizes.
    """
    N, _ = _shape(train_NC, "train features")
    labels_N = _labels(train_labels, N, "train labels")
    if N == 0:
        raise ValueError("kNN needs at least one training vector")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    sim_MK, top_MK = knn_top_k(train_NC, query_MC, k=k, bank_chunk=bank_chunk, query_chunk=query_chunk)
    classes_L, label_idx_N = np.unique(labels_N, return_inverse=True)
    weight_MK = np.exp((sim_MK - 1.0) / temperature)  # shifted by the max possible sim: same argmax, no overflow
    M = sim_MK.shape[0]
    votes_ML = np.zeros((M, classes_L.shape[0]))
    np.add.at(votes_ML, (np.arange(M)[:, None], label_idx_N[top_MK]), weight_MK)
    return classes_L[np.argmax(votes_ML, axis=1)]


def knn_accuracy(train_NC: Any, train_labels: ArrayLike, query_MC: Any, query_labels: ArrayLike,
                 *, k: int = 20, temperature: float = 0.07, bank_chunk: int = 16384) -> float:
    """Fraction of query vectors whose kNN prediction equals their label."""
    M, _ = _shape(query_MC, "query features")
    truth_M = _labels(query_labels, M, "query labels")
    if truth_M.shape[0] == 0:
        raise ValueError("kNN accuracy needs at least one query vector")
    pred_M = knn_predict(train_NC, train_labels, query_MC, k=k, temperature=temperature, bank_chunk=bank_chunk)
    return float(np.mean(pred_M == truth_M))


def linear_probe_accuracy(train_NC: ArrayLike, train_labels: ArrayLike, query_MC: ArrayLike,
                          query_labels: ArrayLike, *, c: float = 1.0, max_iter: int = 1000,
                          seed: int = 0) -> float:
    """Logistic-regression probe on standardized features; accuracy on the query set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_NC, query_MC = _features(train_NC, "train features"), _features(query_MC, "query features")
    labels_N = _labels(train_labels, train_NC.shape[0], "train labels")
    truth_M = _labels(query_labels, query_MC.shape[0], "query labels")
    if np.unique(labels_N).shape[0] < 2:
        raise ValueError("a linear probe needs at least two classes in the training set")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    probe.fit(train_NC, labels_N)
    return float(np.mean(probe.predict(query_MC) == truth_M))
