"""Multi-label findings: masked BCE, per-finding metrics with NaN targets, their bootstrap
CIs, and the multi-label probes, each against an independent computation (numpy written
out, scikit-learn)."""
import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cxr_jax.eval import bootstrap
from cxr_jax.eval import metrics
from cxr_jax.eval import probes

NAMES = ['atelectasis', 'edema', 'effusion', 'hernia']


def _case(n=80, seed=0):
  """Targets [n, 4] with NaNs (not observed); 'hernia' has no observed positive."""
  rng = np.random.default_rng(seed)
  y = (rng.random((n, 4)) < [0.4, 0.3, 0.5, 0.0]).astype(np.float64)
  y[rng.random((n, 4)) < 0.2] = np.nan
  probs = np.clip(0.5 * np.nan_to_num(y, nan=0.5) + 0.5 * rng.random((n, 4)), 0, 1)
  return y, probs


def test_masked_bce_matches_numpy_and_ignores_nan():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  targets = np.array([[1, 0, np.nan], [0, np.nan, np.nan], [1, 1, 0],
                      [np.nan, 0, 1], [0, 0, 0], [1, np.nan, 1]], np.float32)
  got = float(probes.masked_sigmoid_bce(logits, targets))
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  terms = [-(t * np.log(q) + (1 - t) * np.log(1 - q))
           for t, q in zip(targets.ravel(), p.ravel()) if not np.isnan(t)]
  assert got == pytest.approx(np.mean(terms), rel=1e-5)
  # a NaN target contributes nothing: changing its logit changes nothing
  moved = logits.copy()
  moved[np.isnan(targets)] += 100.0
  assert float(probes.masked_sigmoid_bce(moved, targets)) == pytest.approx(got, rel=1e-6)
  assert float(probes.masked_sigmoid_bce(logits, np.full((6, 3), np.nan, np.float32))) == 0.0


def test_per_finding_metrics_match_sklearn_on_observed_entries():
  y, probs = _case()
  out = metrics.classification_metrics(y, probs, NAMES)
  aurocs = []
  for f, name in enumerate(NAMES[:3]):
    ok = ~np.isnan(y[:, f])
    want = skm.roc_auc_score(y[ok, f], probs[ok, f])
    assert out[f'auroc/{name}'] == pytest.approx(want)
    assert out[f'ap/{name}'] == pytest.approx(
        skm.average_precision_score(y[ok, f], probs[ok, f]))
    aurocs.append(want)
  # no observed positive: undefined, and left out of the mean (the headline)
  assert np.isnan(out['auroc/hernia']) and np.isnan(out['ap/hernia'])
  assert out['auroc'] == pytest.approx(np.mean(aurocs))
  assert set(out) >= {'auroc', 'map', 'ece'} and 'accuracy' not in out


def test_per_finding_ece_written_out():
  y, probs = _case(seed=1)
  out = metrics.classification_metrics(y, probs, NAMES)
  eces = []
  for f, name in enumerate(NAMES):
    ok = ~np.isnan(y[:, f])
    t, p = y[ok, f], probs[ok, f]
    total = 0.0
    for b in range(metrics.ECE_BINS):  # bins (b/M, (b+1)/M], the first also takes 0
      lo, hi = b / metrics.ECE_BINS, (b + 1) / metrics.ECE_BINS
      inside = (p > lo) & (p <= hi) | ((b == 0) & (p == 0))
      total += abs(t[inside].sum() - p[inside].sum())
    eces.append(total / ok.sum())
    assert out[f'ece/{name}'] == pytest.approx(eces[-1])
  assert out['ece'] == pytest.approx(np.mean(eces))


