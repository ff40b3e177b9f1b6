"""The report: its vectorised bootstrap against the reference metrics and statistics, and a
whole synthetic workdir with known answers (a clearly better regime, a regime identical to
scratch, attention shares, a confounded phantom)."""
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from cxr_jax import report
from cxr_jax.eval import metrics as M
from cxr_jax.eval import stats

NAMES = ['negative', 'typical', 'atypical']


def _probs(rng, labels, signal, k=3):
  logits = signal * np.eye(k)[labels] + rng.normal(size=(len(labels), k))
  e = np.exp(logits - logits.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def test_weighted_metrics_equal_the_metrics_of_repeated_data():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 40)
  probs = np.round(_probs(rng, labels, 1.0), 1)  # rounding makes ties in scores
  probs[:, 2] = 1 - probs[:, 0] - probs[:, 1]
  w = rng.integers(0, 3, size=(6, 40)).astype(np.float64)
  w[5] = np.where(labels == 2, 0, w[5])  # a resample without class 2: NaN rules apply
  got = report.weighted_metrics(labels, probs, w)
  for b in range(len(w)):
    idx = np.repeat(np.arange(40), w[b].astype(int))
    want = M.classification_metrics(labels[idx], probs[idx], NAMES)
    for m in report.HEADLINE:
      np.testing.assert_allclose(got[m][b], want[m], rtol=1e-12, atol=1e-12, err_msg=m)


def test_weighted_auroc_matches_sklearn_with_sample_weights():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 60).astype(bool)
  s = np.round(rng.normal(size=60) + y, 1)
  w = rng.integers(1, 4, size=(3, 60)).astype(np.float64)
  got = report.weighted_auroc(y, s, w)
  for b in range(3):
    assert got[b] == pytest.approx(roc_auc_score(y, s, sample_weight=w[b]), abs=1e-12)
  assert np.isnan(report.weighted_auroc(y, s, w * ~y)[0])  # no negatives left


def test_group_ci_and_paired_test_equal_the_reference_bootstrap():
  """Same seed -> same patient resamples as cxr_jax.eval.stats, hence identical results."""
  rng = np.random.default_rng(2)
  labels = np.repeat(rng.integers(0, 3, 30), 2)  # 30 patients, 2 images each
  groups = np.repeat(np.arange(30), 2)
  pa = np.stack([_probs(rng, labels, 2.0) for _ in range(2)], axis=1)  # [N, S=2, K]
  pb = np.stack([_probs(rng, labels, 0.5) for _ in range(2)], axis=1)
  seed_mean_auroc = lambda y, p: np.mean(
      [M.classification_metrics(y, p[:, s], NAMES)['auroc'] for s in range(p.shape[1])])
  stack = report.Stack([0, 1], labels, pa, groups, NAMES)
  ci = report.group_cis(stack, n_boot=60, seed=3)
  ref = stats.bootstrap_ci(seed_mean_auroc, labels, pa, groups=groups, n_boot=60, seed=3)
  assert ci['auroc'] == pytest.approx((ref.lo, ref.hi), abs=1e-12)
  got = report.paired_comparison(labels, pa, pb, groups, n_boot=60, seed=3)
  want = stats.paired_bootstrap(seed_mean_auroc, labels, pa, pb, groups=groups, n_boot=60,
                                seed=3)
  for key in ('diff', 'lo', 'hi', 'p_value', 'n_valid'):
    assert got[key] == pytest.approx(want[key], abs=1e-12), key
  same = report.paired_comparison(labels, pa, pa, groups, n_boot=60, seed=3)
  assert same['p_value'] == 1.0 and same['diff'] == 0.0


def test_weighted_mean_resamples_match_bootstrap_ci():
  rng = np.random.default_rng(4)
  values = rng.normal(size=20)
  values[3] = np.nan
  groups = np.arange(20) // 2
  dist = report.weighted_mean_resamples(values, groups, n_boot=80, seed=5)
  ref = stats.bootstrap_ci(lambda y, v: np.nanmean(v), np.zeros(20), values, groups=groups,
                           n_boot=80, seed=5)
  assert report._percentile_ci(dist) == pytest.approx((ref.lo, ref.hi), abs=1e-12)


