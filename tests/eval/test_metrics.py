"""Tests of cxr_jax.eval.metrics against scikit-learn and hand-worked cases: the plain
metrics, and the weighted ones they are (with unit weights)."""
import warnings

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn import metrics as skm

from cxr_jax.eval import metrics

NAMES3 = ['negative', 'typical', 'atypical']


def _softmax(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _random_case(n=120, k=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(k, size=n)
  # informative but noisy logits, so every metric is away from its bounds
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
  return labels, _softmax(logits)


def test_multiclass_matches_sklearn():
  labels, probs = _random_case()
  preds = probs.argmax(axis=1)
  out = metrics.classification_metrics(labels, probs, NAMES3)
  assert out['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds))
  assert out['balanced_accuracy'] == pytest.approx(
      skm.balanced_accuracy_score(labels, preds))
  assert out['macro_f1'] == pytest.approx(skm.f1_score(labels, preds, average='macro'))
  assert out['auroc'] == pytest.approx(
      skm.roc_auc_score(labels, probs, multi_class='ovr', average='macro'))
  for c, name in enumerate(NAMES3):
    assert out[f'auroc/{name}'] == pytest.approx(skm.roc_auc_score(labels == c, probs[:, c]))
    assert out[f'ap/{name}'] == pytest.approx(
        skm.average_precision_score(labels == c, probs[:, c]))
  assert out['map'] == pytest.approx(
      skm.average_precision_score(np.eye(3)[labels], probs, average='macro'))
  assert all(isinstance(v, float) for v in out.values())


def test_ties_match_sklearn():
  # coarse scores: many ties within and across classes, where AUROC and AP conventions
  # (midranks; thresholds at distinct scores) matter
  rng = np.random.default_rng(7)
  for trial in range(5):
    y = rng.integers(2, size=40).astype(bool)
    s = np.round(rng.random(40) + 0.3 * y, 1)
    assert metrics.binary_auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert metrics.binary_average_precision(y, s) == pytest.approx(
        skm.average_precision_score(y, s))
  assert np.isnan(metrics.binary_auroc(np.ones(3, bool), [0.1, 0.2, 0.3]))
  assert np.isnan(metrics.binary_average_precision(np.zeros(3, bool), [0.1, 0.2, 0.3]))


@pytest.mark.filterwarnings('ignore:y_pred contains classes not in y_true')
def test_macro_f1_counts_predicted_but_absent_classes():
  labels = np.array([0, 0, 1, 1])
  preds = np.array([0, 2, 1, 1])  # class 2 predicted once, never true: F1 = 0
  probs = np.eye(3)[preds]
  out = metrics.classification_metrics(labels, probs, NAMES3)
  assert out['macro_f1'] == pytest.approx(
      skm.f1_score(labels, preds, average='macro', zero_division=0))
  assert out['balanced_accuracy'] == pytest.approx(
      skm.balanced_accuracy_score(labels, preds))


def test_binary_two_columns_and_score_vector():
  rng = np.random.default_rng(1)
  labels = rng.integers(2, size=80)
  p1 = np.clip(0.5 + 0.3 * (labels - 0.5) + 0.25 * rng.normal(size=80), 0.01, 0.99)
  out = metrics.classification_metrics(labels, np.stack([1 - p1, p1], 1), ['neg', 'pos'])
  want = skm.roc_auc_score(labels, p1)
  assert out['auroc'] == pytest.approx(want)
  assert out['auroc/pos'] == pytest.approx(want)
  assert out['auroc/neg'] == pytest.approx(want)  # 1 - p1 ranks the negatives the same
  assert out['ap/pos'] == pytest.approx(skm.average_precision_score(labels, p1))
  assert out['macro_f1'] == pytest.approx(
      skm.f1_score(labels, (p1 > 0.5).astype(int), average='macro'))
  # a [N] vector of P(class 1) means the same
  out1 = metrics.classification_metrics(labels, p1, ['neg', 'pos'])
  assert out1 == pytest.approx(out)


def test_one_class_present_gives_nan_auroc_without_warnings():
  labels = np.zeros(10, int)
  probs = _softmax(np.random.default_rng(2).normal(size=(10, 3)))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    out = metrics.classification_metrics(labels, probs, NAMES3)
  assert np.isnan(out['auroc']) and np.isnan(out['map'])
  assert all(np.isnan(out[f'auroc/{n}']) for n in NAMES3)
  assert out['accuracy'] == pytest.approx(np.mean(probs.argmax(1) == 0))
  assert out['balanced_accuracy'] == out['accuracy']  # recall of the only class


def test_absent_class_is_nan_and_left_out_of_macro():
  labels, probs = _random_case(n=60)
  keep = labels != 2
  labels, probs = labels[keep], probs[keep]
  out = metrics.classification_metrics(labels, probs, NAMES3)
  assert np.isnan(out['auroc/atypical'])
  a0 = skm.roc_auc_score(labels == 0, probs[:, 0])
  a1 = skm.roc_auc_score(labels == 1, probs[:, 1])
  assert out['auroc'] == pytest.approx((a0 + a1) / 2)


def test_ece_hand_case():
  # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right):
  # bin of 0.9: acc 0.5, conf 0.9, weight 2/4 -> 0.2; bin of 0.6: acc 1, conf 0.6 -> 0.2
  probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
  labels = np.array([0, 1, 1, 0])
  assert metrics.expected_calibration_error(labels, probs) == pytest.approx(0.4)
  assert metrics.classification_metrics(labels, probs, 'ab')['ece'] == pytest.approx(0.4)
  # perfectly calibrated by construction: confidence 1 and always right
  assert metrics.expected_calibration_error([0, 1], np.eye(2)) == pytest.approx(0.0)


def test_ece_matches_loop_over_bin_edges():
  labels, probs = _random_case(n=300, k=4, seed=3)
  conf, correct = probs.max(1), probs.argmax(1) == labels
  edges = np.linspace(0, 1, 16)
  want = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    inb = (conf > lo) & (conf <= hi)
    if inb.any():
      want += inb.mean() * abs(correct[inb].mean() - conf[inb].mean())
  assert metrics.expected_calibration_error(labels, probs) == pytest.approx(want)


def test_bad_inputs_raise_with_the_offending_row():
  with pytest.raises(ValueError, match='row 1'):
    metrics.classification_metrics([0, 3], np.full((2, 3), 1 / 3), NAMES3)
  with pytest.raises(ValueError, match='class names'):
    metrics.classification_metrics([0, 1], np.full((2, 3), 1 / 3), ['a', 'b'])
  with pytest.raises(ValueError, match='N = 0'):
    metrics.classification_metrics(np.zeros(0, int), np.zeros((0, 3)), NAMES3)


# ----------------------------------------------------------------------------- weighted

def test_weighted_metrics_equal_the_metrics_of_repeated_data():
  rng = np.random.default_rng(0)
  labels, probs = _random_case(n=40, seed=10)
  probs = np.round(probs, 1)  # rounding makes ties in scores
  probs[:, 2] = 1 - probs[:, 0] - probs[:, 1]
  w = rng.integers(0, 3, size=(6, 40)).astype(np.float64)
  w[5] = np.where(labels == 2, 0, w[5])  # a resample without class 2: NaN rules apply
  got = metrics.weighted_metrics(labels, probs, w)
  assert list(got) == list(metrics.HEADLINE)
  for b in range(len(w)):
    idx = np.repeat(np.arange(40), w[b].astype(int))
    want = metrics.classification_metrics(labels[idx], probs[idx], NAMES3)
    for m in metrics.HEADLINE:
      np.testing.assert_allclose(got[m][b], want[m], rtol=1e-12, atol=1e-12, err_msg=m)
  only = metrics.weighted_metrics(labels, probs, w, ('ece',))
  assert list(only) == ['ece'] and np.array_equal(only['ece'], got['ece'])


def test_weighted_auroc_and_ap_match_sklearn_with_sample_weights():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 60).astype(bool)
  s = np.round(rng.normal(size=60) + y, 1)
  w = rng.integers(1, 4, size=(3, 60)).astype(np.float64)
  auc = metrics.weighted_auroc(y, s, w)
  ap = metrics.weighted_average_precision(y, s, w)
  for b in range(3):
    assert auc[b] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w[b]), abs=1e-12)
    assert ap[b] == pytest.approx(
        skm.average_precision_score(y, s, sample_weight=w[b]), abs=1e-12)
  assert np.isnan(metrics.weighted_auroc(y, s, w * ~y)[0])  # no negatives left
  assert np.isnan(metrics.weighted_average_precision(y, s, w * y)[0])  # no positives left


