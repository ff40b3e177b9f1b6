"""Tests of cxr_jax.eval.bootstrap against the reference bootstrap (tests/oracles/stats.py,
which repeats examples and calls `classification_metrics` per resample) and by hand."""
import numpy as np
import pytest

from cxr_jax.eval import bootstrap
from cxr_jax.eval import metrics as M
from tests.oracles import stats

NAMES = ['negative', 'typical', 'atypical']


def _probs(rng, labels, signal, k=3):
  logits = signal * np.eye(k)[labels] + rng.normal(size=(len(labels), k))
  e = np.exp(logits - logits.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def _seed_mean(metric, names=NAMES):
  """The reference's metric_fn: the seed-mean of `metric` of probs [N, S, K]."""
  return lambda y, p: np.mean([M.classification_metrics(y, p[:, s], names)[metric]
                               for s in range(p.shape[1])])


def _case(seed=2, patients=30):
  rng = np.random.default_rng(seed)
  labels = np.repeat(rng.integers(0, 3, patients), 2)  # 2 images per patient
  groups = np.repeat(np.arange(patients), 2)
  pa = np.stack([_probs(rng, labels, 2.0) for _ in range(2)], axis=1)  # [N, S=2, K]
  pb = np.stack([_probs(rng, labels, 0.5) for _ in range(2)], axis=1)
  return labels, groups, pa, pb


def test_bootstrap_weights_are_the_reference_resamples():
  groups = np.repeat([5, 1, 9, 3], [1, 2, 3, 1])
  blocks = list(bootstrap.bootstrap_weights(groups, n_boot=7, seed=4, block=3))
  assert [len(b) for b in blocks] == [3, 3, 1]
  w = np.concatenate(blocks)
  gidx = np.unique(groups, return_inverse=True)[1]
  rng = np.random.default_rng(4)
  for row in w:
    draws = np.bincount(rng.integers(4, size=4), minlength=4)
    np.testing.assert_array_equal(row, draws[gidx])  # whole patients, drawn m times


def test_seed_mean_cis_equal_the_reference_bootstrap():
  """Same seed -> same patient resamples as the oracle, hence identical results."""
  labels, groups, pa, _ = _case()
  cis = bootstrap.seed_mean_cis(labels, pa, groups, n_boot=60, seed=3)
  assert list(cis) == list(M.HEADLINE)
  for metric in ('auroc', 'map', 'ece', 'macro_f1'):
    ref = stats.bootstrap_ci(_seed_mean(metric), labels, pa, groups=groups, n_boot=60, seed=3)
    assert cis[metric] == pytest.approx((ref.lo, ref.hi), abs=1e-12), metric


def test_paired_comparison_equals_the_reference_paired_bootstrap():
  labels, groups, pa, pb = _case()
  got = bootstrap.paired_comparison(labels, pa, pb, groups, n_boot=60, seed=3)
  want = stats.paired_bootstrap(_seed_mean('auroc'), labels, pa, pb, groups=groups,
                                n_boot=60, seed=3)
  for key in ('diff', 'lo', 'hi', 'p_value', 'n_valid', 'n_skipped'):
    assert got[key] == pytest.approx(want[key], abs=1e-12), key
  same = bootstrap.paired_comparison(labels, pa, pa, groups, n_boot=60, seed=3)
  assert same['p_value'] == 1.0 and same['diff'] == 0.0


def test_resamples_without_a_class_are_skipped_and_counted():
  labels = np.array([0, 0, 0, 1])  # one positive patient: many resamples lack it
  probs = np.eye(2)[[0, 1, 0, 1]][:, None, :].astype(float)  # [N, S=1, K]
  got = bootstrap.paired_comparison(labels, probs, probs[:, :, ::-1], np.arange(4),
                                    n_boot=400, seed=0)
  want = stats.paired_bootstrap(_seed_mean('auroc', 'ab'), labels, probs, probs[:, :, ::-1],
                                n_boot=400, seed=0)
  assert got['n_skipped'] == want['n_skipped'] > 0
  assert got['n_valid'] + got['n_skipped'] == 400
  assert (got['lo'], got['hi'], got['p_value']) == pytest.approx(
      (want['lo'], want['hi'], want['p_value']), abs=1e-12)


def test_weighted_mean_resamples_match_bootstrap_ci():
  rng = np.random.default_rng(4)
  values = rng.normal(size=20)
  values[3] = np.nan
  groups = np.arange(20) // 2
  dist = bootstrap.weighted_mean_resamples(values, groups, n_boot=80, seed=5)
  ref = stats.bootstrap_ci(lambda y, v: np.nanmean(v), np.zeros(20), values, groups=groups,
                           n_boot=80, seed=5)
  assert bootstrap.percentile_ci(dist) == pytest.approx((ref.lo, ref.hi), abs=1e-12)


def test_paired_mean_difference_equals_the_reference_paired_bootstrap():
  rng = np.random.default_rng(6)
  a, b = rng.normal(1.0, 1, 30), rng.normal(0.6, 1, 30)
  groups = np.arange(30) // 3
  got = bootstrap.paired_mean_difference(a, b, groups, n_boot=100, seed=1)
  mean = lambda y, v: float(np.mean(v))
  want = stats.paired_bootstrap(mean, np.zeros(30), a, b, groups=groups, n_boot=100, seed=1)
  for key in ('diff', 'lo', 'hi', 'p_value'):
    assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_p_value_and_percentile_ci_by_hand():
  # 3 of 4 differences above 0, one at 0: below = (1 + 1) / 5, above = (1 + 4) / 5
  assert bootstrap.p_value(np.array([0.0, 0.1, 0.2, 0.3, np.nan])) == pytest.approx(0.8)
  assert bootstrap.p_value(np.array([0.1] * 9)) == pytest.approx(0.2)
  assert np.isnan(bootstrap.p_value(np.array([np.nan])))
  assert bootstrap.percentile_ci(np.arange(101.0), alpha=0.1) == pytest.approx((5.0, 95.0))
  assert np.isnan(bootstrap.percentile_ci(np.zeros(0))).all()


def test_holm_by_hand():
  np.testing.assert_allclose(bootstrap.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
  out = bootstrap.holm([0.5, float('nan'), 0.2])
  assert out[0] == pytest.approx(0.5) and np.isnan(out[1]) and out[2] == pytest.approx(0.4)
