"""The run's report, regenerable from the workdir alone:

    python -m cxr_jax.report --workdir=W [--n_boot=1000]

Reads, under W (nothing else):
  config.json                                   the run's config (confounder detection)
  metrics.jsonl                                 pretraining losses and monitors
  <folder>/<init>/<fraction>/seed<k>/result.json  one per job; its 'protocol' key (else
                                                the folder: finetune, linear(_probe), knn)
  <job>/test_predictions.npz                    probs [N, K], labels [N], patient_id [N]
  <job>/attention.npz                           optional: what
                                                `cxr_jax.explain.analysis.attention_analysis`
                                                returns, saved with np.savez_compressed
and writes W/report.md, W/report.html and PNG figures in W/figures/.

Statistics (the choices, and why):
  * A regime's number at one label fraction is the mean over its seeds of the metric on
    the whole test set (± the std over seeds: training variability).
  * Its 95% CI is a percentile cluster bootstrap over test *patients* of that seed-mean:
    each resample draws patients with replacement (all their images come along) and
    re-evaluates every seed's predictions on it. The interval is the test-set sampling
    uncertainty of the regime's average model. We neither pool probabilities across seeds
    (that scores an ensemble, a different and better model than any one seed) nor average
    per-seed interval bounds (an average of percentiles has no coverage guarantee).
  * Paired comparisons use the same resamples for both regimes (same test patients), so
    the correlation of their errors is kept: the difference of seed-mean macro AUROC, its
    percentile CI and the two-sided bootstrap p-value of `cxr_jax.eval.stats.
    paired_bootstrap`. Holm's step-down adjustment over all comparisons in the report is
    given beside the raw p-values.
  * Every bootstrap uses the same seed, hence the same patient resamples for every
    regime evaluated on the same test set. Resamples where a metric is undefined (a class
    not drawn) are skipped, as in `cxr_jax.eval.stats`.
  * The resampled metrics are computed with per-example weights (a patient drawn m times
    weighs m), vectorised over resamples; they equal `cxr_jax.eval.metrics.
    classification_metrics` on the repeated examples (tested), at a fraction of the cost.
"""
from __future__ import annotations

import argparse
import collections
import html
import json
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

HEADLINE = ('auroc', 'map', 'balanced_accuracy', 'macro_f1', 'accuracy', 'ece')
REGIME_ORDER = ('scratch', 'imagenet', 'ssl', 'curricular')
PROTOCOLS = ('finetune', 'linear', 'knn')
# top-level job folders of each protocol (when result.json does not name its protocol)
_PROTOCOL_FOLDERS = {'finetune': 'finetune', 'linear': 'linear', 'linear_probe': 'linear',
                     'knn': 'knn'}
PROTOCOL_TITLES = {'finetune': 'Fine-tuning', 'linear': 'Linear probe (frozen encoder)',
                   'knn': 'kNN (frozen encoder)'}
ECE_BINS = 15  # as cxr_jax.eval.metrics
_BLOCK = 200   # resamples per vectorised block (bounds memory at 200 x N weights)


# ----------------------------------------------------------------------------- loading

def _protocol(result: dict, path: Path, workdir: Path) -> str:
  if result.get('protocol'):
    return str(result['protocol'])
  return _PROTOCOL_FOLDERS.get(path.relative_to(workdir).parts[0], 'finetune')


def load_results(workdir) -> list[dict]:
  """Every job's result.json (<W>/<protocol folder>/<init>/<fraction>/seed<k>/), with
  '_dir' (its folder) and 'protocol' filled in."""
  workdir = Path(workdir)
  out = []
  # a fixed depth: never walks the checkpoints or a TFDS data_dir inside the workdir
  for p in sorted(workdir.glob('*/*/*/seed*/result.json')):
    r = json.loads(p.read_text())
    if 'init' not in r or 'test' not in r:
      continue
    r['_dir'] = str(p.parent)
    r['protocol'] = _protocol(r, p, workdir)
    out.append(r)
  return out


def _regime_key(init: str):
  return (REGIME_ORDER.index(init), init) if init in REGIME_ORDER else (len(REGIME_ORDER), init)


def _protocol_key(protocol: str):
  return (PROTOCOLS.index(protocol), protocol) if protocol in PROTOCOLS else (9, protocol)


def group_results(results: list[dict]) -> dict[tuple[str, str, float], list[dict]]:
  """{(protocol, init, fraction): results sorted by seed}, in report order."""
  groups = collections.defaultdict(list)
  for r in results:
    groups[(r.get('protocol', 'finetune'), r['init'], float(r['label_fraction']))].append(r)
  order = sorted(groups, key=lambda k: (_protocol_key(k[0]), k[2], _regime_key(k[1])))
  return {k: sorted(groups[k], key=lambda r: r['seed']) for k in order}


def _mean_std(values):
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return float('nan'), float('nan')
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(results: list[dict]) -> dict:
  """{(init, fraction): {metric: (mean, std, n)}} over seeds (protocol 'finetune' only)."""
  table = {}
  for (protocol, init, fraction), rs in group_results(results).items():
    if protocol != 'finetune':
      continue
    metrics = sorted({m for r in rs for m in r['test']})
    table[(init, fraction)] = {m: (*_mean_std([r['test'].get(m) for r in rs]), len(rs))
                               for m in metrics}
  return table


def _load_npz(path: Path) -> dict | None:
  if not path.exists():
    return None
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


