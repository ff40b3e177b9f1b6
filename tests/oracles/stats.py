"""Reference statistics for the tests: bootstrap confidence intervals, paired tests, DeLong.

An oracle, written independently of the package: it resamples by repeating examples and
calls any metric function per resample, where `cxr_jax.eval.bootstrap` weighs examples and
vectorises over resamples. With the same seed it draws the same patient resamples
(`rng.integers(G, size=G)` per resample from `default_rng(seed)`), so the two must agree.

Images of one patient (or study) are not independent, so the bootstrap resamples whole
groups when `groups` is given: a patient drawn twice contributes all of their images twice
(the cluster bootstrap). A resample where the metric is undefined (NaN, e.g. a macro AUROC
when only one class was drawn) is skipped and counted, never silently averaged in.

All functions take numpy arrays (or anything `np.asarray` accepts) and return floats.
"""
from __future__ import annotations

from typing import Callable
import warnings

import numpy as np
from scipy import stats as sps

MetricFn = Callable[[np.ndarray, np.ndarray], float]


class BootstrapCI(tuple):
  """`(point, lo, hi)`, a plain 3-tuple, plus the resample counts as attributes.

  Attributes:
    point: the metric on the full data.
    lo, hi: the percentile interval of the metric over the valid resamples.
    n_valid: resamples where the metric was defined.
    n_skipped: resamples where it was NaN (skipped).
  """

  def __new__(cls, point, lo, hi, n_valid, n_skipped):
    obj = super().__new__(cls, (float(point), float(lo), float(hi)))
    obj.n_valid, obj.n_skipped = int(n_valid), int(n_skipped)
    return obj

  point = property(lambda self: self[0])
  lo = property(lambda self: self[1])
  hi = property(lambda self: self[2])

  def __repr__(self):
    return (f'BootstrapCI(point={self[0]:.4g}, lo={self[1]:.4g}, hi={self[2]:.4g}, '
            f'n_valid={self.n_valid}, n_skipped={self.n_skipped})')


def _group_index(groups, n: int) -> np.ndarray:
  """Maps each of the n examples to a dense group index in [0, G)."""
  if groups is None:
    return np.arange(n)
  groups = np.asarray(groups)
  if groups.shape != (n,):
    raise ValueError(f'groups must have shape [{n}] (one id per example), got {groups.shape}')
  return np.unique(groups, return_inverse=True)[1].reshape(-1)