def test_weighted_multilabel_is_the_metric_of_repeated_data():
  y, probs = _case(n=30, seed=2)
  w = np.random.default_rng(3).integers(0, 3, size=(1, 30)).astype(np.float64)
  got = metrics.weighted_metrics(y, probs, w, ('auroc', 'map', 'ece', 'auroc/'))
  rep = np.repeat(np.arange(30), w[0].astype(int))
  want = metrics.classification_metrics(y[rep], probs[rep], NAMES)
  for m in ('auroc', 'map', 'ece'):
    assert got[m][0] == pytest.approx(want[m])
  np.testing.assert_allclose(got['auroc/'][0, :3], [want[f'auroc/{n}'] for n in NAMES[:3]])


def test_per_finding_bootstrap_cis_are_the_percentiles_of_resampled_metrics():
  y, probs = _case(n=40, seed=4)
  groups = np.arange(40) // 2  # two images per patient
  stacked = np.stack([probs, probs[::-1]], axis=1)  # [N, S=2, F]
  cis = bootstrap.seed_mean_class_cis(y, stacked, groups, n_boot=50, seed=7)
  per_resample = []
  for w in bootstrap.bootstrap_weights(groups, 50, seed=7):
    for row in w:
      rep = np.repeat(np.arange(40), row.astype(int))
      per_resample.append([np.mean([metrics.classification_metrics(
          y[rep], stacked[rep, s], NAMES)[f'auroc/{n}'] for s in range(2)]) for n in NAMES])
  per_resample = np.array(per_resample)
  for f in range(3):
    want = np.nanquantile(per_resample[:, f], [0.025, 0.975])
    np.testing.assert_allclose(cis[f], want)
  assert all(np.isnan(v) for v in cis[3])  # hernia: undefined in every resample
  # the mean's CI comes from the same engine, with the undefined finding left out
  lo, hi = bootstrap.seed_mean_cis(y, stacked, groups, 50, seed=7)['auroc']
  assert lo < np.mean([metrics.classification_metrics(y, stacked[:, s], NAMES)['auroc']
                       for s in range(2)]) < hi


def test_multilabel_knn_averages_observed_neighbour_targets():
  rng = np.random.default_rng(5)
  bank = rng.normal(size=(30, 6)).astype(np.float32)
  targets = (rng.random((30, 3)) < 0.5).astype(np.float32)
  targets[rng.random((30, 3)) < 0.3] = np.nan
  queries = rng.normal(size=(7, 6)).astype(np.float32)
  got = np.asarray(probes.knn_predict_multilabel(bank, targets, queries, k=5,
                                                 temperature=0.1, chunk_size=3))
  bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  for q, row in zip(queries, got):
    sim = bn @ (q / np.linalg.norm(q))
    top = np.argsort(-sim)[:5]
    w = np.exp(sim[top] / 0.1)
    for f in range(3):
      ok = ~np.isnan(targets[top, f])
      want = (w[ok] * targets[top, f][ok]).sum() / w[ok].sum() if ok.any() else 0.5
      assert row[f] == pytest.approx(want, abs=1e-5)


def test_multilabel_linear_probe_matches_one_sklearn_logistic_regression_per_finding():
  rng = np.random.default_rng(6)
  n, d = 160, 8
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x @ rng.normal(size=(d, 3)) + rng.normal(size=(n, 3)) > 0).astype(np.float32)
  y[rng.random((n, 3)) < 0.25] = np.nan
  l2 = 1e-2
  probe = probes.linear_probe_fit(x, y, num_classes=3, l2=l2, steps=300)
  probs = np.asarray(probes.linear_probe_predict(probe, x, multilabel=True))
  xs = StandardScaler().fit_transform(x)
  observed = int((~np.isnan(y)).sum())
  # mean BCE over the observed entries + l2/2 ||W||^2 = per finding sklearn's
  # C sum BCE + ||w||^2 / 2 with C = 1 / (l2 * number of observed entries)
  for f in range(3):
    ok = ~np.isnan(y[:, f])
    sk = LogisticRegression(C=1 / (l2 * observed), tol=1e-10, max_iter=5000).fit(
        xs[ok], y[ok, f])
    np.testing.assert_allclose(probs[:, f], sk.predict_proba(xs)[:, 1], atol=2e-3)