def test_holm_by_hand():
  np.testing.assert_allclose(report.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
  out = report.holm([0.5, float('nan'), 0.2])
  assert out[0] == pytest.approx(0.5) and np.isnan(out[1]) and out[2] == pytest.approx(0.4)


# ----------------------------------------------------------------------------- a workdir

SIGNAL = {'scratch': 0.4, 'ssl': None, 'curricular': 3.0}  # ssl: scratch's predictions
LUNG = {'scratch': 1.0, 'ssl': 1.0, 'curricular': 2.5}
MARKER = {'scratch': 4.0, 'ssl': 4.0, 'curricular': 0.3}
VAL = {'scratch': 0.95, 'ssl': 0.95, 'curricular': 0.97}


def _make_workdir(root, seeds=3, patients=60, size=24):
  rng = np.random.default_rng(7)
  labels = np.repeat(np.arange(patients) % 3, 2)
  pid = np.repeat([f'p{i}' for i in range(patients)], 2)
  n = len(labels)
  root.mkdir()
  (root / 'config.json').write_text(json.dumps({'finetune': {'data': {
      'name': 'phantom', 'options': 'size=64,confounder_strength=0.8,seed=0'}}}))
  (root / 'metrics.jsonl').write_text(json.dumps(
      {'step': 10, 'job': 'pretrain/full_res', 'train/loss': 1.234}) + '\n')
  for fraction in (0.25, 1.0):
    scratch_probs = {}
    for init in ('scratch', 'ssl', 'curricular'):
      for seed in range(seeds):
        d = root / 'finetune' / init / f'{fraction:g}' / f'seed{seed}'
        d.mkdir(parents=True)
        if SIGNAL[init] is None:
          probs = scratch_probs[seed]
        else:
          probs = _probs(rng, labels, SIGNAL[init])
          scratch_probs[seed] = probs
        np.savez_compressed(d / 'test_predictions.npz', probs=probs, labels=labels,
                            patient_id=pid)
        result = {'init': init, 'label_fraction': fraction, 'seed': seed, 'num_train': 10,
                  'best_step': 5, 'val_score': VAL[init], 'class_names': NAMES,
                  'test': M.classification_metrics(labels, probs, NAMES)}
        (d / 'result.json').write_text(json.dumps(result))
        lung = rng.normal(LUNG[init], 0.3, n)
        lung[0] = np.nan  # an image without a mask
        idx = np.array([0, 2, 4])  # the first image of each class
        cams = np.zeros((3, size, size), np.float32)
        r0 = 12 if init == 'curricular' else 2  # lungs (centre) vs the marker corner
        cams[:, r0:r0 + 6, r0:r0 + 6] = 1.0
        mask = np.zeros((3, size, size), np.uint8)
        mask[:, 8:20, 8:20] = 1
        image = rng.integers(0, 255, (3, size, size)).astype(np.uint8)
        np.savez_compressed(
            d / 'attention.npz', probs=probs, labels=labels, pred=probs.argmax(1),
            lung_share_pred=lung, lung_share_true=lung + 0.1, lung_area=np.full(n, 0.3),
            marker_share_pred=rng.normal(MARKER[init], 0.2, n),
            marker_share_true=rng.normal(MARKER[init], 0.2, n), marker_area=np.full(n, 0.02),
            occlusion_index=np.arange(8), occlusion_lung_share=lung[:8] * 0.9 + 0.05,
            overlay_index=idx, overlay_image=image, overlay_mask=mask, overlay_cam_pred=cams,
            overlay_cam_true=cams, image_size=np.asarray(size), patient_id=pid,
            cam_resolution=np.array([2, 2] if init == 'ssl' else [8, 8]))
  # one linear-probe result, in its own section
  d = root / 'linear_probe' / 'scratch' / '1' / 'seed0'  # the experiment's folder name
  d.mkdir(parents=True)
  probs = _probs(rng, labels, 1.0)
  np.savez_compressed(d / 'test_predictions.npz', probs=probs, labels=labels, patient_id=pid)
  (d / 'result.json').write_text(json.dumps({
      'init': 'scratch', 'label_fraction': 1.0, 'seed': 0, 'best_step': 0, 'val_score': 0.7,
      'class_names': NAMES, 'test': M.classification_metrics(labels, probs, NAMES)}))
  return root


def _rows(text, header_start):
  """Cells of the table whose header line starts with `header_start`."""
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith(header_start))
  out = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    out.append([c.strip() for c in line.strip().strip('|').split('|')])
  return out


def _ci(cell):
  """'0.812 ± 0.010 [0.780, 0.840]' -> (0.812, 0.780, 0.840)."""
  mean = float(cell.split('±')[0])
  lo, hi = cell.split('[')[1].rstrip(']').split(',')
  return mean, float(lo), float(hi)