class Stack:
  """One group's test predictions over seeds: labels [N], probs [N, S, K], groups [N]."""

  def __init__(self, seeds, labels, probs, groups, class_names):
    self.seeds, self.labels, self.probs = list(seeds), labels, probs
    self.groups, self.class_names = groups, list(class_names)

  def same_test_set(self, other: 'Stack') -> bool:
    return (self.labels.shape == other.labels.shape and
            np.array_equal(self.labels, other.labels) and
            np.array_equal(self.groups, other.groups))

  def seeds_subset(self, seeds) -> np.ndarray:
    idx = [self.seeds.index(s) for s in seeds]
    return self.probs[:, idx]


def stack_predictions(rs: list[dict]) -> tuple[Stack | None, str]:
  """Stacks the seeds' test_predictions.npz; (None, why) when they are missing/unaligned."""
  preds = []
  for r in rs:
    p = _load_npz(Path(r['_dir']) / 'test_predictions.npz')
    if p is None:
      return None, f'no test_predictions.npz in {r["_dir"]}'
    preds.append(p)
  first = preds[0]
  for r, p in zip(rs[1:], preds[1:]):
    if (p['labels'].shape != first['labels'].shape or
        not np.array_equal(p['labels'], first['labels']) or
        not np.array_equal(p['patient_id'], first['patient_id'])):
      return None, f'seed {r["seed"]} was tested on other images than seed {rs[0]["seed"]}'
  probs = np.stack([np.asarray(p['probs'], np.float64) for p in preds], axis=1)
  labels = np.asarray(first['labels']).astype(np.int64)
  groups = np.asarray(first['patient_id'])
  names = rs[0].get('class_names') or [str(k) for k in range(probs.shape[-1])]
  return Stack([r['seed'] for r in rs], labels, probs, groups, names), ''


# ----------------------------------------------------------------------------- bootstrap

def bootstrap_weights(groups, n_boot: int, seed: int = 0,
                      block: int = _BLOCK) -> Iterator[np.ndarray]:
  """Blocks of cluster-bootstrap resamples as per-example weights [b, N].

  Resample r draws G patients with replacement; example i weighs the number of times its
  patient was drawn. The draws are those of `cxr_jax.eval.stats` (one
  `rng.integers(G, size=G)` per resample from `default_rng(seed)`), so with the same
  seed these are exactly the resamples of `stats.bootstrap_ci`/`paired_bootstrap`.

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
  of the data with example i repeated w_i times.

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
  """Average precision under example weights (as `metrics.binary_average_precision`).

  Thresholds are the distinct scores, from the highest down: AP = sum_t (TP_t - TP_{t-1})
  / W_pos * TP_t / ALL_t, with TP_t and ALL_t the positive and total weights at or above
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


