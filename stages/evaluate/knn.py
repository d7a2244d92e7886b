"""kNN and linear-probe classification on summary vectors (AM-RADIO arXiv 2312.06709, PHI-S arXiv 2410.01680).

The papers' kNN protocol (from DINO, Caron et al. 2021): L2-normalize features, take the k training
vectors of highest cosine similarity, weight each neighbour's vote by exp(sim / τ) with τ = 0.07, and
predict the class with the largest summed weight. k defaults to 20 and is clipped to the training-set
size (the demo's probe sets are small). The linear probe is an L2-regularized logistic regression on
standardized features (scikit-learn).

Shape legend: N training vectors, M query vectors, C feature channels, K neighbours, L classes.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _features(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (vectors, channels) array, got shape {x.shape}")
    return x


def _labels(y: ArrayLike, n: int, name: str) -> np.ndarray:
    y_N = np.asarray(y)
    if y_N.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {y_N.shape}")
    return y_N


def knn_predict(train_NC: ArrayLike, train_labels: ArrayLike, query_MC: ArrayLike, *, k: int = 20,
                temperature: float = 0.07) -> np.ndarray:
    """Temperature-weighted cosine kNN vote; returns predicted labels [M] (same dtype as train labels).

    Ties in the summed vote go to the class that sorts first, so results are deterministic.
    """
    train_NC, query_MC = _features(train_NC, "train features"), _features(query_MC, "query features")
    labels_N = _labels(train_labels, train_NC.shape[0], "train labels")
    if train_NC.shape[0] == 0:
        raise ValueError("kNN needs at least one training vector")
    if train_NC.shape[1] != query_MC.shape[1]:
        raise ValueError(f"train and query widths differ: {train_NC.shape[1]} vs {query_MC.shape[1]}")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    k = min(k, train_NC.shape[0])
    classes_L, label_idx_N = np.unique(labels_N, return_inverse=True)
    train_NC = train_NC / np.maximum(np.linalg.norm(train_NC, axis=1, keepdims=True), 1e-12)
    query_MC = query_MC / np.maximum(np.linalg.norm(query_MC, axis=1, keepdims=True), 1e-12)
    sim_MN = query_MC @ train_NC.T
    # stable top-k: sort by descending similarity, ties broken by training index
    top_MK = np.argsort(-sim_MN, axis=1, kind="stable")[:, :k]
    sim_MK = np.take_along_axis(sim_MN, top_MK, axis=1)
    weight_MK = np.exp((sim_MK - 1.0) / temperature)  # shifted by the max possible sim: same argmax, no overflow
    votes_ML = np.zeros((query_MC.shape[0], classes_L.shape[0]))
    np.add.at(votes_ML, (np.arange(query_MC.shape[0])[:, None], label_idx_N[top_MK]), weight_MK)
    return classes_L[np.argmax(votes_ML, axis=1)]


def knn_accuracy(train_NC: ArrayLike, train_labels: ArrayLike, query_MC: ArrayLike, query_labels: ArrayLike,
                 *, k: int = 20, temperature: float = 0.07) -> float:
    """Fraction of query vectors whose kNN prediction equals their label."""
    query_MC = _features(query_MC, "query features")
    truth_M = _labels(query_labels, query_MC.shape[0], "query labels")
    if truth_M.shape[0] == 0:
        raise ValueError("kNN accuracy needs at least one query vector")
    pred_M = knn_predict(train_NC, train_labels, query_MC, k=k, temperature=temperature)
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