def test_weighted_ece_equals_the_ece_of_repeated_data():
  labels, probs = _random_case(n=50, k=4, seed=11)
  w = np.random.default_rng(2).integers(0, 4, size=(4, 50)).astype(np.float64)
  got = metrics.weighted_ece(labels, probs, w, num_bins=7)
  for b in range(4):
    idx = np.repeat(np.arange(50), w[b].astype(int))
    assert got[b] == pytest.approx(
        metrics.expected_calibration_error(labels[idx], probs[idx], num_bins=7), abs=1e-12)


def test_plain_auroc_is_the_exact_mann_whitney_statistic():
  """Unit weights give the midrank formula to the last bit: fine-tuning selects its model
  by `score > best_score` on this value."""
  rng = np.random.default_rng(3)
  for trial in range(20):
    n = int(rng.integers(5, 300))
    y = rng.integers(2, size=n).astype(bool)
    s = rng.random(n) + 0.3 * y
    if trial % 2:
      s = np.round(s, 1)
    m, k = int(y.sum()), int((~y).sum())
    want = (rankdata(s)[y].sum() - m * (m + 1) / 2) / (m * k)
    assert metrics.binary_auroc(y, s) == want
  nanrow = np.full((2, 3), np.nan)
  nanrow[0, 1] = 0.5
  np.testing.assert_array_equal(metrics.nanmean_rows(nanrow), [0.5, np.nan])
