"""Test-set classification metrics: numpy in, Python floats (or [B] arrays) out.

One implementation, under example weights: every metric is written for per-example
weights w [B, N] (B weight vectors at once), so that a bootstrap resample, where example
i stands w_i times, is scored without repeating data (`cxr_jax.eval.bootstrap`), and the
plain metrics are the weighted ones with w = ones. Written in numpy (tested against
scikit-learn) because they run inside bootstraps of a thousand resamples, where sklearn's
per-call input validation would dominate.

`classification_metrics` is the one function the evaluation job calls; it never raises on
degenerate inputs (one class present, a class never predicted): a metric that is undefined
there is NaN, so that a bootstrap resample can be skipped and counted instead of crashing a
long run.

Definitions (K classes, N examples; with weights, "mean" and "count" are weighted):
  accuracy           mean(argmax(probs) == labels)
  balanced_accuracy  mean over the classes present in `labels` of their recall
  macro_f1           unweighted mean F1 over the classes present in `labels` or predicted
                     (a class predicted but never true scores F1 = 0)
  auroc/<name>       one-vs-rest ROC AUC of probs[:, c] for class c; NaN when class c is
                     absent from `labels` or is the only class present
  auroc              mean of the defined per-class AUROCs (macro one-vs-rest)
  ap/<name>, map     one-vs-rest average precision per class, and its macro mean, with the
                     same NaN rules as AUROC
  ece                expected calibration error (Guo et al. 2017) with ECE_BINS equal-width
                     bins over the confidence max_k probs[:, k]

Multi-label tasks (findings): `labels` is then a float [N, F] array of targets (1
present, 0 absent, NaN not observed, e.g. CheXpert's uncertain labels under U-Ignore) and
`probs` [N, F] the per-finding sigmoid probabilities. Each finding is scored on its
observed examples only (NaN targets have weight 0):
  auroc/<name>, ap/<name>  the finding's AUROC and AP; NaN when it has no observed
                           positive or no observed negative
  ece/<name>               the finding's binary calibration error: ECE_BINS equal-width
                           bins over its probability p, sum_b |sum y - sum p| / N_observed
  auroc, map, ece          the means over the findings where they are defined (the
                           headline: mean AUROC)
Accuracy, balanced accuracy and macro F1 are not defined for them (NaN in the weighted
forms, absent from `classification_metrics`).

Unit weights reproduce the former unweighted formulas exactly for accuracy, balanced
accuracy, macro F1 and AUROC (every intermediate is an integer or half-integer, so the
same quotient is rounded once); AP and ECE sum the same terms in another order and agree
with them to a few ulps.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

ECE_BINS = 15
# the metrics `weighted_metrics` computes (and the report's columns, in this order)
HEADLINE = ('auroc', 'map', 'balanced_accuracy', 'macro_f1', 'accuracy', 'ece')
# those defined for a multi-label (findings) task
MULTILABEL_HEADLINE = ('auroc', 'map', 'ece')


def is_multilabel(labels) -> bool:
  """Whether `labels` are multi-label targets [N, F] (else class indices [N])."""
  return np.ndim(labels) == 2


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


def _unit(n: int) -> np.ndarray:
  """The weights [1, n] of the plain (unweighted) metrics."""
  return np.ones((1, n))


# ----------------------------------------------------------------------------- weighted

def nanmean_rows(x: np.ndarray) -> np.ndarray:
  """Mean of the non-NaN entries of each row of [B, K]; NaN for an all-NaN row."""
  ok = ~np.isnan(x)
  count = ok.sum(axis=1)
  return np.where(count > 0, np.where(ok, x, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)


def _tie_groups(sorted_scores: np.ndarray) -> np.ndarray | None:
  """Start index of each run of equal values in a sorted [N] array; None when all differ."""
  starts = np.flatnonzero(np.r_[True, np.diff(sorted_scores) != 0])
  return None if starts.size == sorted_scores.size else starts


def _group_sum(x: np.ndarray, starts: np.ndarray | None) -> np.ndarray:
  """Sums of [B, N] over runs of tied scores -> [B, G] (no-op without ties: reduceat is
  the slow part of the bootstrap, and continuous probabilities rarely tie)."""
  return x if starts is None else np.add.reduceat(x, starts, axis=1)


def weighted_auroc(positive, scores, w) -> np.ndarray:
  """ROC AUC under example weights, for many weight vectors at once.

  The weighted Mann-Whitney statistic sum_{i pos, j neg} w_i w_j psi(s_i, s_j) /
  (W_pos W_neg), psi = 1 if s_i > s_j, 1/2 if equal; with integer weights it is the AUC
  of the data with example i repeated w_i times (with unit weights, P(score+ > score-) +
  P(tie) / 2, sklearn's `roc_auc_score`).

  Args:
    positive: [N] bool.
    scores: [N] float.
    w: [B, N] non-negative weights.

  Returns:
    [B] AUCs; NaN where W_pos or W_neg is 0.
  """
  positive = np.asarray(positive, bool)
  order = np.argsort(scores, kind='stable')
  starts = _tie_groups(np.asarray(scores)[order])
  wo, po = w[:, order], positive[order]
  g_pos = _group_sum(wo * po, starts)  # [B, G] weight of positives per tied score
  g_neg = _group_sum(wo * ~po, starts)
  below = np.cumsum(g_neg, axis=1) - g_neg  # negative weight strictly below each score
  num = np.sum(g_pos * (below + 0.5 * g_neg), axis=1)
  den = g_pos.sum(axis=1) * g_neg.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_average_precision(positive, scores, w) -> np.ndarray:
  """Average precision under example weights (no interpolation).

  Thresholds are the distinct scores, from the highest down, so tied examples enter
  together as in sklearn's `average_precision_score`: AP = sum_t (TP_t - TP_{t-1}) / W_pos
  * TP_t / ALL_t, with TP_t and ALL_t the positive and total weights at or above
  threshold t.

  Args:
    positive: [N] bool.
    scores: [N] float.
    w: [B, N] non-negative weights.

  Returns:
    [B] APs; NaN where W_pos is 0 or W_neg is 0.
  """
  positive = np.asarray(positive, bool)
  order = np.argsort(-np.asarray(scores), kind='stable')
  starts = _tie_groups(np.asarray(scores)[order])
  wo, po = w[:, order], positive[order]
  g_pos = _group_sum(wo * po, starts)
  g_all = _group_sum(wo, starts)
  tp, total = np.cumsum(g_pos, axis=1), np.cumsum(g_all, axis=1)
  w_pos = g_pos.sum(axis=1)
  w_neg = g_all.sum(axis=1) - w_pos
  # where total is 0 no positive weight has been seen yet, so its gain is 0 too
  precision = tp / np.where(total > 0, total, 1.0)
  ap = np.sum(g_pos * precision, axis=1) / np.where(w_pos > 0, w_pos, 1.0)
  return np.where((w_pos > 0) & (w_neg > 0), ap, np.nan)


def weighted_ece(labels, probs, w, num_bins: int = ECE_BINS) -> np.ndarray:
  """Expected calibration error over the max-probability confidence, under weights.

  ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |sum_correct_b - sum_conf_b| / N, with
  bins b = (i/M, (i+1)/M] for i < M (the first bin also takes confidence 0), acc_b the
  accuracy and conf_b the mean confidence of the n_b examples whose confidence falls in
  bin b (Guo et al., "On calibration of modern neural networks", ICML 2017); counts and
  sums are weighted.

  Args:
    labels: [N] int class indices.
    probs: [N, K] class probabilities.
    w: [B, N] non-negative weights.
    num_bins: M, the number of equal-width confidence bins on [0, 1].

  Returns:
    [B] ECEs in [0, 1].
  """
  conf = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  # right-closed bins: a confidence exactly on an edge i/M goes to the bin below it
  bins = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  onehot = np.eye(num_bins)[bins]  # [N, M]
  gap = np.abs(w @ (onehot * correct[:, None]) - w @ (onehot * conf[:, None]))
  return gap.sum(axis=1) / w.sum(axis=1)


def _one_vs_rest(score_fn, labels, probs, w) -> np.ndarray:
  """[B, K] per-class one-vs-rest scores; NaN for a class absent or alone."""
  return np.stack([score_fn(labels == c, probs[:, c], w) for c in range(probs.shape[1])],
                  axis=1)


def _recall_f1(labels, pred, k: int, w) -> tuple[np.ndarray, np.ndarray]:
  """[B, K] recall (NaN for a class not true) and F1 (NaN for a class neither true nor
  predicted) of each class."""
  recalls, f1s = [], []
  for c in range(k):
    true_c, pred_c = labels == c, pred == c
    w_true = w @ true_c
    tp = w @ (true_c & pred_c)
    fp = w @ (~true_c & pred_c)
    fn = w @ (true_c & ~pred_c)
    with np.errstate(invalid='ignore', divide='ignore'):
      recalls.append(np.where(w_true > 0, tp / w_true, np.nan))
      denom = 2 * tp + fp + fn  # > 0 exactly when class c is true or predicted
      f1s.append(np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), np.nan))
  return np.stack(recalls, axis=1), np.stack(f1s, axis=1)


def _weighted_all(labels, probs, w, metrics: Sequence[str]) -> dict[str, np.ndarray]:
  """The requested HEADLINE metrics [B], plus the per-class 'auroc/<c>' / 'ap/<c>' [B, K]
  under the keys 'auroc/' and 'ap/' when 'auroc' / 'map' is requested."""
  labels = np.asarray(labels).astype(np.int64)
  probs = np.asarray(probs, np.float64)
  k = probs.shape[1]
  pred = probs.argmax(axis=1)
  out = {}
  if 'accuracy' in metrics:
    out['accuracy'] = w @ (pred == labels).astype(np.float64) / w.sum(axis=1)
  if 'balanced_accuracy' in metrics or 'macro_f1' in metrics:
    recall, f1 = _recall_f1(labels, pred, k, w)
    out['balanced_accuracy'], out['macro_f1'] = nanmean_rows(recall), nanmean_rows(f1)
  if 'auroc' in metrics or 'auroc/' in metrics:
    out['auroc/'] = _one_vs_rest(weighted_auroc, labels, probs, w)
    out['auroc'] = nanmean_rows(out['auroc/'])
  if 'map' in metrics or 'ap/' in metrics:
    out['ap/'] = _one_vs_rest(weighted_average_precision, labels, probs, w)
    out['map'] = nanmean_rows(out['ap/'])
  if 'ece' in metrics:
    out['ece'] = weighted_ece(labels, probs, w)
  return out


def weighted_metrics(labels, probs, w, metrics: Sequence[str] = HEADLINE
                     ) -> dict[str, np.ndarray]:
  """The headline metrics under example weights, one value per weight vector.

  With integer weights each value equals `classification_metrics` on the data where
  example i is repeated w_i times (a bootstrap resample), including its NaN rules.
  Inputs are not validated (this runs once per block of resamples).

  Args:
    labels: [N] int in [0, K).
    probs: [N, K] probabilities.
    w: [B, N] non-negative weights.
    metrics: which of HEADLINE to compute (the rest are skipped, not just dropped);
      'auroc/', 'ap/' (and 'ece/' for findings) give the per-class values [B, K].

  Multi-label targets [N, F] (see the module docstring) are scored per finding.

  Returns:
    {metric: [B]} for the requested metrics.
  """
  if is_multilabel(labels):
    out = _weighted_multilabel(labels, probs, w, metrics)
  else:
    out = _weighted_all(labels, probs, w, metrics)
  return {m: out[m] for m in metrics}


def weighted_binary_ece(positive, p, w, num_bins: int = ECE_BINS) -> np.ndarray:
  """Calibration error of a binary probability p [N] of `positive` [N] under weights
  w [B, N]: sum_b |sum_{i in b} w_i (y_i - p_i)| / sum_i w_i over ECE_BINS equal-width,
  right-closed bins of p (the reliability diagram of p). [B]; NaN where sum w is 0."""
  y = np.asarray(positive, np.float64)
  p = np.asarray(p, np.float64)
  bins = np.clip(np.ceil(p * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  onehot = np.eye(num_bins)[bins]  # [N, M]
  gap = np.abs(w @ (onehot * (y - p)[:, None])).sum(axis=1)
  total = w.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(total > 0, gap / np.where(total > 0, total, 1.0), np.nan)


def _weighted_multilabel(targets, probs, w, metrics: Sequence[str]) -> dict[str, np.ndarray]:
  """`_weighted_all` for targets [N, F] with NaN = not observed: per finding [B, F]
  under 'auroc/', 'ap/', 'ece/', their means [B] under 'auroc', 'map', 'ece'; the
  single-label metrics as NaN [B]."""
  targets = np.asarray(targets, np.float64)
  probs = np.asarray(probs, np.float64)
  observed = ~np.isnan(targets)
  positive = np.where(observed, targets, 0.0) >= 0.5
  per_finding = lambda fn: np.stack(
      [fn(positive[:, f], probs[:, f], w * observed[:, f]) for f in range(targets.shape[1])],
      axis=1)
  out = {m: np.full(w.shape[0], np.nan) for m in metrics if m not in MULTILABEL_HEADLINE}
  if 'auroc' in metrics or 'auroc/' in metrics:
    out['auroc/'] = per_finding(weighted_auroc)
    out['auroc'] = nanmean_rows(out['auroc/'])
  if 'map' in metrics or 'ap/' in metrics:
    out['ap/'] = per_finding(weighted_average_precision)
    out['map'] = nanmean_rows(out['ap/'])
  if 'ece' in metrics or 'ece/' in metrics:
    out['ece/'] = per_finding(weighted_binary_ece)
    out['ece'] = nanmean_rows(out['ece/'])
  return out


# ----------------------------------------------------------------------------- plain

def expected_calibration_error(labels, probs, num_bins: int = ECE_BINS) -> float:
  """Expected calibration error (`weighted_ece` with unit weights).

  Args:
    labels: [N] int class indices.
    probs: [N, K] class probabilities (or [N] P(class 1) for a binary task).
    num_bins: M, the number of equal-width confidence bins on [0, 1].

  Returns:
    The ECE in [0, 1].
  """
  labels, probs = _check(labels, probs)
  return float(weighted_ece(labels, probs, _unit(len(labels)), num_bins)[0])


def binary_auroc(positive, scores) -> float:
  """ROC AUC as the Mann-Whitney statistic: P(score+ > score-) + P(tie) / 2.

  `weighted_auroc` with unit weights: the same value as sklearn's `roc_auc_score`, in
  O(N log N) and at a fraction of its per-call overhead.

  Args:
    positive: [N] bool.
    scores: [N] float.

  Returns:
    The AUC, or NaN when only one class is present.
  """
  return float(weighted_auroc(positive, scores, _unit(np.size(positive)))[0])


def binary_average_precision(positive, scores) -> float:
  """Average precision (`weighted_average_precision` with unit weights).

  Args:
    positive: [N] bool.
    scores: [N] float.

  Returns:
    The AP, or NaN when only one class is present.
  """
  return float(weighted_average_precision(positive, scores, _unit(np.size(positive)))[0])


def classification_metrics(labels, probs, class_names: Sequence[str]) -> dict[str, float]:
  """All test metrics of one model on one split (`weighted_metrics` with unit weights).

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
  if is_multilabel(labels):
    return multilabel_metrics(labels, probs, class_names)
  labels, probs = _check(labels, probs, len(class_names))
  got = _weighted_all(labels, probs, _unit(len(labels)), HEADLINE)
  out = {m: float(got[m][0]) for m in ('accuracy', 'balanced_accuracy', 'macro_f1', 'auroc',
                                       'map', 'ece')}
  for c, name in enumerate(class_names):
    out[f'auroc/{name}'] = float(got['auroc/'][0, c])
    out[f'ap/{name}'] = float(got['ap/'][0, c])
  return out


def check_multilabel(targets, probs, num_findings: int | None = None):
  """Validates and returns (targets [N, F] float64 in {0, 1, NaN}, probs [N, F] float64)."""
  targets = np.asarray(targets, np.float64)
  probs = np.asarray(probs, np.float64)
  if targets.ndim != 2 or probs.shape != targets.shape:
    raise ValueError(f'expected targets [N, F] and probs [N, F], got targets '
                     f'{targets.shape} and probs {probs.shape}')
  if targets.shape[0] == 0:
    raise ValueError('cannot compute metrics on an empty set (N = 0)')
  if num_findings is not None and targets.shape[1] != num_findings:
    raise ValueError(f'targets have {targets.shape[1]} columns but {num_findings} finding '
                     'names were given')
  bad = ~np.isnan(targets) & (targets != 0) & (targets != 1)
  if np.any(bad):
    i, f = map(int, np.argwhere(bad)[0])
    raise ValueError(f'target {targets[i, f]} at row {i}, finding {f} is not 0, 1 or NaN')
  if not np.all(np.isfinite(probs)):
    i = int(np.flatnonzero(~np.all(np.isfinite(probs), axis=1))[0])
    raise ValueError(f'probs has a non-finite value at row {i}: {probs[i]}')
  return targets, probs


def multilabel_metrics(targets, probs, finding_names: Sequence[str]) -> dict[str, float]:
  """The test metrics of a multi-label task (`weighted_metrics` with unit weights).

  Args:
    targets: [N, F] 1 / 0 / NaN (not observed: left out of that finding's metrics).
    probs: [N, F] per-finding probabilities (sigmoid outputs).
    finding_names: F names, for the keys 'auroc/<name>', 'ap/<name>', 'ece/<name>'.

  Returns:
    floats 'auroc', 'map', 'ece' (means over the findings where defined) and the
    per-finding values; a finding without an observed positive or negative has NaN
    AUROC and AP and is left out of the means.
  """
  finding_names = list(finding_names)
  targets, probs = check_multilabel(targets, probs, len(finding_names))
  got = _weighted_multilabel(targets, probs, _unit(len(targets)), MULTILABEL_HEADLINE)
  out = {m: float(got[m][0]) for m in MULTILABEL_HEADLINE}
  for f, name in enumerate(finding_names):
    for key, m in (('auroc/', 'auroc'), ('ap/', 'ap'), ('ece/', 'ece')):
      out[f'{m}/{name}'] = float(got[key][0, f])
  return out
