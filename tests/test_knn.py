"""kNN (cosine, temperature-weighted votes) and linear probe on hand-built sets."""

import numpy as np
import pytest

from stages.evaluate.knn import knn_accuracy, knn_predict, knn_top_k, linear_probe_accuracy, UNIT_BITS


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


def _brute_force_predict(train_NC, labels_N, query_MC, *, k, temperature):
    """The full-matrix implementation: queries x bank similarities of the lattice unit vectors (UNIT_BITS),
    stable argsort over the whole row."""
    q = 2.0**UNIT_BITS
    train_NC = train_NC / np.maximum(np.linalg.norm(train_NC, axis=1, keepdims=True), 1e-12)
    query_MC = query_MC / np.maximum(np.linalg.norm(query_MC, axis=1, keepdims=True), 1e-12)
    train_NC, query_MC = np.round(train_NC * q) / q, np.round(query_MC * q) / q
    k = min(k, len(train_NC))
    classes_L, label_idx_N = np.unique(labels_N, return_inverse=True)
    sim_MN = query_MC @ train_NC.T
    top_MK = np.argsort(-sim_MN, axis=1, kind="stable")[:, :k]
    weight_MK = np.exp((np.take_along_axis(sim_MN, top_MK, 1) - 1.0) / temperature)
    votes_ML = np.zeros((len(query_MC), len(classes_L)))
    np.add.at(votes_ML, (np.arange(len(query_MC))[:, None], label_idx_N[top_MK]), weight_MK)
    return top_MK, classes_L[np.argmax(votes_ML, axis=1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_knn_equals_brute_force_exactly_with_ties(seed):
    # few distinct vectors on a small integer lattice, repeated: many exact similarity ties, inside a
    # chunk and across chunk borders; labels drawn independently so tie-breaking changes the votes
    rng = np.random.default_rng(seed)
    distinct_DC = rng.integers(-2, 3, size=(9, 6)).astype(np.float64)
    train_NC = distinct_DC[rng.integers(0, 9, 500)] * rng.choice([1.0, 2.0, 0.5], size=(500, 1))
    labels_N = rng.integers(0, 5, 500)
    query_MC = np.concatenate([distinct_DC[rng.integers(0, 9, 40)], rng.normal(size=(40, 6))])
    top_ref, pred_ref = _brute_force_predict(train_NC, labels_N, query_MC, k=20, temperature=0.07)
    for bank_chunk, query_chunk in [(500, 80), (7, 3), (20, 80), (64, 1), (1, 13)]:
        _, top = knn_top_k(train_NC, query_MC, k=20, bank_chunk=bank_chunk, query_chunk=query_chunk)
        assert np.array_equal(top, top_ref), (bank_chunk, query_chunk)
        pred = knn_predict(train_NC, labels_N, query_MC, k=20, bank_chunk=bank_chunk, query_chunk=query_chunk)
        assert np.array_equal(pred, pred_ref)


def test_knn_streams_a_zarr_bank(tmp_path):
    import zarr

    rng = np.random.default_rng(3)
    train_NC, labels_N = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 4, 300)
    query_MC = rng.normal(size=(30, 8)).astype(np.float32)
    bank = zarr.create_array(tmp_path / "bank.zarr", shape=train_NC.shape, chunks=(64, 8), dtype="float32")
    bank[:] = train_NC
    _, ref = _brute_force_predict(train_NC.astype(np.float64), labels_N, query_MC.astype(np.float64), k=20,
                                  temperature=0.07)
    assert np.array_equal(knn_predict(bank, labels_N, query_MC, bank_chunk=64), ref)
