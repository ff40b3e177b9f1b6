"""The report: a whole synthetic workdir with known answers (a clearly better regime, a
regime identical to scratch, attention shares, a confounded phantom), its CIs against the
reference bootstrap, and its HTML. (The bootstrap engine itself: tests/eval/test_bootstrap.py.)"""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxr_jax import report
from cxr_jax.cli import report as report_cli
from cxr_jax.eval import metrics as M
from tests.conftest import ROOT
from tests.oracles import stats

NAMES = ['negative', 'typical', 'atypical']


def _probs(rng, labels, signal, k=3):
  logits = signal * np.eye(k)[labels] + rng.normal(size=(len(labels), k))
  e = np.exp(logits - logits.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


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
  report_cli.main([f'--workdir={workdir}', '--n_boot=200'])
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
  assert '<table>' in page and 'src="figures/auroc_vs_fraction.png"' in page

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


def test_unreadable_files_are_named_and_left_out(tmp_path, caplog):
  """A metrics.jsonl line torn by a kill, a torn result.json and a corrupt config.json are
  named in warnings and skipped; bfloat16 predictions that np.savez stored as raw 2-byte
  voids (runs before they were saved as float32) are read as floats."""
  import ml_dtypes
  rng = np.random.default_rng(0)
  labels = np.arange(40) % 3
  for seed in (0, 1):
    d = tmp_path / 'finetune' / 'scratch' / '1' / f'seed{seed}'
    d.mkdir(parents=True)
    probs = _probs(rng, labels, 2.0)
    np.savez_compressed(d / 'test_predictions.npz', probs=probs.astype(ml_dtypes.bfloat16),
                        labels=labels, patient_id=np.arange(40))
    (d / 'result.json').write_text(json.dumps({
        'init': 'scratch', 'label_fraction': 1.0, 'seed': seed, 'class_names': NAMES,
        'best_step': 1, 'val_score': 0.5, 'test': M.classification_metrics(labels, probs, NAMES)}))
  torn = tmp_path / 'finetune' / 'scratch' / '1' / 'seed2' / 'result.json'
  torn.parent.mkdir()
  torn.write_text('{"init": "scratch", "label_fr')
  (tmp_path / 'metrics.jsonl').write_text(
      json.dumps({'step': 4, 'job': 'pretrain/low_res', 'train/loss': 1.5}) + '\n'
      '{"step": 6, "job": "pretrain/low_res", "train/lo')
  (tmp_path / 'config.json').write_text('{"finetune": {"data": ')
  with caplog.at_level('WARNING', 'cxr_jax'):
    text = report.write_report(tmp_path, n_boot=20).read_text()
  assert f'skipped line 2 of {tmp_path / "metrics.jsonl"}' in caplog.text
  assert f'left out {torn}, which cannot be read' in caplog.text
  assert f'left out {tmp_path / "config.json"}, which cannot be read' in caplog.text
  assert '- `pretrain/low_res`: 4 steps, final loss 1.5000' in text
  assert '| scratch | 1 | 2 |' in text and 'No CI for scratch' not in text


def test_report_ci_equals_the_reference_bootstrap(tmp_path):
  """The printed CI of a group is the oracle's percentile CI of its seed-mean AUROC."""
  workdir = _make_workdir(tmp_path / 'run')
  text = report.write_report(workdir, n_boot=100, seed=2).read_text()
  rows = {(r[0], r[1]): r for r in _rows(text, '| init | label fraction | seeds | auroc')}
  for init in ('scratch', 'curricular'):
    preds = [np.load(workdir / 'finetune' / init / '1' / f'seed{s}' / 'test_predictions.npz')
             for s in range(3)]
    probs = np.stack([p['probs'] for p in preds], axis=1)
    seed_mean = lambda y, p: np.mean([M.classification_metrics(y, p[:, s], NAMES)['auroc']
                                      for s in range(p.shape[1])])
    ref = stats.bootstrap_ci(seed_mean, preds[0]['labels'], probs,
                             groups=preds[0]['patient_id'], n_boot=100, seed=2)
    mean, lo, hi = _ci(rows[(init, '1')][3])
    assert (mean, lo, hi) == (round(ref.point, 3), round(ref.lo, 3), round(ref.hi, 3))


def test_html_is_rendered_by_the_markdown_library(tmp_path):
  d = tmp_path / 'finetune' / 'scratch' / '0.5' / 'seed0'
  d.mkdir(parents=True)
  (d / 'result.json').write_text(json.dumps({
      'init': 'scratch', 'label_fraction': 0.5, 'seed': 0, 'best_step': 3, 'val_score': 0.5,
      'test': {'auroc': 0.61, 'accuracy': 0.4}}))
  report.write_report(tmp_path, n_boot=0)
  page = (tmp_path / 'report.html').read_text()
  assert page.startswith('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Report: ')
  assert page.endswith('</body></html>\n')
  body = page.split('<body>', 1)[1]
  # pipe tables (the 'tables' extension), headings, inline code, escaped '<'
  assert '<table>' in body and '<th>auroc</th>' in body
  assert '<td>scratch</td>' in body and '<td>0.610 ± 0.000</td>' in body
  assert '<td>0.400 ± 0.000</td>' in body
  assert re.search(r'<h2 id="fine-tuning-test-metrics[^"]*">Fine-tuning: test metrics', body)
  assert '<h1 id="report">Report</h1>' in body
  # the contents link every section, by the ids the headings get
  ids = re.findall(r'<h2 id="([^"]+)">', body)
  toc = body.split('<p>Contents: ', 1)[1].split('</p>', 1)[0]
  assert len(ids) > 2 and re.findall(r'<a href="#([^"]+)">', toc) == ids
  assert 'seeds [95% CI])</a>' in toc  # a title's brackets are text, not link syntax
  assert f'<code>{tmp_path.name}</code>' in body
  assert report.render_html('a <b & c\n\n| x |\n|---|\n| 1 |\n', 't').count('<td>1</td>') == 1


def test_command_line(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'cxr_jax.report', f'--workdir={tmp_path}',
                        '--n_boot=0', '--seed=1'], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout
  assert 'No fine-tuning results yet.' in out
  assert (tmp_path / 'report.md').read_text() in out and (tmp_path / 'report.html').exists()


def _umap_workdir(root, n=60):
  """A one-result workdir with two regimes' embeddings (config.explain.umap)."""
  d = root / 'finetune' / 'scratch' / '1' / 'seed0'
  d.mkdir(parents=True)
  (d / 'result.json').write_text(json.dumps({
      'init': 'scratch', 'label_fraction': 1.0, 'seed': 0, 'best_step': 3, 'val_score': 0.5,
      'test': {'auroc': 0.61}}))
  rng = np.random.default_rng(0)
  labels = np.arange(n) % 3
  (root / 'embeddings').mkdir()
  for init, signal in (('curricular', 4.0), ('scratch', 0.0)):
    x = rng.normal(size=(n, 8)) + signal * np.eye(8)[labels]
    np.savez_compressed(root / 'embeddings' / f'{init}.npz', embeddings=x.astype(np.float32),
                        labels=labels, ids=np.arange(n), patient_ids=np.arange(n).astype(str),
                        class_names=np.asarray(NAMES))
  return root


def test_umap_figure_of_the_regimes_embeddings(tmp_path):
  pytest.importorskip('umap')
  text = report.write_report(_umap_workdir(tmp_path), n_boot=0).read_text()
  assert '![UMAP of the test embeddings per regime](figures/umap.png)' in text
  with Image.open(tmp_path / 'figures' / 'umap.png') as image:
    assert image.size[0] >= 2 * image.size[1]  # two panels side by side


def test_without_umap_learn_the_report_says_so_in_one_sentence(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'umap', None)  # `import umap` raises ImportError
  text = report.write_report(_umap_workdir(tmp_path), n_boot=0).read_text()
  assert ('UMAP of the test embeddings (scratch, curricular): not drawn, umap-learn is not '
          'installed') in text
  assert not (tmp_path / 'figures' / 'umap.png').exists()
  for path in (tmp_path / 'embeddings').iterdir():  # without embeddings: no word of UMAP
    path.unlink()
  assert 'UMAP' not in report.write_report(tmp_path, n_boot=0).read_text()


def _add_sanity(root, n):
  """Adds the randomisation test's arrays to every attention.npz: scratch's maps survive
  randomisation (rho ~0.9: fails), the other regimes' do not (rho ~0.05)."""
  rng = np.random.default_rng(3)
  means = {}
  for path in sorted(root.glob('finetune/*/*/seed*/attention.npz')):
    init = path.parts[-4]
    with np.load(path) as f:
      arrays = dict(f)
    rho = rng.normal(0.9 if init == 'scratch' else 0.05, 0.02, n)
    arrays['randomised_full_spearman'] = rho
    arrays['gradcam_occlusion_map_spearman'] = rng.normal(0.3, 0.05, 8)
    means.setdefault((init, path.parts[-3]), []).append(rho)
    np.savez_compressed(path, **arrays)
  return {k: float(np.mean(np.mean(v, axis=0))) for k, v in means.items()}


def test_randomisation_test_section_flags_maps_that_survive(tmp_path):
  from cxr_jax.report import write_report
  workdir = _make_workdir(tmp_path / 'run', seeds=2)
  expected = _add_sanity(workdir, 120)
  text = write_report(workdir, n_boot=200).read_text()
  rows = _rows(text, '| protocol | init | label fraction | seeds | ρ(trained, full')
  assert len(rows) == 6
  for row in rows:
    mean = float(row[4].split(' [')[0])
    assert mean == pytest.approx(expected[(row[1], row[2])], abs=0.006)  # 2 decimals
    assert row[-1] == ('**FAILS**' if row[1] == 'scratch' else 'passes')
    assert row[5].endswith('(n=8)')
  assert 'Warning**: the Grad-CAM maps of scratch 0.25, scratch 1 barely change' in text


def test_no_masks_at_all_is_one_sentence(tmp_path):
  from cxr_jax.report import write_report
  workdir = _make_workdir(tmp_path / 'run', seeds=1)
  for path in workdir.glob('finetune/*/*/seed*/attention.npz'):
    path.unlink()
  config = json.loads((workdir / 'config.json').read_text())
  (workdir / 'config.json').write_text(json.dumps(dict(config, explain={'enabled': True})))
  text = write_report(workdir, n_boot=0).read_text()
  assert 'No lung masks were available for the explained images' in text
  assert 'lung share (pred) | lung share (true)' not in text and 'nan' not in text.lower()


def test_undefined_attention_is_a_dash_with_its_reason(tmp_path):
  """Attention files without lung masks (all lung shares NaN, as a multi-label CheXpert
  run writes them) and the sweep's table: a dash, the reason under the table, no nan."""
  import re
  from cxr_jax.cli import sweep
  from cxr_jax.report import write_report
  workdir = _make_workdir(tmp_path / 'run', seeds=1)
  for path in workdir.glob('finetune/*/*/seed*/attention.npz'):
    arrays = dict(np.load(path))
    n = len(arrays['labels'])
    arrays.update(lung_share_pred=np.full(n, np.nan), lung_share_true=np.full(n, np.nan),
                  lung_area=np.zeros(n), occlusion_lung_share=np.full(8, np.nan))
    np.savez_compressed(path, **arrays)
  text = write_report(workdir, n_boot=50).read_text()
  assert not re.search(r'\bnan\b', text, re.IGNORECASE)
  rows = _rows(text, '| protocol | init | label fraction | seeds | lung share (pred)')
  assert len(rows) == 6 and all(r[4] == r[5] == r[7] == r[-1] == '–' for r in rows)
  assert all(r[6] != '–' for r in rows)  # the marker share is still measured
  assert ("–: no value: a share where no explained image of the group had that region's "
          'mask') in text
  assert 'Δ vs scratch where the lung share (pred) is undefined in either regime' in text
  # the sweep's table: AUROC and differences of a point without values are dashes too
  (workdir / 'finetune' / 'ssl').rename(tmp_path / 'aside')
  for result in workdir.glob('*/*/*/seed*/result.json'):
    r = json.loads(result.read_text())
    r['test'].pop('auroc')
    result.write_text(json.dumps(r))
  (tmp_path / 'sweep').mkdir()
  (workdir).rename(tmp_path / 'sweep' / 'point')
  table = sweep.write_table(tmp_path / 'sweep', n_boot=20).read_text()
  assert not re.search(r'\bnan\b', table, re.IGNORECASE)
  assert '| point | finetune | 1 | curricular | 1 | – |' in table


FINDINGS = ['edema', 'effusion', 'hernia']  # hernia: no positive on this test set


def _findings_workdir(root, patients=40):
  """Two regimes x two seeds of multi-label predictions; targets with NaN (not observed)."""
  rng = np.random.default_rng(11)
  n = 2 * patients
  pid = np.repeat([f'p{i}' for i in range(patients)], 2)
  targets = (rng.random((n, 3)) < [0.4, 0.5, 0.0]).astype(np.float64)
  targets[rng.random((n, 3)) < 0.2] = np.nan
  for init, signal in (('scratch', 0.3), ('curricular', 2.0)):
    for seed in range(2):
      d = root / 'finetune' / init / '1' / f'seed{seed}'
      d.mkdir(parents=True)
      logits = signal * np.nan_to_num(targets, nan=0.5) + rng.normal(size=(n, 3))
      probs = 1 / (1 + np.exp(-logits))
      np.savez_compressed(d / 'test_predictions.npz', probs=probs, labels=targets,
                          patient_id=pid)
      (d / 'result.json').write_text(json.dumps({
          'init': init, 'label_fraction': 1.0, 'seed': seed, 'task': 'findings',
          'class_names': FINDINGS, 'val_score': 0.8, 'best_step': 2,
          'train_positives': {'edema': 5, 'effusion': 7, 'hernia': 0},
          'test': M.classification_metrics(targets, probs, FINDINGS)}))
  return root


def test_findings_report_per_finding_cis_and_mean_auroc_comparison(tmp_path):
  workdir = _findings_workdir(tmp_path / 'run')
  text = report.write_report(workdir, n_boot=100, seed=3).read_text()
  assert '| init | label fraction | seeds | auroc | map | ece |' in text  # no accuracy
  assert 'hernia (0 positive' in text.split('Left out of the means')[1].split('\n')[0]
  no_train = text.split('No positive training example')[1].split('\n')[0]
  assert 'hernia (scratch 1); hernia (curricular 1).' in no_train
  rows = {r[0]: r for r in _rows(text, '| init | label fraction | seeds | edema')}
  preds = [np.load(workdir / 'finetune/curricular/1' / f'seed{s}' / 'test_predictions.npz')
           for s in range(2)]
  y, groups = preds[0]['labels'], preds[0]['patient_id']
  probs = np.stack([p['probs'] for p in preds], axis=1)
  for f, name in enumerate(FINDINGS[:2]):  # the oracle: resample, re-score every seed
    seed_mean = lambda t, p, name=name: np.mean(
        [M.classification_metrics(t, p[:, s], FINDINGS)[f'auroc/{name}'] for s in range(2)])
    ref = stats.bootstrap_ci(seed_mean, y, probs, groups=groups, n_boot=100, seed=3)
    assert _ci(rows['curricular'][3 + f]) == (round(ref.point, 3), round(ref.lo, 3),
                                              round(ref.hi, 3))
  assert rows['curricular'][5] == '–'  # hernia: undefined
  [comp] = _rows(text, '| protocol | label fraction | regime A')
  mean_auroc = lambda init: np.mean([json.loads((
      workdir / 'finetune' / init / '1' / f'seed{s}' / 'result.json').read_text())['test']
      ['auroc'] for s in range(2)])
  assert float(comp[5]) == pytest.approx(mean_auroc('curricular') - mean_auroc('scratch'),
                                         abs=1e-3)
  assert '## Paired comparisons: test mean AUROC over findings' in text
