"""Test-set classification metrics: numpy in, Python floats out.

Written in numpy (tested against scikit-learn) because they run inside bootstraps of a
thousand resamples, where sklearn's per-call input validation would dominate.

`classification_metrics` is the one function the evaluation job and the bootstrap call; it
never raises on degenerate inputs (one class present, a class never predicted): a metric
that is undefined there is NaN, so that a bootstrap resample can be skipped and counted
(see `cxr_jax.eval.stats.bootstrap_ci`) instead of crashing a long run.

Definitions (K classes, N examples):
  accuracy           mean(argmax(probs) == labels)
  balanced_accuracy  mean over the classes present in `labels` of their recall
  macro_f1           unweighted mean F1 over the classes present in `labels` or predicted
                     (a class predicted but never true scores F1 = 0)
  auroc/<name>       one-vs-rest ROC AUC of probs[:, c] for class c; NaN when class c is
                     absent from `labels` or is the only class present
  auroc              mean of the defined per-class AUROCs (macro one-vs-rest)
  ap/<name>, map     one-vs-rest average precision per class, and its macro mean, with the
                     same NaN rules as AUROC
  ece                expected calibration error (Guo et al. 2017) with 15 equal-width bins
                     over the confidence max_k probs[:, k]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

ECE_BINS = 15


def _check(labels, probs, num_classes: int | None = None):
  """Validates and returns (labels [N] int64, probs [N, K] float64)."""
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  if probs.ndim == 1:
    # a binary score vector is P(class 1)
    probs = np.stack([1.0 - probs, probs], axis=1)
  if labels.ndim != 1 or probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
    raise ValueError(f'expected labels [N] and probs [N, K], got labels {labels.shape} '
                     f'and probs {probs.shape}')
  if labels.shape[0] == 0:
    raise ValueError('cannot compute metrics on an empty set (N = 0)')
  if num_classes is not None and probs.shape[1] != num_classes:
    raise ValueError(f'probs has {probs.shape[1]} columns but {num_classes} class names '
                     'were given')
  if not np.issubdtype(labels.dtype, np.integer):
    if not np.all(labels == np.round(labels)):
      raise ValueError(f'labels must be integer class indices, got dtype {labels.dtype}')
    labels = labels.astype(np.int64)
  bad = (labels < 0) | (labels >= probs.shape[1])
  if np.any(bad):
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f'label {labels[i]} at row {i} is outside [0, {probs.shape[1]})')
  if not np.all(np.isfinite(probs)):
    i = int(np.flatnonzero(~np.all(np.isfinite(probs), axis=1))[0])
    raise ValueError(f'probs has a non-finite value at row {i}: {probs[i]}')
  return labels.astype(np.int64), probs


def expected_calibration_error(labels, probs, num_bins: int = ECE_BINS) -> float:
  """Expected calibration error over the max-probability confidence.

  ECE = sum_b (n_b / N) |acc_b - conf_b|, with bins b = (i/M, (i+1)/M] for i < M (the first
  bin also takes confidence 0), acc_b the accuracy and conf_b the mean confidence of the
  n_b examples whose confidence falls in bin b (Guo et al., "On calibration of modern
  neural networks", ICML 2017).

  Args:
    labels: [N] int class indices.
    probs: [N, K] class probabilities (or [N] P(class 1) for a binary task).
    num_bins: M, the number of equal-width confidence bins on [0, 1].

  Returns:
    The ECE in [0, 1].
  """
  labels, probs = _check(labels, probs)
  conf = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  # right-closed bins: a confidence exactly on an edge i/M goes to the bin below it
  bins = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  gap = np.abs(np.bincount(bins, correct, num_bins) - np.bincount(bins, conf, num_bins))
  # sum_b (n_b/N)|acc_b - conf_b| = sum_b |sum_correct_b - sum_conf_b| / N
  return float(gap.sum() / len(labels))


def binary_auroc(positive, scores) -> float:
  """ROC AUC as the Mann-Whitney statistic: P(score+ > score-) + P(tie) / 2.

  Computed from midranks in O(N log N), the same value as sklearn's `roc_auc_score` at a
  fraction of its per-call overhead (this runs inside 1000-fold bootstraps).

  Args:
    positive: [N] bool.
    scores: [N] float.

  Returns:
    The AUC, or NaN when only one class is present.
  """
  positive = np.asarray(positive, bool)
  m = int(positive.sum())
  n = positive.size - m
  if m == 0 or n == 0:
    return float('nan')
  ranks = rankdata(scores, method='average')
  return float((ranks[positive].sum() - m * (m + 1) / 2) / (m * n))


def binary_average_precision(positive, scores) -> float:
  """Average precision: sum over thresholds of (R_t - R_{t-1}) P_t (no interpolation).

  Thresholds are the distinct scores, so tied examples enter together, as in sklearn's
  `average_precision_score`.

  Args:
    positive: [N] bool.
    scores: [N] float.

  Returns:
    The AP, or NaN when only one class is present.
  """
  positive = np.asarray(positive, bool)
  m = int(positive.sum())
  if m == 0 or m == positive.size:
    return float('nan')
  order = np.argsort(-np.asarray(scores), kind='stable')
  s, y = np.asarray(scores)[order], positive[order]
  # the last position of each run of tied scores is one threshold
  last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
  tp = np.cumsum(y)[last]
  precision = tp / (last + 1)
  recall_gain = np.diff(np.r_[0, tp]) / m
  return float(np.sum(recall_gain * precision))


def _one_vs_rest(score_fn, labels, probs) -> np.ndarray:
  """Per-class one-vs-rest score [K]; NaN for a class absent or alone in `labels`."""
  return np.array([score_fn(labels == c, probs[:, c]) for c in range(probs.shape[1])])


def _macro_f1(labels, preds) -> float:
  """Unweighted mean F1 over the classes that are true or predicted (sklearn's default)."""
  classes = np.union1d(labels, preds)
  tp = np.array([np.sum((preds == c) & (labels == c)) for c in classes])
  fp = np.array([np.sum((preds == c) & (labels != c)) for c in classes])
  fn = np.array([np.sum((preds != c) & (labels == c)) for c in classes])
  # 2tp + fp + fn > 0 for every class in the union
  return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def _nanmean(x) -> float:
  x = np.asarray(x, dtype=np.float64)
  x = x[~np.isnan(x)]
  return float(x.mean()) if x.size else float('nan')


def classification_metrics(labels, probs, class_names: Sequence[str]) -> dict[str, float]:
  """All test metrics of one model on one split.

  Args:
    labels: [N] int class indices in [0, K).
    probs: [N, K] predicted class probabilities (rows need not sum exactly to 1); for a
      binary task a [N] vector of P(class 1) is accepted too.
    class_names: K names, used in the per-class keys `auroc/<name>` and `ap/<name>`.

  Returns:
    A dict of floats: 'accuracy', 'balanced_accuracy', 'macro_f1', 'auroc', 'map', 'ece',
    and 'auroc/<name>', 'ap/<name>' per class. Undefined values are NaN (see the module
    docstring); the function does not raise on degenerate inputs.
  """
  class_names = list(class_names)
  labels, probs = _check(labels, probs, len(class_names))
  preds = probs.argmax(axis=1)
  present = np.unique(labels)
  out = {'accuracy': float(np.mean(preds == labels))}
  # recall averaged over the true classes, written out so no sklearn warning is raised
  # when a class is predicted but absent from labels
  out['balanced_accuracy'] = float(np.mean([np.mean(preds[labels == c] == c)
                                            for c in present]))
  out['macro_f1'] = _macro_f1(labels, preds)
  auroc = _one_vs_rest(binary_auroc, labels, probs)
  ap = _one_vs_rest(binary_average_precision, labels, probs)
  out['auroc'] = _nanmean(auroc)
  out['map'] = _nanmean(ap)
  out['ece'] = expected_calibration_error(labels, probs)
  for name, a, p in zip(class_names, auroc, ap):
    out[f'auroc/{name}'] = float(a)
    out[f'ap/{name}'] = float(p)
  return out
