"""Uncertainty of test metrics: the patient-cluster bootstrap, vectorised over resamples.

Images of one patient are not independent, so each resample draws whole patients with
replacement: example i weighs the number of times its patient was drawn, and the metrics
are the weighted ones of `cxr_jax.eval.metrics` (equal to the metrics of the repeated
data), computed for a block of resamples at once. A resample where a metric is undefined
(NaN, e.g. a macro AUROC when only one class was drawn) is skipped and counted, never
averaged in.

Every function draws its resamples from `np.random.default_rng(seed)` in the same way, so
with the same seed and the same patients every model is scored on the same resamples (the
paired tests rely on it).

Models are given as [N, S, K] probabilities of S seeds on the same N images; what is
bootstrapped is the seed-mean of a metric (the test-set sampling uncertainty of the average
model: probabilities are never pooled over seeds, which would score an ensemble).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from cxr_jax.eval import metrics as M

BLOCK = 200  # resamples per vectorised block (bounds memory at BLOCK x N weights)


def bootstrap_weights(groups, n_boot: int, seed: int = 0,
                      block: int = BLOCK) -> Iterator[np.ndarray]:
  """Blocks of cluster-bootstrap resamples as per-example weights [b, N].

  Resample r draws G patients with replacement (one `rng.integers(G, size=G)` per
  resample from `default_rng(seed)`); example i weighs the number of times its patient
  was drawn.

  Args:
    groups: [N] patient ids (np.arange(N): every example is its own patient).
    n_boot: resamples B in all.
    seed: resampling seed.
    block: resamples per yielded block.

  Yields:
    float64 [b, N] weight matrices, b <= block, B rows in all.
  """
  gidx = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
  num_groups = int(gidx.max()) + 1
  rng = np.random.default_rng(seed)
  for start in range(0, n_boot, block):
    b = min(block, n_boot - start)
    draws = np.stack([np.bincount(rng.integers(num_groups, size=num_groups),
                                  minlength=num_groups) for _ in range(b)])
    yield draws[:, gidx].astype(np.float64)


def percentile_ci(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
  """The (alpha/2, 1 - alpha/2) percentile interval over the non-NaN values."""
  v = values[~np.isnan(values)]
  if v.size == 0:
    return float('nan'), float('nan')
  lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
  return float(lo), float(hi)


def p_value(diffs: np.ndarray) -> float:
  """Two-sided bootstrap p-value of H0: diff = 0 from resampled differences (NaN skipped).

  Inverts the percentile interval: p = min(1, 2 min((1 + #{d* <= 0}) / (B + 1),
  (1 + #{d* >= 0}) / (B + 1))), where the +1s keep p above zero with a finite number B of
  valid resamples.
  """
  v = diffs[~np.isnan(diffs)]
  if v.size == 0:
    return float('nan')
  below = (1 + np.sum(v <= 0)) / (v.size + 1)
  above = (1 + np.sum(v >= 0)) / (v.size + 1)
  return float(min(1.0, 2 * min(below, above)))


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted)."""
  p = np.asarray(p_values, np.float64)
  out = np.full(p.shape, np.nan)
  idx = np.flatnonzero(~np.isnan(p))
  m = idx.size
  running = 0.0
  for rank, i in enumerate(idx[np.argsort(p[idx], kind='stable')]):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out.tolist()


def _seed_mean(labels, probs, w, metrics: Sequence[str]) -> dict[str, np.ndarray]:
  """{metric: [b]} mean over the S seeds of probs [N, S, K] of each weighted metric."""
  per_seed = [M.weighted_metrics(labels, probs[:, s], w, metrics)
              for s in range(probs.shape[1])]
  return {m: np.mean(np.stack([p[m] for p in per_seed]), axis=0) for m in metrics}


def seed_mean_resamples(labels, probs, groups, n_boot: int, seed: int = 0,
                        metrics: Sequence[str] = M.HEADLINE) -> dict[str, np.ndarray]:
  """Bootstrap distribution of the seed-mean of each metric.

  Args:
    labels: [N] int.
    probs: [N, S, K] predictions of S seeds on the same images.
    groups: [N] patient ids.
    n_boot: resamples.
    seed: resampling seed.
    metrics: which of `metrics.HEADLINE`.

  Returns:
    {metric: [n_boot]} seed-mean values (NaN where any seed's metric was undefined).
  """
  out = {m: [] for m in metrics}
  for w in bootstrap_weights(groups, n_boot, seed):
    for m, v in _seed_mean(labels, probs, w, metrics).items():
      out[m].append(v)
  return {m: np.concatenate(v) if v else np.zeros(0) for m, v in out.items()}


def seed_mean_cis(labels, probs, groups, n_boot: int, seed: int = 0,
                  alpha: float = 0.05) -> dict[str, tuple[float, float]]:
  """{metric: (lo, hi)}: the percentile CI of the seed-mean of each HEADLINE metric.

  Args: as `seed_mean_resamples`; alpha: 1 - confidence level.
  """
  dist = seed_mean_resamples(labels, probs, groups, n_boot, seed)
  return {m: percentile_ci(v, alpha) for m, v in dist.items()}


def seed_mean_class_cis(labels, probs, groups, n_boot: int, seed: int = 0,
                        alpha: float = 0.05, metric: str = 'auroc'
                        ) -> list[tuple[float, float]]:
  """[(lo, hi)] per class (per finding, for multi-label targets [N, F]): the percentile
  CI of the seed-mean of its one-vs-rest `metric` ('auroc', 'map' -> AP, or 'ece' for
  findings), on the same resamples as `seed_mean_cis` with the same seed."""
  key = {'auroc': 'auroc/', 'map': 'ap/', 'ece': 'ece/'}[metric]
  dist = []
  for w in bootstrap_weights(groups, n_boot, seed):
    per_seed = [M.weighted_metrics(labels, probs[:, s], w, (key,))[key]
                for s in range(probs.shape[1])]
    dist.append(np.mean(np.stack(per_seed), axis=0))  # [b, K]
  dist = np.concatenate(dist) if dist else np.zeros((0, probs.shape[-1]))
  return [percentile_ci(dist[:, k], alpha) for k in range(probs.shape[-1])]


def paired_comparison(labels, probs_a, probs_b, groups, n_boot: int, seed: int = 0,
                      alpha: float = 0.05, metric: str = 'auroc') -> dict[str, float]:
  """Paired bootstrap of seed-mean metric(a) - seed-mean metric(b) on the same patients.

  Each resample scores both models on the same resampled patients, so the correlation of
  their errors is kept (a paired test).

  Args:
    labels: [N].
    probs_a, probs_b: [N, S, K] (the same S for both; seeds need not correspond).
    groups: [N] patient ids.
    n_boot: resamples.
    seed: resampling seed.
    alpha: 1 - confidence level of [lo, hi].
    metric: one of `metrics.HEADLINE`.

  Returns:
    dict 'diff' (on the full data), 'lo', 'hi' (percentile interval of the difference),
    'p_value' (`p_value`), 'n_valid', 'n_skipped' (resamples where either was NaN).
  """
  names = [str(k) for k in range(probs_a.shape[-1])]
  point = lambda p: np.mean([M.classification_metrics(labels, p[:, s], names)[metric]
                             for s in range(p.shape[1])])
  diffs = []
  for w in bootstrap_weights(groups, n_boot, seed):
    diffs.append(_seed_mean(labels, probs_a, w, (metric,))[metric] -
                 _seed_mean(labels, probs_b, w, (metric,))[metric])
  diffs = np.concatenate(diffs) if diffs else np.zeros(0)
  lo, hi = percentile_ci(diffs, alpha)
  valid = int(np.sum(~np.isnan(diffs)))
  return dict(diff=float(point(probs_a) - point(probs_b)), lo=lo, hi=hi,
              p_value=p_value(diffs), n_valid=valid, n_skipped=n_boot - valid)


def weighted_mean_resamples(values, groups, n_boot: int, seed: int = 0) -> np.ndarray:
  """Bootstrap distribution [n_boot] of the mean of per-example values [N] (NaN values
  skipped; NaN for a resample where none is left)."""
  values = np.asarray(values, np.float64)
  ok = ~np.isnan(values)
  x = np.where(ok, values, 0.0)
  out = []
  for w in bootstrap_weights(groups, n_boot, seed):
    den = w @ ok
    with np.errstate(invalid='ignore', divide='ignore'):
      out.append(np.where(den > 0, (w @ x) / np.where(den > 0, den, 1.0), np.nan))
  return np.concatenate(out) if out else np.zeros(0)


def paired_mean_difference(a, b, groups, n_boot: int, seed: int = 0) -> dict[str, float]:
  """Paired bootstrap of mean(a) - mean(b) of per-example values [N] on the same patients
  (NaN values skipped).

  Returns:
    dict 'diff' (on the full data), 'lo', 'hi' (95% percentile interval), 'p_value'.
  """
  diffs = (weighted_mean_resamples(a, groups, n_boot, seed) -
           weighted_mean_resamples(b, groups, n_boot, seed))  # same seed: same draws
  lo, hi = percentile_ci(diffs)
  return dict(diff=float(np.nanmean(a) - np.nanmean(b)), lo=lo, hi=hi,
              p_value=p_value(diffs))
