"""Tests of cxr_jax.eval.probes against numpy loops and scikit-learn."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cxr_jax.eval import probes


def _knn_loop(train, labels, queries, k, t, num_classes):
  """Weighted kNN written out query by query (Wu et al. 2018)."""
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  out = []
  for q in queries:
    sim = train @ (q / np.linalg.norm(q))
    top = np.argsort(-sim)[:k]
    votes = np.zeros(num_classes)
    for i in top:
      votes[labels[i]] += np.exp(sim[i] / t)
    out.append(votes / votes.sum())
  return np.array(out)


def test_knn_matches_numpy_loop_across_chunks():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(50, 8)).astype(np.float32)
  labels = rng.integers(4, size=50)
  queries = rng.normal(size=(13, 8)).astype(np.float32)
  # chunk_size 4 does not divide 13: the last chunk is partial
  got = probes.knn_predict(train, labels, queries, num_classes=4, k=5, temperature=0.1,
                           chunk_size=4)
  assert got.shape == (13, 4)
  np.testing.assert_allclose(got, _knn_loop(train, labels, queries, 5, 0.1, 4), atol=1e-5)


def test_knn_default_temperature_and_scale_invariance():
  rng = np.random.default_rng(1)
  train = rng.normal(size=(40, 6)).astype(np.float32)
  labels = rng.integers(3, size=40)
  queries = rng.normal(size=(7, 6)).astype(np.float32)
  want = _knn_loop(train.astype(np.float64), labels, queries.astype(np.float64), 20, 0.07, 3)
  got = probes.knn_predict(train, labels, queries, num_classes=3)
  np.testing.assert_allclose(got, want, atol=1e-4)
  # cosine similarity ignores feature norms
  got_scaled = probes.knn_predict(3 * train, labels, 0.5 * queries, num_classes=3)
  np.testing.assert_allclose(got_scaled, got, atol=1e-5)


def test_knn_k1_is_nearest_neighbour_and_k_is_clipped():
  rng = np.random.default_rng(2)
  train = rng.normal(size=(30, 5)).astype(np.float32)
  labels = rng.integers(3, size=30)
  queries = rng.normal(size=(9, 5)).astype(np.float32)
  probs = np.asarray(probes.knn_predict(train, labels, queries, num_classes=3, k=1))
  tn = train / np.linalg.norm(train, axis=1, keepdims=True)
  nearest = np.argmax(queries @ tn.T, axis=1)  # the query norm does not change the argmax
  np.testing.assert_array_equal(probs, np.eye(3)[labels[nearest]])
  # k larger than the bank: every training example votes
  big = probes.knn_predict(train, labels, queries, num_classes=3, k=100, temperature=1e6)
  # with a huge temperature every weight is ~1: the class frequencies
  np.testing.assert_allclose(big, np.tile(np.bincount(labels, minlength=3) / 30, (9, 1)),
                             atol=1e-4)


def test_linear_probe_separates_separable_data():
  rng = np.random.default_rng(3)
  centers = 4 * np.eye(3, 6)
  y = rng.integers(3, size=150)
  x = (centers[y] + rng.normal(scale=0.5, size=(150, 6))).astype(np.float32)
  probe = probes.linear_probe_fit(x[:100], y[:100], num_classes=3)
  probs = np.asarray(probes.linear_probe_predict(probe, x))
  assert probs.shape == (150, 3)
  np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
  assert np.mean(probs[:100].argmax(1) == y[:100]) == 1.0
  assert np.mean(probs[100:].argmax(1) == y[100:]) >= 0.98


def test_linear_probe_matches_sklearn_logistic_regression():
  rng = np.random.default_rng(4)
  n, d, k = 200, 10, 3
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = np.argmax(x @ rng.normal(size=(d, k)) + rng.normal(size=(n, k)), axis=1)
  x[:, 3] = 7.0  # a constant feature: standardisation must not divide by zero
  l2 = 1e-2
  probe = probes.linear_probe_fit(x, y, num_classes=k, l2=l2, steps=200)
  probs = np.asarray(probes.linear_probe_predict(probe, x))
  assert np.all(np.isfinite(probs))
  # the same objective in sklearn: C sum CE + ||W||^2 / 2 with C = 1 / (l2 N)
  xs = StandardScaler().fit_transform(x)
  sk = LogisticRegression(C=1 / (l2 * n), tol=1e-10, max_iter=5000).fit(xs, y)
  np.testing.assert_allclose(probs, sk.predict_proba(xs), atol=2e-3)
  assert np.mean(probs.argmax(1) == y) == pytest.approx(sk.score(xs, y), abs=0.01)


def test_frozen_probe_probs_is_the_knn_of_k_20_at_t_0_07_and_the_linear_probe():
  """The one probe function the pretraining monitors and the frozen protocols share: kNN
  with its fixed 20 neighbours at T = 0.07 (against the loop written out), and the
  logistic probe fit once for every query set."""
  rng = np.random.default_rng(3)
  bank = rng.normal(size=(40, 6)).astype(np.float32)
  labels = rng.integers(3, size=40)
  val, test = rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(7, 6)).astype(np.float32)
  assert (probes.KNN_K, probes.KNN_TEMPERATURE) == (20, 0.07)
  knn_val, knn_test = probes.frozen_probe_probs('knn', bank, labels, [val, test], 3)
  np.testing.assert_allclose(knn_test, _knn_loop(bank, labels, test, 20, 0.07, 3), atol=1e-5)
  assert knn_val.shape == (5, 3)
  linear_val, linear_test = probes.frozen_probe_probs('linear', bank, labels, [val, test], 3)
  probe = probes.linear_probe_fit(bank, labels, 3)
  np.testing.assert_array_equal(linear_test, probes.linear_probe_predict(probe, test))
  np.testing.assert_allclose(linear_val.sum(-1), 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="'knn' or 'linear'"):
    probes.frozen_probe_probs('svm', bank, labels, [val], 3)