def _resample_indices(gidx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Indices of one cluster-bootstrap resample.

  Draws G groups with replacement; every example of a group drawn m times appears m times.
  With one group per example this is the ordinary bootstrap.
  """
  num_groups = int(gidx.max()) + 1
  draws = np.bincount(rng.integers(num_groups, size=num_groups), minlength=num_groups)
  return np.repeat(np.arange(len(gidx)), draws[gidx])


def _metric(metric_fn, labels, probs) -> float:
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)
    return float(metric_fn(labels, probs))


def _percentiles(values: np.ndarray, alpha: float):
  if values.size == 0:
    return float('nan'), float('nan')
  lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
  return float(lo), float(hi)


def bootstrap_ci(metric_fn: MetricFn, labels, probs, groups=None, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> BootstrapCI:
  """Percentile bootstrap confidence interval of `metric_fn(labels, probs)`.

  Args:
    metric_fn: `f(labels [n], probs [n, ...]) -> float`, e.g.
      `lambda y, p: classification_metrics(y, p, names)['auroc']`. May return NaN.
    labels: [N] per-example labels.
    probs: [N, ...] per-example predictions.
    groups: optional [N] patient/study ids; when given, whole groups are resampled.
    n_boot: number of resamples.
    alpha: 1 - confidence level (0.05 gives a 95% interval).
    seed: seed of the resampling; the same seed draws the same resamples.

  Returns:
    A `BootstrapCI` that unpacks as `(point, lo, hi)`, with `n_valid` and `n_skipped`.
  """
  labels, probs = np.asarray(labels), np.asarray(probs)
  gidx = _group_index(groups, len(labels))
  rng = np.random.default_rng(seed)
  point = _metric(metric_fn, labels, probs)
  values = np.empty(n_boot)
  for b in range(n_boot):
    idx = _resample_indices(gidx, rng)
    values[b] = _metric(metric_fn, labels[idx], probs[idx])
  valid = values[~np.isnan(values)]
  lo, hi = _percentiles(valid, alpha)
  return BootstrapCI(point, lo, hi, valid.size, n_boot - valid.size)


def paired_bootstrap(metric_fn: MetricFn, labels, probs_a, probs_b, groups=None,
                     n_boot: int = 1000, alpha: float = 0.05,
                     seed: int = 0) -> dict[str, float]:
  """Paired bootstrap of the difference metric(a) - metric(b) on the same test set.

  Each resample draws one set of examples (or groups) and evaluates both models on it, so
  the correlation between the two models' errors is kept (a paired test). The two-sided
  p-value of H0: diff = 0 inverts the percentile interval,
  p = min(1, 2 min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1))),
  where the +1s keep p above zero with a finite number B of valid resamples.

  Args:
    metric_fn: `f(labels, probs) -> float` (may return NaN).
    labels: [N] labels.
    probs_a, probs_b: [N, ...] predictions of models a and b.
    groups: optional [N] patient/study ids (whole groups are resampled).
    n_boot: number of resamples.
    alpha: 1 - confidence level of [lo, hi].
    seed: resampling seed.

  Returns:
    dict with 'diff' (on the full data), 'lo', 'hi' (percentile interval of the
    difference), 'p_value', 'n_valid', 'n_skipped' (resamples where either metric was NaN).
  """
  labels, probs_a, probs_b = np.asarray(labels), np.asarray(probs_a), np.asarray(probs_b)
  if probs_a.shape != probs_b.shape:
    raise ValueError(f'probs_a {probs_a.shape} and probs_b {probs_b.shape} differ in shape')
  gidx = _group_index(groups, len(labels))
  rng = np.random.default_rng(seed)
  diff = _metric(metric_fn, labels, probs_a) - _metric(metric_fn, labels, probs_b)
  values = np.empty(n_boot)
  for b in range(n_boot):
    idx = _resample_indices(gidx, rng)
    values[b] = (_metric(metric_fn, labels[idx], probs_a[idx])
                 - _metric(metric_fn, labels[idx], probs_b[idx]))
  valid = values[~np.isnan(values)]
  lo, hi = _percentiles(valid, alpha)
  if valid.size:
    below = (1 + np.sum(valid <= 0)) / (valid.size + 1)
    above = (1 + np.sum(valid >= 0)) / (valid.size + 1)
    p = float(min(1.0, 2 * min(below, above)))
  else:
    p = float('nan')
  return dict(diff=float(diff), lo=lo, hi=hi, p_value=p, n_valid=int(valid.size),
              n_skipped=int(n_boot - valid.size))


def _midrank(x: np.ndarray) -> np.ndarray:
  """Midranks (1-based; ties share the mean of their ranks) of x [n]."""
  return sps.rankdata(x, method='average')


def delong_covariance(labels_binary, scores) -> tuple[np.ndarray, np.ndarray]:
  """AUCs of R score vectors and the DeLong covariance matrix of their estimates.

  With m positives X and n negatives Y, the AUC of a score is the Mann-Whitney statistic
  mean_ij psi(X_i, Y_j), psi = 1 if X > Y, 1/2 if equal, 0 otherwise. Its structural
  components are V10_i = mean_j psi(X_i, Y_j) and V01_j = mean_i psi(X_i, Y_j), and
  Cov(AUC) = S10 / m + S01 / n with S10, S01 the [R, R] sample covariances (ddof = 1) of
  the components across models (DeLong, DeLong & Clarke-Pearson, Biometrics 1988). The
  components come from midranks in O(R (m + n) log(m + n)) (Sun & Xu, IEEE SPL 2014):
  V10_i = (Tz_i - Tx_i) / n and V01_j = 1 - (Tz_j - Ty_j) / m, with Tz the midranks among
  all examples, Tx among the positives and Ty among the negatives.

  Args:
    labels_binary: [N] 0/1 (or bool) labels; 1 is the positive class.
    scores: [R, N] (or [N]) scores, higher meaning more likely positive.

  Returns:
    (aucs [R], cov [R, R]).
  """
  y = np.asarray(labels_binary)
  s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
  if y.ndim != 1 or s.shape[1] != y.shape[0]:
    raise ValueError(f'expected labels [N] and scores [R, N], got {y.shape} and {s.shape}')
  if not np.all(np.isin(y, (0, 1))):
    raise ValueError(f'labels_binary must be 0/1, got values {np.unique(y)[:10]}')
  pos, neg = s[:, y == 1], s[:, y == 0]
  m, n = pos.shape[1], neg.shape[1]
  if m < 2 or n < 2:
    raise ValueError(f'DeLong needs at least 2 positives and 2 negatives, got {m} and {n}')
  tx = np.stack([_midrank(r) for r in pos])
  ty = np.stack([_midrank(r) for r in neg])
  tz = np.stack([_midrank(r) for r in np.concatenate([pos, neg], axis=1)])
  aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
  v10 = (tz[:, :m] - tx) / n
  v01 = 1.0 - (tz[:, m:] - ty) / m
  cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
  return aucs, cov


def delong_test(labels_binary, scores_a, scores_b) -> dict[str, float]:
  """DeLong's test for the difference of two correlated ROC AUCs on the same cases.

  Args:
    labels_binary: [N] 0/1 labels.
    scores_a, scores_b: [N] scores of models a and b (e.g. P(positive) or a one-vs-rest
      column of probs).

  Returns:
    dict with 'auc_a', 'auc_b', 'diff' (= auc_a - auc_b), 'z' (diff over its DeLong
    standard error) and the two-sided normal 'p_value'. When the variance of the
    difference is zero (e.g. identical scores) z is 0 (p = 1) if diff = 0, else +-inf.
  """
  aucs, cov = delong_covariance(labels_binary, np.stack([scores_a, scores_b]))
  diff = float(aucs[0] - aucs[1])
  var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
  if var <= 1e-15:  # rounding can leave a tiny negative value for identical models
    z = 0.0 if abs(diff) < 1e-12 else float(np.sign(diff) * np.inf)
  else:
    z = diff / np.sqrt(var)
  p = float(2 * sps.norm.sf(abs(z)))
  return dict(auc_a=float(aucs[0]), auc_b=float(aucs[1]), diff=diff, z=float(z), p_value=p)


def mean_std(values, ddof: int = 1) -> tuple[float, float]:
  """Mean and standard deviation (ddof = 1: over seeds, a sample) ignoring NaN.

  Returns NaN for the mean when no value is finite, and NaN for the std when fewer than
  ddof + 1 values are.
  """
  v = np.asarray(values, dtype=np.float64).reshape(-1)
  v = v[~np.isnan(v)]
  mean = float(v.mean()) if v.size else float('nan')
  std = float(v.std(ddof=ddof)) if v.size > ddof else float('nan')
  return mean, std