def test_synthetic_workdir_report(tmp_path, capsys):
  workdir = _make_workdir(tmp_path / 'run')
  report.main([f'--workdir={workdir}', '--n_boot=200'])
  text = (workdir / 'report.md').read_text()
  assert text == capsys.readouterr().out.rstrip('\n') + '\n'

  # the results table keeps the '| <init> | <fraction> | <seeds> |' lines
  for init in ('scratch', 'ssl', 'curricular'):
    for fraction in ('0.25', '1'):
      assert f'| {init} | {fraction} | 3 |' in text
  rows = {(r[0], r[1]): r for r in _rows(text, '| init | label fraction | seeds | auroc')}
  for fraction in ('0.25', '1'):
    cur, scr = _ci(rows[('curricular', fraction)][3]), _ci(rows[('scratch', fraction)][3])
    assert cur[1] > scr[2]  # the better regime's CI lies wholly above
    assert cur[1] <= cur[0] <= cur[2] and scr[1] <= scr[0] <= scr[2]
    # the point is the mean over seeds of the per-seed test AUROC in result.json
    seeds = [json.loads((workdir / 'finetune' / 'scratch' / fraction / f'seed{s}' /
                         'result.json').read_text())['test']['auroc'] for s in range(3)]
    assert scr[0] == pytest.approx(np.mean(seeds), abs=5e-4)

  comp = _rows(text, '| protocol | label fraction | regime A | regime B')
  by = {(r[1], r[2], r[3]): r for r in comp}
  for fraction in ('0.25', '1'):
    better = by[(fraction, 'curricular', 'scratch')]
    # with B = 200 resamples all favouring A, p = 2 / (B + 1), the smallest possible
    assert float(better[5]) > 0.2 and float(better[7]) == pytest.approx(2 / 201, abs=1e-3)
    assert float(better[6].strip('[]').split(',')[0]) > 0  # CI of the difference above 0
    same = by[(fraction, 'ssl', 'scratch')]  # identical predictions
    assert float(same[5]) == 0.0 and same[7] == '1.000'
    assert (fraction, 'curricular', 'ssl') in by
  assert len(comp) == 6  # 3 pairs x 2 fractions (the lone linear regime has no pair)

  att = {(r[1], r[2]): r for r in _rows(text, '| protocol | init | label fraction | seeds |'
                                        ' lung share')}
  for fraction in ('0.25', '1'):
    cur = [float(x) for x in att[('curricular', fraction)][4].replace('[', '').replace(
        ']', '').replace(',', '').split()]
    scr = [float(x) for x in att[('scratch', fraction)][4].replace('[', '').replace(
        ']', '').replace(',', '').split()]
    assert cur[0] == pytest.approx(2.5, abs=0.15) and scr[0] == pytest.approx(1.0, abs=0.15)
    assert cur[1] > scr[2]
    assert att[('curricular', fraction)][-1].endswith('(p 0.010)')
    assert att[('scratch', fraction)][-1] == '–'

  conf = {tuple(r[:3]): r for r in _rows(text, '| protocol | init | label fraction | seeds |'
                                          ' val AUROC')}
  # scratch: val 0.95 (confounded) against its test AUROC; curricular: val 0.97
  scratch, cur = conf[('finetune', 'scratch', '1')], conf[('finetune', 'curricular', '1')]
  for row, val in ((scratch, 0.95), (cur, 0.97)):
    test_auroc = float(row[5].split('±')[0])
    assert float(row[6].split('±')[0]) == pytest.approx(val - test_auroc, abs=1.5e-3)
  assert float(scratch[6].split('±')[0]) > 0.2 and float(cur[6].split('±')[0]) < 0.1
  assert float(cur[8]) < 1 < float(scratch[8])  # marker share
  assert ('linear', 'scratch', '1') in conf

  assert 'Warning: Grad-CAM was computed on 2x2 feature maps' in text  # ssl's maps
  assert '## Linear probe (frozen encoder): test metrics' in text
  assert '`pretrain/full_res`: 10 steps, final loss 1.2340' in text
  for name in ('auroc_vs_fraction.png', 'attention_share.png', 'overlays_finetune_1.png',
               'overlays_finetune_0.25.png'):
    assert f'](figures/{name})' in text
    with Image.open(workdir / 'figures' / name) as im:
      assert im.size[0] > 200 and im.size[1] > 200
  with Image.open(workdir / 'figures' / 'overlays_finetune_1.png') as im:
    # 3 images (rows) x (image + 3 regimes) columns of 1.6-inch cells at 100 dpi
    assert im.size == (4 * 160, 3 * 160)
  page = (workdir / 'report.html').read_text()
  assert '<table>' in page and '<img src="figures/auroc_vs_fraction.png"' in page

  # regenerable: a second run from the same files writes the same report
  report.write_report(workdir, n_boot=200)
  assert (workdir / 'report.md').read_text() == text


def test_empty_and_prediction_less_workdirs(tmp_path):
  assert 'No fine-tuning results yet.' in report.write_report(tmp_path).read_text()
  d = tmp_path / 'finetune' / 'scratch' / '1' / 'seed0'
  d.mkdir(parents=True)
  (d / 'result.json').write_text(json.dumps({
      'init': 'scratch', 'label_fraction': 1.0, 'seed': 0, 'best_step': 3, 'val_score': 0.5,
      'test': {'auroc': 0.61, 'accuracy': 0.4}}))
  text = report.write_report(tmp_path, n_boot=50).read_text()
  assert '| scratch | 1 | 1 | 0.610 ± 0.000 |' in text
  assert 'No CI for scratch 1: no test_predictions.npz' in text
  assert report.summarize(report.load_results(tmp_path))[('scratch', 1.0)]['auroc'][0] == 0.61