def weighted_metrics(labels, probs, w, metrics: Sequence[str] = HEADLINE
                     ) -> dict[str, np.ndarray]:
  """The headline metrics of `cxr_jax.eval.metrics` under example weights, per resample.

  With integer weights each value equals `classification_metrics` on the data where
  example i is repeated w_i times (a bootstrap resample), including its NaN rules.

  Args:
    labels: [N] int in [0, K).
    probs: [N, K] probabilities.
    w: [B, N] non-negative weights.
    metrics: which of HEADLINE to compute (the rest are skipped, not just dropped).

  Returns:
    {metric: [B]} for the requested metrics.
  """
  labels = np.asarray(labels).astype(np.int64)
  probs = np.asarray(probs, np.float64)
  k = probs.shape[1]
  pred = probs.argmax(axis=1)
  correct = (pred == labels).astype(np.float64)
  total = w.sum(axis=1)
  out = {}
  if 'accuracy' in metrics:
    out['accuracy'] = w @ correct / total
  if 'balanced_accuracy' in metrics or 'macro_f1' in metrics:
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
    out['balanced_accuracy'] = _nanmean_rows(np.stack(recalls, axis=1))
    out['macro_f1'] = _nanmean_rows(np.stack(f1s, axis=1))
  if 'auroc' in metrics:
    out['auroc'] = _nanmean_rows(np.stack(
        [weighted_auroc(labels == c, probs[:, c], w) for c in range(k)], axis=1))
  if 'map' in metrics:
    out['map'] = _nanmean_rows(np.stack(
        [weighted_average_precision(labels == c, probs[:, c], w) for c in range(k)], axis=1))
  if 'ece' in metrics:
    conf = probs.max(axis=1)
    bins = np.clip(np.ceil(conf * ECE_BINS).astype(np.int64) - 1, 0, ECE_BINS - 1)
    onehot = np.eye(ECE_BINS)[bins]  # [N, M]
    gap = np.abs(w @ (onehot * correct[:, None]) - w @ (onehot * conf[:, None]))
    out['ece'] = gap.sum(axis=1) / total
  return {m: out[m] for m in metrics}


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
  """Mean of the non-NaN entries of each row of [B, K]; NaN for an all-NaN row."""
  ok = ~np.isnan(x)
  count = ok.sum(axis=1)
  return np.where(count > 0, np.where(ok, x, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)


def _percentile_ci(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
  """Percentile interval over the non-NaN values (as `cxr_jax.eval.stats`)."""
  v = values[~np.isnan(values)]
  if v.size == 0:
    return float('nan'), float('nan')
  lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
  return float(lo), float(hi)


def _p_value(diffs: np.ndarray) -> float:
  """Two-sided bootstrap p-value of H0: diff = 0 (the formula of stats.paired_bootstrap)."""
  v = diffs[~np.isnan(diffs)]
  if v.size == 0:
    return float('nan')
  below = (1 + np.sum(v <= 0)) / (v.size + 1)
  above = (1 + np.sum(v >= 0)) / (v.size + 1)
  return float(min(1.0, 2 * min(below, above)))


def seed_mean_resamples(labels, probs, groups, n_boot: int, seed: int = 0,
                        metrics: Sequence[str] = HEADLINE) -> dict[str, np.ndarray]:
  """Bootstrap distribution of the seed-mean of each metric.

  Args:
    labels: [N] int.
    probs: [N, S, K] predictions of S seeds on the same images.
    groups: [N] patient ids.
    n_boot: resamples.
    seed: resampling seed.
    metrics: which of HEADLINE.

  Returns:
    {metric: [n_boot]} seed-mean values (NaN where any seed's metric was undefined).
  """
  out = {m: [] for m in metrics}
  for w in bootstrap_weights(groups, n_boot, seed):
    per_seed = [weighted_metrics(labels, probs[:, s], w, metrics)
                for s in range(probs.shape[1])]
    for m in metrics:
      out[m].append(np.mean(np.stack([p[m] for p in per_seed]), axis=0))
  return {m: np.concatenate(v) if v else np.zeros(0) for m, v in out.items()}


def group_cis(stack: Stack, n_boot: int, seed: int = 0,
              alpha: float = 0.05) -> dict[str, tuple[float, float]]:
  """{metric: (lo, hi)}: the percentile CI of the seed-mean of each HEADLINE metric."""
  dist = seed_mean_resamples(stack.labels, stack.probs, stack.groups, n_boot, seed)
  return {m: _percentile_ci(v, alpha) for m, v in dist.items()}


def paired_comparison(labels, probs_a, probs_b, groups, n_boot: int, seed: int = 0,
                      alpha: float = 0.05, metric: str = 'auroc') -> dict[str, float]:
  """Paired bootstrap of seed-mean metric(a) - seed-mean metric(b) on the same patients.

  Args:
    labels: [N].
    probs_a, probs_b: [N, S, K] (the same S for both; seeds need not correspond).
    groups: [N] patient ids.
    n_boot, seed, alpha: as in `cxr_jax.eval.stats.paired_bootstrap`.
    metric: one of HEADLINE.

  Returns:
    dict 'diff' (on the full data), 'lo', 'hi', 'p_value', 'n_valid', 'n_skipped'.
  """
  from cxr_jax.eval import metrics as M
  names = [str(k) for k in range(probs_a.shape[-1])]
  point = lambda p: np.mean([M.classification_metrics(labels, p[:, s], names)[metric]
                             for s in range(p.shape[1])])
  diffs = []
  for w in bootstrap_weights(groups, n_boot, seed):
    ma = np.mean([weighted_metrics(labels, probs_a[:, s], w, (metric,))[metric]
                  for s in range(probs_a.shape[1])], axis=0)
    mb = np.mean([weighted_metrics(labels, probs_b[:, s], w, (metric,))[metric]
                  for s in range(probs_b.shape[1])], axis=0)
    diffs.append(ma - mb)
  diffs = np.concatenate(diffs) if diffs else np.zeros(0)
  lo, hi = _percentile_ci(diffs, alpha)
  valid = int(np.sum(~np.isnan(diffs)))
  return dict(diff=float(point(probs_a) - point(probs_b)), lo=lo, hi=hi,
              p_value=_p_value(diffs), n_valid=valid, n_skipped=n_boot - valid)


def weighted_mean_resamples(values, groups, n_boot: int, seed: int = 0) -> np.ndarray:
  """Bootstrap distribution of the mean of per-example values [N] (NaN values skipped)."""
  values = np.asarray(values, np.float64)
  ok = ~np.isnan(values)
  x = np.where(ok, values, 0.0)
  out = []
  for w in bootstrap_weights(groups, n_boot, seed):
    den = w @ ok
    with np.errstate(invalid='ignore', divide='ignore'):
      out.append(np.where(den > 0, (w @ x) / np.where(den > 0, den, 1.0), np.nan))
  return np.concatenate(out) if out else np.zeros(0)


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


# ----------------------------------------------------------------------------- attention

def _seed_mean_per_image(arrays: list[np.ndarray]) -> np.ndarray:
  """[N] nan-mean over seeds of per-image values (NaN where no seed has a value)."""
  x = np.stack(arrays, axis=1).astype(np.float64)
  ok = ~np.isnan(x)
  return np.where(ok.any(axis=1), np.where(ok, x, 0.0).sum(axis=1) /
                  np.maximum(ok.sum(axis=1), 1), np.nan)


def load_attention(rs: list[dict], groups_fallback=None) -> dict | None:
  """The attention.npz files of one group's seeds, or None when there are none.

  Returns:
    {'seeds': [k], 'arrays': [the dict of each seed's attention.npz], 'groups': [N]
    patient ids (attention.npz's, else test_predictions.npz's, else `groups_fallback`,
    else one per image), 'labels': [N]}; seeds tested on other images than the first
    are left out.
  """
  found = [(r, _load_npz(Path(r['_dir']) / 'attention.npz')) for r in rs]
  found = [(r, a) for r, a in found if a is not None]
  if not found:
    return None
  first = found[0][1]
  found = [(r, a) for r, a in found if a['labels'].shape == first['labels'].shape and
           np.array_equal(a['labels'], first['labels'])]
  groups = first.get('patient_id')
  if groups is None:
    preds = _load_npz(Path(found[0][0]['_dir']) / 'test_predictions.npz')
    if preds is not None and preds['labels'].shape == first['labels'].shape:
      groups = preds['patient_id']
  if groups is None:
    groups = groups_fallback if groups_fallback is not None else np.arange(len(first['labels']))
  return {'seeds': [r['seed'] for r, _ in found], 'arrays': [a for _, a in found],
          'groups': np.asarray(groups), 'labels': first['labels']}


def share_keys(att: dict) -> list[str]:
  """'<region>_share_pred' keys, lung first."""
  keys = [k for k in att['arrays'][0] if k.endswith('_share_pred')]
  return sorted(keys, key=lambda k: (k != 'lung_share_pred', k))


def attention_summary(att: dict, n_boot: int, seed: int = 0) -> dict[str, tuple]:
  """{key: (mean, lo, hi, n_images)} of each share over images (seed-mean per image)."""
  out = {}
  keys = share_keys(att) + [k.replace('_pred', '_true') for k in share_keys(att)]
  for key in keys:
    if key not in att['arrays'][0]:
      continue
    per_image = _seed_mean_per_image([a[key] for a in att['arrays']])
    dist = weighted_mean_resamples(per_image, att['groups'], n_boot, seed)
    lo, hi = _percentile_ci(dist)
    mean = float(np.nanmean(per_image)) if np.any(~np.isnan(per_image)) else float('nan')
    out[key] = (mean, lo, hi, int(np.sum(~np.isnan(per_image))))
  occ = [a['occlusion_lung_share'] for a in att['arrays'] if 'occlusion_lung_share' in a and
         a['occlusion_lung_share'].size]
  if occ:
    o = min(len(x) for x in occ)
    occ_img = _seed_mean_per_image([x[:o] for x in occ])
    dist = weighted_mean_resamples(occ_img, att['groups'][:o], n_boot, seed)
    lo, hi = _percentile_ci(dist)
    mean = float(np.nanmean(occ_img)) if np.any(~np.isnan(occ_img)) else float('nan')
    out['occlusion_lung_share'] = (mean, lo, hi, int(np.sum(~np.isnan(occ_img))))
    grad = _seed_mean_per_image([a['lung_share_pred'][:o] for a in att['arrays']])
    ok = ~np.isnan(grad) & ~np.isnan(occ_img)
    # a constant input (e.g. a uniform 1x1 Grad-CAM) leaves the correlation undefined
    if ok.sum() >= 3 and np.ptp(grad[ok]) > 0 and np.ptp(occ_img[ok]) > 0:
      from scipy.stats import spearmanr
      rho = spearmanr(grad[ok], occ_img[ok]).statistic
      out['gradcam_occlusion_spearman'] = (float(rho), float('nan'), float('nan'),
                                           int(ok.sum()))
  return out


def paired_share(att_a: dict, att_b: dict, key: str, n_boot: int, seed: int = 0) -> dict:
  """Paired bootstrap of mean share(a) - mean share(b) over the same test patients."""
  a = _seed_mean_per_image([x[key] for x in att_a['arrays']])
  b = _seed_mean_per_image([x[key] for x in att_b['arrays']])
  da = weighted_mean_resamples(a, att_a['groups'], n_boot, seed)
  db = weighted_mean_resamples(b, att_a['groups'], n_boot, seed)  # same draws: same seed
  diffs = da - db
  lo, hi = _percentile_ci(diffs)
  return dict(diff=float(np.nanmean(a) - np.nanmean(b)), lo=lo, hi=hi,
              p_value=_p_value(diffs))


# ----------------------------------------------------------------------------- figures

def _plt():
  import matplotlib
  matplotlib.use('Agg')  # files only; never opens a window
  from matplotlib import pyplot as plt
  return plt


def figure_auroc_vs_fraction(path: Path, rows: list[dict]) -> Path | None:
  """Macro AUROC (seed-mean, 95% CI bars) against label fraction, a line per regime.

  Args:
    path: output PNG.
    rows: dicts with 'protocol', 'init', 'fraction', 'mean', 'lo', 'hi' (NaN: no CI;
      then ± std bars from 'std').
  """
  if not rows:
    return None
  plt = _plt()
  protocols = sorted({r['protocol'] for r in rows}, key=_protocol_key)
  fig, axes = plt.subplots(1, len(protocols), figsize=(4.5 * len(protocols), 3.6), dpi=120,
                           squeeze=False)
  fractions = sorted({r['fraction'] for r in rows})
  log = len(fractions) > 1 and fractions[-1] / fractions[0] >= 10
  for ax, protocol in zip(axes[0], protocols):
    inits = sorted({r['init'] for r in rows if r['protocol'] == protocol}, key=_regime_key)
    for j, init in enumerate(inits):
      rs = sorted((r for r in rows if r['protocol'] == protocol and r['init'] == init),
                  key=lambda r: r['fraction'])
      # a small horizontal offset per regime keeps overlapping error bars readable
      off = (j - (len(inits) - 1) / 2) * 0.04
      x = np.array([r['fraction'] for r in rs]) * (10 ** off if log else 1)
      if not log:
        x = x + off * (fractions[-1] - fractions[0] + 0.1) / 2
      y = np.array([r['mean'] for r in rs])
      lo = np.array([r['lo'] if np.isfinite(r['lo']) else r['mean'] - r['std'] for r in rs])
      hi = np.array([r['hi'] if np.isfinite(r['hi']) else r['mean'] + r['std'] for r in rs])
      err = np.nan_to_num(np.stack([y - lo, hi - y]), nan=0.0).clip(min=0)
      ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=init)
    if log:
      ax.set_xscale('log')
    ax.set_xticks(fractions)
    ax.set_xticklabels([f'{f:g}' for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel('label fraction (of training patients)')
    ax.set_ylabel('test macro AUROC')
    ax.set_title(PROTOCOL_TITLES.get(protocol, protocol), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle('Macro AUROC vs label fraction (mean over seeds, 95% patient-bootstrap CI)',
               fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def figure_attention(path: Path, rows: list[dict]) -> Path | None:
  """Bars of the Grad-CAM lung share per regime, grouped by label fraction (95% CI).

  Args:
    path: output PNG.
    rows: dicts with 'protocol', 'init', 'fraction' and (mean, lo, hi) tuples under
      'pred' and 'true'.
  """
  if not rows:
    return None
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120, sharey=True)
  labels = sorted({(r['protocol'], r['fraction']) for r in rows},
                  key=lambda k: (_protocol_key(k[0]), k[1]))
  inits = sorted({r['init'] for r in rows}, key=_regime_key)
  width = 0.8 / max(1, len(inits))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, which, title in zip(axes, ('pred', 'true'), ('predicted class', 'true class')):
    for j, init in enumerate(inits):
      xs, ys, errs = [], [], [[], []]
      for i, key in enumerate(labels):
        r = next((r for r in rows if (r['protocol'], r['fraction']) == key and
                  r['init'] == init), None)
        if r is None or r.get(which) is None:
          continue
        mean, lo, hi = r[which][:3]
        xs.append(i + (j - (len(inits) - 1) / 2) * width)
        ys.append(mean)
        errs[0].append(max(0.0, mean - lo) if np.isfinite(lo) else 0.0)
        errs[1].append(max(0.0, hi - mean) if np.isfinite(hi) else 0.0)
      ax.bar(xs, ys, width * 0.95, yerr=errs, capsize=3, label=init,
             color=colors[j % len(colors)])
    ax.axhline(1.0, color='k', ls='--', lw=0.8, label='uniform map')
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([f'{f:g}' + ('' if p == 'finetune' else f'\n{p}') for p, f in labels])
    ax.set_xlabel('label fraction')
    ax.set_title(f'Grad-CAM lung share, {title}', fontsize=10)
    ax.grid(axis='y', alpha=0.3)
  axes[0].set_ylabel('attention share in lungs (1 = uniform)')
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def figure_overlays(path: Path, atts: dict[str, dict], class_names, max_rows: int = 12):
  """Side-by-side Grad-CAM overlays of the fixed sample, one column per regime.

  Args:
    path: output PNG.
    atts: regime -> its group's `load_attention` dict (the first seed's maps are shown).
    class_names: K names for the row labels.
    max_rows: at most this many images.
  """
  from cxr_jax.explain import analysis
  atts = {k: v for k, v in atts.items() if v['arrays'][0].get('overlay_index') is not None
          and v['arrays'][0]['overlay_index'].size}
  if not atts:
    return None
  first = next(iter(atts.values()))['arrays'][0]
  idx = first['overlay_index'][:max_rows]
  cams = {}
  for init, att in atts.items():
    a = att['arrays'][0]
    if np.array_equal(a['overlay_index'][:len(idx)], idx):
      cams[f'{init} (seed {att["seeds"][0]})'] = a['overlay_cam_pred'][:len(idx)]
  labels = first['labels'][idx]
  titles = []
  for i, y in zip(idx, labels):
    name = class_names[int(y)] if int(y) < len(class_names) else str(int(y))
    titles.append(f'#{int(i)} {name}')
  return analysis.save_overlays(str(path), first['overlay_image'][:len(idx)], cams,
                                masks=first['overlay_mask'][:len(idx)], titles=titles,
                                cell_inches=1.6, dpi=100)


# ----------------------------------------------------------------------------- markdown

def _fmt(x, digits=3) -> str:
  return f'{x:.{digits}f}' if x is not None and np.isfinite(x) else '–'


def _fmt_p(p) -> str:
  if p is None or not np.isfinite(p):
    return '–'
  return f'{p:.3f}' if p >= 0.001 else '<0.001'


def _pretrain_summary(workdir: Path) -> list[str]:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  last = {}
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    row = json.loads(line)
    if row.get('job', '').startswith('pretrain/') and 'train/loss' in row:
      last[row['job']] = row
  lines = []
  for job, row in last.items():
    extras = ''.join(f', {k} {row[k]:.3f}' for k in sorted(row) if k.startswith('monitor/'))
    lines.append(f'- `{job}`: {row["step"]} steps, final loss {row["train/loss"]:.4f}{extras}')
  return lines


def _phantom_confounding(workdir: Path) -> float:
  """confounder_strength of a phantom fine-tuning dataset (0 when not a phantom / absent)."""
  path = workdir / 'config.json'
  if not path.exists():
    return 0.0
  try:
    data = json.loads(path.read_text())['finetune']['data']
  except (KeyError, TypeError, ValueError):
    return 0.0
  if data.get('name') != 'phantom':
    return 0.0
  m = re.search(r'confounder_strength=([0-9.eE+-]+)', str(data.get('options', '')))
  return float(m.group(1)) if m else 0.0


def _md_to_html(markdown: str, title: str) -> str:
  """A minimal Markdown -> HTML: headings, pipe tables, lists, images, code, paragraphs."""
  inline = lambda s: re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(s, quote=False))
  out, para, i = [], [], 0
  lines = markdown.splitlines()

  def flush():
    if para:
      out.append('<p>' + ' '.join(inline(p) for p in para) + '</p>')
      para.clear()

  while i < len(lines):
    line = lines[i]
    img = re.fullmatch(r'!\[([^\]]*)\]\(([^)]+)\)', line.strip())
    if line.startswith('#'):
      flush()
      level = len(line) - len(line.lstrip('#'))
      out.append(f'<h{level}>{inline(line[level:].strip())}</h{level}>')
    elif img:
      flush()
      out.append(f'<p><img src="{html.escape(img.group(2))}" alt="{html.escape(img.group(1))}"'
                 ' style="max-width:100%"></p>')
    elif line.startswith('|'):
      flush()
      rows = []
      while i < len(lines) and lines[i].startswith('|'):
        rows.append([c.strip() for c in lines[i].strip().strip('|').split('|')])
        i += 1
      body = [r for r in rows[1:] if not all(set(c) <= set('-: ') for c in r)]
      out.append('<table><thead><tr>' + ''.join(f'<th>{inline(c)}</th>' for c in rows[0]) +
                 '</tr></thead><tbody>' + ''.join(
                     '<tr>' + ''.join(f'<td>{inline(c)}</td>' for c in r) + '</tr>'
                     for r in body) + '</tbody></table>')
      continue
    elif line.startswith('- '):
      flush()
      items = []
      while i < len(lines) and lines[i].startswith('- '):
        items.append(f'<li>{inline(lines[i][2:])}</li>')
        i += 1
      out.append('<ul>' + ''.join(items) + '</ul>')
      continue
    elif not line.strip():
      flush()
    else:
      para.append(line)
    i += 1
  flush()
  style = ('body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}'
           'table{border-collapse:collapse;margin:1em 0;font-size:0.9em}'
           'td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}'
           'th{background:#f3f3f3}code{background:#f3f3f3;padding:0 3px}')
  return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
          f'</title><style>{style}</style></head><body>\n' + '\n'.join(out) +
          '\n</body></html>\n')


def write_report(workdir, n_boot: int = 1000, seed: int = 0) -> Path:
  """Writes <workdir>/report.md (+ report.html, figures/*.png) from the workdir alone.

  Args:
    workdir: the run's folder.
    n_boot: bootstrap resamples for every CI and paired test.
    seed: bootstrap seed (the same resamples for every regime on the same test set).

  Returns:
    The path of report.md.
  """
  workdir = Path(workdir)
  figures = workdir / 'figures'
  results = load_results(workdir)
  groups = group_results(results)
  lines = ['# Report', '', f'Workdir: `{workdir.name}`', '']
  pre = _pretrain_summary(workdir)
  if pre:
    lines += ['## Pretraining', ''] + pre + ['']
  if not groups:
    lines += ['## Fine-tuning: test metrics (mean ± std over seeds)', '',
              'No fine-tuning results yet.']
    return _write(workdir, lines)

  stacks, why, cis = {}, {}, {}
  for key, rs in groups.items():
    stacks[key], why[key] = stack_predictions(rs)
    if stacks[key] is not None and n_boot > 0:
      cis[key] = group_cis(stacks[key], n_boot, seed)

  # -- results tables, one per protocol
  curve_rows = []
  protocols = sorted({k[0] for k in groups}, key=_protocol_key)
  for protocol in protocols:
    keys = [k for k in groups if k[0] == protocol]
    title = PROTOCOL_TITLES.get(protocol, protocol)
    lines += [f'## {title}: test metrics (mean ± std over seeds [95% CI])', '']
    metrics = [m for m in HEADLINE if any(m in r['test'] for k in keys for r in groups[k])]
    lines.append('| init | label fraction | seeds | ' + ' | '.join(metrics) + ' |')
    lines.append('|---' * (3 + len(metrics)) + '|')
    for key in keys:
      rs = groups[key]
      cells = []
      for m in metrics:
        mean, std = _mean_std([r['test'].get(m) for r in rs])
        cell = f'{_fmt(mean)} ± {_fmt(std)}' if np.isfinite(mean) else '–'
        if key in cis and np.isfinite(cis[key][m][0]):
          cell += f' [{_fmt(cis[key][m][0])}, {_fmt(cis[key][m][1])}]'
        cells.append(cell)
        if m == 'auroc':
          lo, hi = cis.get(key, {}).get('auroc', (float('nan'), float('nan')))
          curve_rows.append(dict(protocol=protocol, init=key[1], fraction=key[2], mean=mean,
                                 std=std, lo=lo, hi=hi))
      lines.append(f'| {key[1]} | {key[2]:g} | {len(rs)} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'auroc: macro one-vs-rest AUROC; map: macro average precision; '
              'ece: expected calibration error (15 bins). Model selection on val only. '
              f'Brackets: 95% percentile bootstrap CI over test patients ({n_boot} '
              'resamples) of the mean over seeds (see the note on statistics below).']
    missing = [f'{k[1]} {k[2]:g}: {why[k]}' for k in keys if stacks[k] is None]
    if missing:
      lines += ['', 'No CI for ' + '; '.join(missing) + '.']
    names = next((r['class_names'] for k in keys for r in groups[k] if r.get('class_names')),
                 [])
    per_class = sorted({m for k in keys for r in groups[k] for m in r['test']
                        if m.startswith('auroc/')},
                       key=lambda m: (names.index(m[6:]) if m[6:] in names else len(names), m))
    if per_class:
      lines += ['', f'### {title}: per-class AUROC (mean ± std over seeds)', '',
                '| init | label fraction | seeds | ' +
                ' | '.join(m.split('/', 1)[1] for m in per_class) + ' |',
                '|---' * (3 + len(per_class)) + '|']
      for key in keys:
        rs = groups[key]
        cells = []
        for m in per_class:
          mean, std = _mean_std([r['test'].get(m) for r in rs])
          cells.append(f'{_fmt(mean)} ± {_fmt(std)}' if np.isfinite(mean) else '–')
        lines.append(f'| {key[1]} | {key[2]:g} | {len(rs)} | ' + ' | '.join(cells) + ' |')
    lines.append('')

  # -- paired comparisons of macro AUROC
  comparisons = []
  for protocol in protocols:
    for fraction in sorted({k[2] for k in groups if k[0] == protocol}):
      inits = sorted([k[1] for k in groups if k[0] == protocol and k[2] == fraction],
                     key=_regime_key)
      for i, a in enumerate(inits):
        for b in inits[:i]:  # every later regime against every earlier one (scratch first)
          sa, sb = stacks[(protocol, a, fraction)], stacks[(protocol, b, fraction)]
          if sa is None or sb is None or n_boot <= 0 or not sa.same_test_set(sb):
            continue
          common = [s for s in sa.seeds if s in sb.seeds] or None
          pa = sa.seeds_subset(common) if common else sa.probs
          pb = sb.seeds_subset(common) if common else sb.probs
          if pa.shape != pb.shape:  # no common seeds and unequal counts: use the fewer
            s = min(pa.shape[1], pb.shape[1])
            pa, pb = pa[:, :s], pb[:, :s]
          res = paired_comparison(sa.labels, pa, pb, sa.groups, n_boot, seed)
          comparisons.append(dict(protocol=protocol, fraction=fraction, a=a, b=b, seeds=pa.shape[1],
                                  patients=len(np.unique(sa.groups)), **res))
  if comparisons:
    adjusted = holm([c['p_value'] for c in comparisons])
    lines += ['## Paired comparisons: test macro AUROC', '',
              '| protocol | label fraction | regime A | regime B | seeds | Δ AUROC (A − B) | '
              '95% CI | p | p (Holm) |', '|---' * 9 + '|']
    for c, p_adj in zip(comparisons, adjusted):
      lines.append(f'| {c["protocol"]} | {c["fraction"]:g} | {c["a"]} | {c["b"]} | '
                   f'{c["seeds"]} | {c["diff"]:+.3f} | [{_fmt(c["lo"])}, {_fmt(c["hi"])}] | '
                   f'{_fmt_p(c["p_value"])} | {_fmt_p(p_adj)} |')
    lines += ['', f'Paired cluster bootstrap over the {comparisons[0]["patients"]} test '
              f'patients ({n_boot} resamples): both regimes are scored on the same resampled '
              'patients, the difference is of the seed-mean macro AUROC, and p is the '
              'two-sided bootstrap p-value of no difference (the smallest p that '
              f'{n_boot} resamples can give is {2 / (n_boot + 1):.3f}). p (Holm): adjusted '
              f'for all {len(comparisons)} comparisons in this table.', '']

  # -- attention
  atts = {key: load_attention(rs, stacks[key].groups if stacks[key] is not None else None)
          for key, rs in groups.items()}
  atts = {k: v for k, v in atts.items() if v is not None}
  att_rows = []
  summaries = {k: attention_summary(a, n_boot, seed) for k, a in atts.items()}
  if atts:
    regions = sorted({k.rsplit('_share_pred', 1)[0] for a in atts.values()
                      for k in share_keys(a)}, key=lambda r: (r != 'lung', r))
    extra = [r for r in regions if r != 'lung']
    lines += ['## Attention: Grad-CAM share inside the lungs', '',
              '| protocol | init | label fraction | seeds | lung share (pred) | '
              'lung share (true) | ' + ''.join(f'{r} share (pred) | ' for r in extra) +
              'occlusion lung share | Grad-CAM vs occlusion ρ | Δ lung share vs scratch (p) |',
              '|---' * (9 + len(extra)) + '|']
    coarse, resolutions = set(), set()
    for key, att in atts.items():
      s = summaries[key]
      cell = lambda name: (f'{_fmt(s[name][0], 2)} [{_fmt(s[name][1], 2)}, '
                           f'{_fmt(s[name][2], 2)}]' if name in s else '–')
      ref = (key[0], 'scratch', key[2])
      vs = '–'
      if key[1] != 'scratch' and ref in atts and np.array_equal(
          atts[ref]['labels'], att['labels']) and np.array_equal(atts[ref]['groups'],
                                                                 att['groups']):
        d = paired_share(att, atts[ref], 'lung_share_pred', n_boot, seed)
        vs = f'{d["diff"]:+.2f} (p {_fmt_p(d["p_value"])})'
      rho = s.get('gradcam_occlusion_spearman')
      lines.append(f'| {key[0]} | {key[1]} | {key[2]:g} | {len(att["seeds"])} | '
                   f'{cell("lung_share_pred")} | {cell("lung_share_true")} | ' +
                   ''.join(f'{cell(r + "_share_pred")} | ' for r in extra) +
                   f'{cell("occlusion_lung_share")} | '
                   f'{_fmt(rho[0], 2) + f" (n={rho[3]})" if rho else "–"} | {vs} |')
      res = att['arrays'][0].get('cam_resolution')
      if res is not None:
        resolutions.add(f'{int(res[0])}x{int(res[1])}')
        if min(res) < 4:
          coarse.add(f'{int(res[0])}x{int(res[1])}')
      att_rows.append(dict(protocol=key[0], init=key[1], fraction=key[2],
                           pred=s.get('lung_share_pred'), true=s.get('lung_share_true')))
    lines += ['', 'Share = (fraction of Grad-CAM energy inside the region) / (region area '
              'fraction): 1.0 for a uniform map, > 1 when attention concentrates in the '
              'region, 0 when all of it is outside. Grad-CAM on the last convolutional stage '
              '(or config.explain.stage), here on '
              f'{" / ".join(sorted(resolutions)) or "?"} feature maps, '
              'for the predicted (pred) and the true class; per image averaged over seeds, '
              'then over images, with a 95% patient-bootstrap CI. Occlusion: the same share '
              'for occlusion-sensitivity maps (gradient-free) on the first test images, with '
              'ρ its Spearman correlation with the Grad-CAM share on those images. Δ vs '
              'scratch: paired bootstrap of the mean lung share difference.', '']
    if coarse:
      lines += [f'Warning: Grad-CAM was computed on {" / ".join(sorted(coarse))} feature '
                'maps here; a 1x1 map gives a uniform CAM (share 1.0 whatever the model '
                'looks at) and 2x2 is nearly as coarse. Use a larger input or a smaller stem '
                '(config.finetune.image_size, config.model.stem) for attention that means '
                'something; the occlusion share does not have this limit.', '']

  # -- confounder study
  strength = _phantom_confounding(workdir)
  if strength > 0:
    lines += ['## Confounder study (phantom)', '',
              f'Train and val carry a burned-in marker that equals the label with probability '
              f'{strength:g}; test does not. A model that reads the marker scores well on val '
              'and drops on test, and puts less attention inside the lungs.', '',
              '| protocol | init | label fraction | seeds | val AUROC (selected) | '
              'test AUROC | drop (val − test) | lung share (pred) | marker share (pred) |',
              '|---' * 9 + '|']
    for key, rs in groups.items():
      val = [r.get('val_score') for r in rs]
      test = [r['test'].get('auroc') for r in rs]
      drop = [v - t for v, t in zip(val, test)
               if v is not None and t is not None and np.isfinite(v) and np.isfinite(t)]
      cell = lambda vs: '{} ± {}'.format(*map(_fmt, _mean_std(vs)))
      s = summaries.get(key, {})
      share = lambda k: _fmt(s[k][0], 2) if k in s else '–'
      lines.append(f'| {key[0]} | {key[1]} | {key[2]:g} | {len(rs)} | {cell(val)} | '
                   f'{cell(test)} | {cell(drop)} | {share("lung_share_pred")} | '
                   f'{share("marker_share_pred")} |')
    lines += ['', 'val AUROC is the best val macro AUROC over the evaluations, the one used '
              'for model selection (so slightly optimistic); test AUROC is that model on the '
              'unconfounded test split. Means ± std over seeds.', '']

  # -- figures
  fig_lines = []
  p = figure_auroc_vs_fraction(figures / 'auroc_vs_fraction.png', curve_rows)
  if p:
    fig_lines.append('![AUROC vs label fraction](figures/auroc_vs_fraction.png)')
  p = figure_attention(figures / 'attention_share.png', att_rows)
  if p:
    fig_lines.append('![Grad-CAM lung share per regime](figures/attention_share.png)')
  for protocol, fraction in sorted({(k[0], k[2]) for k in atts},
                                   key=lambda k: (_protocol_key(k[0]), k[1])):
    sel = {k[1]: atts[k] for k in sorted((k for k in atts if (k[0], k[2]) == (protocol,
                                                                                 fraction)),
                                         key=lambda k: _regime_key(k[1]))}
    names = groups[next(k for k in atts if (k[0], k[2]) == (protocol, fraction))][0].get(
        'class_names', [])
    name = f'overlays_{protocol}_{fraction:g}.png'
    if figure_overlays(figures / name, sel, names):
      fig_lines.append(f'![Overlays, {protocol}, label fraction {fraction:g}](figures/{name})')
  if fig_lines:
    lines += ['## Figures', '']
    for f in fig_lines:
      lines += [f, '']
    if any('overlays_' in f for f in fig_lines):
      lines += ['Overlays: the same test images (the first of each class) explained by each '
                'regime: Grad-CAM of the predicted class (each map scaled to its own range), '
                'lung mask outline in cyan.', '']

  # -- statistics note and per-seed table
  lines += ['## Note on statistics', '',
            'Each number is the mean over seeds of the metric on the whole test set; ± is the '
            'std over seeds (training variability). The 95% CI is a percentile cluster '
            'bootstrap over test patients of that seed-mean: each resample draws patients '
            'with replacement and re-scores every seed on it, so it measures test-set '
            'sampling uncertainty of the regime\'s average model. Probabilities are not '
            'pooled over seeds (that would score an ensemble), and per-seed CI bounds are not '
            'averaged. Every bootstrap uses the same resamples for all regimes.', '']
  lines += ['## Per seed', '',
            '| protocol | init | fraction | seed | best step | val score | test auroc |',
            '|---|---|---|---|---|---|---|']
  for key, rs in groups.items():
    for r in rs:
      lines.append(f'| {key[0]} | {key[1]} | {key[2]:g} | {r["seed"]} | '
                   f'{r.get("best_step", "–")} | {_fmt(r.get("val_score"))} | '
                   f'{_fmt(r["test"].get("auroc"))} |')
  return _write(workdir, lines)


def _write(workdir: Path, lines: list[str]) -> Path:
  text = '\n'.join(lines) + '\n'
  path = workdir / 'report.md'
  path.write_text(text)
  (workdir / 'report.html').write_text(_md_to_html(text, f'Report: {workdir.name}'))
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--n_boot', type=int, default=1000,
                      help='bootstrap resamples for CIs and paired tests (0: none)')
  parser.add_argument('--seed', type=int, default=0, help='bootstrap seed')
  args = parser.parse_args(argv)
  print(write_report(args.workdir, n_boot=args.n_boot, seed=args.seed).read_text())


if __name__ == '__main__':
  main()
