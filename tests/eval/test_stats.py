"""Tests of the reference statistics (tests/oracles/stats.py) the package is compared with:
bootstrap, paired bootstrap, DeLong, mean_std."""
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from tests.oracles import stats


def accuracy(labels, probs):
  return float(np.mean(probs.argmax(1) == labels))


def auroc(labels, scores):
  """Binary AUROC, the Mann-Whitney U over m n; NaN when a resample holds one class only.

  (sklearn's roc_auc_score gives the same value but costs ~5 ms a call in a bootstrap.)
  """
  pos = np.asarray(labels) == 1
  m, n = pos.sum(), (~pos).sum()
  if m == 0 or n == 0:
    return float('nan')
  return (sps.rankdata(scores)[pos].sum() - m * (m + 1) / 2) / (m * n)


def _scores(n, signal, seed):
  """Binary labels and scores whose separation grows with `signal`."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(2, size=n)
  return labels, signal * labels + rng.normal(size=n)


def test_ci_brackets_point_and_shrinks_like_one_over_sqrt_n():
  widths = []
  for n in (100, 1600):
    rng = np.random.default_rng(n)
    labels = rng.integers(2, size=n)
    # predicted class right with probability 0.8
    pred = np.where(rng.random(n) < 0.8, labels, 1 - labels)
    probs = np.eye(2)[pred]
    ci = stats.bootstrap_ci(accuracy, labels, probs, n_boot=400, seed=0)
    point, lo, hi = ci
    assert lo <= point <= hi
    assert ci.n_valid == 400 and ci.n_skipped == 0
    # the normal approximation of the binomial: width = 2 * 1.96 * sqrt(p(1-p)/n)
    normal = 2 * 1.96 * np.sqrt(point * (1 - point) / n)
    assert hi - lo == pytest.approx(normal, rel=0.2)
    widths.append(hi - lo)
  assert widths[1] < widths[0] / 2.5  # 16x the data, ~4x narrower


def test_auroc_point_is_sklearn_and_seed_is_reproducible():
  labels, scores = _scores(150, 1.0, seed=0)
  a = stats.bootstrap_ci(auroc, labels, scores, n_boot=200, seed=3)
  b = stats.bootstrap_ci(auroc, labels, scores, n_boot=200, seed=3)
  assert a.point == pytest.approx(skm.roc_auc_score(labels, scores))
  assert tuple(a) == tuple(b)
  assert a.lo < a.point < a.hi


def test_group_resampling_keeps_patients_whole():
  # patient g has g + 1 images; its id is stored as the label so that the metric sees it
  sizes = np.arange(1, 9)
  groups = np.repeat(np.arange(8), sizes)
  labels = groups.copy()
  probs = np.zeros((len(labels), 2))
  seen = []

  def record(y, _):
    counts = np.bincount(y, minlength=8)
    seen.append(counts)
    return float(len(np.unique(y)))  # distinct patients drawn

  n_boot = 1000
  ci = stats.bootstrap_ci(record, labels, probs, groups=groups, n_boot=n_boot, seed=0)
  resamples = np.stack(seen[1:])  # seen[0] is the point estimate on the full data
  assert ci.point == 8
  # whole patients: every patient appears a multiple of its size times
  assert np.all(resamples % sizes == 0)
  # and 8 patients are drawn: sum of (draws of g) = 8
  assert np.all((resamples // sizes).sum(axis=1) == 8)
  # mean distinct patients of 8 draws from 8: 8 (1 - (7/8)^8)
  distinct = (resamples > 0).sum(axis=1)
  assert distinct.mean() == pytest.approx(8 * (1 - (7 / 8) ** 8), abs=0.1)
  # without groups the examples are drawn one by one and patients get split
  seen.clear()
  stats.bootstrap_ci(record, labels, probs, n_boot=50, seed=0)
  assert np.any(np.stack(seen[1:]) % sizes != 0)


def test_nan_resamples_are_skipped_and_counted():
  labels = np.array([1, 0, 0, 0])
  scores = np.array([0.9, 0.1, 0.5, 0.3])
  ci = stats.bootstrap_ci(auroc, labels, scores, n_boot=3000, seed=0)
  # a resample lacks a class when it draws no positive ((3/4)^4) or only positives ((1/4)^4)
  want = (3 / 4) ** 4 + (1 / 4) ** 4
  assert ci.n_skipped / 3000 == pytest.approx(want, abs=0.03)
  assert ci.n_valid + ci.n_skipped == 3000
  assert ci.point == 1.0 and ci.lo == 1.0 and ci.hi == 1.0


def test_paired_bootstrap_self_comparison():
  labels, scores = _scores(100, 1.0, seed=1)
  out = stats.paired_bootstrap(auroc, labels, scores, scores, n_boot=200, seed=0)
  assert out['diff'] == 0 and out['lo'] == 0 and out['hi'] == 0
  assert out['p_value'] == 1.0


def test_paired_bootstrap_detects_a_better_model_and_agrees_with_delong():
  labels, good = _scores(200, 1.5, seed=2)
  rng = np.random.default_rng(5)
  bad = 0.3 * labels + rng.normal(size=200)
  out = stats.paired_bootstrap(auroc, labels, good, bad, n_boot=1000, seed=0)
  dl = stats.delong_test(labels, good, bad)
  assert out['diff'] == pytest.approx(dl['diff'])
  assert out['diff'] > 0 and out['lo'] > 0
  assert out['p_value'] < 0.05 and dl['p_value'] < 0.05
  # the bootstrap standard error of the difference and DeLong's agree
  se_boot = (out['hi'] - out['lo']) / (2 * 1.96)
  se_delong = dl['diff'] / dl['z']
  assert se_boot == pytest.approx(se_delong, rel=0.2)
  # and the reverse order flips the sign only
  rev = stats.paired_bootstrap(auroc, labels, bad, good, n_boot=1000, seed=0)
  assert rev['diff'] == pytest.approx(-out['diff'])
  assert rev['p_value'] == pytest.approx(out['p_value'])


def test_paired_bootstrap_with_groups_and_a_close_call():
  # two models that differ only by noise: no significant difference
  labels, base = _scores(120, 1.0, seed=3)
  rng = np.random.default_rng(0)
  a, b = base + 0.2 * rng.normal(size=120), base + 0.2 * rng.normal(size=120)
  groups = np.arange(120) // 3
  out = stats.paired_bootstrap(auroc, labels, a, b, groups=groups, n_boot=300, seed=0)
  assert out['lo'] < 0 < out['hi'] and out['p_value'] > 0.05


def test_delong_hand_case():
  # positives X = (0.9, 0.4), negatives Y = (0.5, 0.1); psi(X_i, Y_j) = [[1, 1], [0, 1]]:
  # AUC = 3/4, V10 = (1, 1/2), V01 = (1/2, 1), S10 = S01 = 1/8, Var = 1/8/2 + 1/8/2 = 1/8
  aucs, cov = stats.delong_covariance([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1])
  assert aucs[0] == pytest.approx(0.75)
  assert cov[0, 0] == pytest.approx(0.125)


def _brute_force_delong(labels, scores):
  """Structural components written from DeLong et al. (1988), with explicit loops."""
  labels = np.asarray(labels)
  r = len(scores)
  v10, v01, aucs = [], [], []
  for s in scores:
    x, y = s[labels == 1], s[labels == 0]
    psi = np.array([[1.0 if xi > yj else 0.5 if xi == yj else 0.0 for yj in y] for xi in x])
    aucs.append(psi.mean())
    v10.append(psi.mean(axis=1))
    v01.append(psi.mean(axis=0))
  v10, v01 = np.array(v10), np.array(v01)
  m, n = v10.shape[1], v01.shape[1]
  s10 = np.array([[np.sum((v10[i] - v10[i].mean()) * (v10[j] - v10[j].mean())) / (m - 1)
                   for j in range(r)] for i in range(r)])
  s01 = np.array([[np.sum((v01[i] - v01[i].mean()) * (v01[j] - v01[j].mean())) / (n - 1)
                   for j in range(r)] for i in range(r)])
  return np.array(aucs), s10 / m + s01 / n


def test_delong_matches_brute_force_and_sklearn_with_ties():
  rng = np.random.default_rng(4)
  labels = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0])
  # rounded scores so that ties within and across classes occur
  a = np.round(labels + rng.normal(size=11), 0)
  b = np.round(0.5 * labels + rng.normal(size=11), 1)
  aucs, cov = stats.delong_covariance(labels, np.stack([a, b]))
  want_aucs, want_cov = _brute_force_delong(labels, [a, b])
  np.testing.assert_allclose(aucs, want_aucs, atol=1e-12)
  np.testing.assert_allclose(cov, want_cov, atol=1e-12)
  out = stats.delong_test(labels, a, b)
  assert out['auc_a'] == pytest.approx(skm.roc_auc_score(labels, a))
  assert out['auc_b'] == pytest.approx(skm.roc_auc_score(labels, b))
  var = want_cov[0, 0] + want_cov[1, 1] - 2 * want_cov[0, 1]
  assert out['z'] == pytest.approx((want_aucs[0] - want_aucs[1]) / np.sqrt(var))
  assert out['p_value'] == pytest.approx(2 * sps.norm.sf(abs(out['z'])))


def test_delong_self_and_clearly_better():
  labels, s = _scores(80, 1.0, seed=6)
  same = stats.delong_test(labels, s, s)
  assert same['diff'] == 0 and same['z'] == 0 and same['p_value'] == 1.0
  labels, good = _scores(300, 2.0, seed=7)
  bad = np.random.default_rng(8).normal(size=300)
  out = stats.delong_test(labels, good, bad)
  assert out['p_value'] < 1e-3 and out['z'] > 0


def test_delong_refuses_too_few_cases():
  with pytest.raises(ValueError, match='2 positives'):
    stats.delong_test([1, 0, 0], [0.2, 0.1, 0.3], [0.1, 0.2, 0.3])


def test_mean_std_ignores_nan():
  v = [0.7, np.nan, 0.8, 0.9]
  mean, std = stats.mean_std(v)
  assert mean == pytest.approx(0.8)
  assert std == pytest.approx(np.std([0.7, 0.8, 0.9], ddof=1))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert np.isnan(stats.mean_std([np.nan, np.nan])).all()
    m1, s1 = stats.mean_std([0.5])
  assert m1 == 0.5 and np.isnan(s1)
