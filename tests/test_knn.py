"""kNN (cosine, temperature-weighted votes) and linear probe on hand-built sets."""

import numpy as np
import pytest

from stages.evaluate.knn import knn_accuracy, knn_predict, linear_probe_accuracy


def _clusters(seed: int, n_per: int):
    rng = np.random.default_rng(seed)
    centers_LC = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    x_NC = np.concatenate([c + rng.normal(size=(n_per, 3)) for c in centers_LC])
    y_N = np.repeat(np.array(["cat", "dog", "fox"]), n_per)
    return x_NC, y_N


def test_separable_clusters_are_classified_perfectly():
    x_tr, y_tr = _clusters(0, 10)
    x_te, y_te = _clusters(1, 5)
    assert knn_accuracy(x_tr, y_tr, x_te, y_te, k=20) == 1.0
    assert linear_probe_accuracy(x_tr, y_tr, x_te, y_te) == 1.0


def test_scale_invariance_and_k_clipped_to_train_size():
    x_tr, y_tr = _clusters(0, 2)  # 6 training vectors, k=20 is clipped to 6
    x_te, y_te = _clusters(1, 3)
    pred = knn_predict(x_tr * 1000.0, y_tr, x_te * 0.001, k=20)
    assert (pred == y_te).all()


def test_temperature_weighting_beats_majority():
    # one very close neighbour of class 1 against two far neighbours of class 0:
    # a low temperature lets the close one win, a high temperature approaches a plain majority vote
    train_NC = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels_N = np.array([1, 0, 0])
    query_MC = np.array([[1.0, 0.2]])
    assert knn_predict(train_NC, labels_N, query_MC, k=3, temperature=0.07)[0] == 1
    assert knn_predict(train_NC, labels_N, query_MC, k=3, temperature=100.0)[0] == 0


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="widths differ"):
        knn_predict(np.zeros((3, 2)), np.zeros(3), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="shape"):
        knn_predict(np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="two classes"):
        linear_probe_accuracy(np.ones((3, 2)), np.zeros(3), np.ones((1, 2)), np.zeros(1))
