"""The sweep tool: grid expansion, scratch cells shared between points, and the table of
results, checked against scikit-learn on fake result files (no training)."""
import json
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_jax.cli import sweep


def test_grid_expands_every_combination_and_names_points():
  axes = sweep.parse_grid('pretrain.method=byol,moco; --config.pretrain.optimizer.lr=1e-3,3e-3;')
  assert axes == [('pretrain.method', ['byol', 'moco']), ('pretrain.optimizer.lr', ['1e-3', '3e-3'])]
  points = sweep.grid_points(axes)
  assert points == [{'pretrain.method': m, 'pretrain.optimizer.lr': lr}
                    for m in ('byol', 'moco') for lr in ('1e-3', '3e-3')]
  assert sweep.point_name(points[1]) == 'pretrain.method=byol+pretrain.optimizer.lr=3e-3'
  for bad, message in (('', 'empty'), ('pretrain.method', 'key=value'),
                       ('a=1;a=2', 'twice'), ('a=', 'key=value')):
    with pytest.raises(ValueError, match=message):
      sweep.parse_grid(bad)


def _macro_auroc(labels, probs):
  return np.mean([roc_auc_score(labels == k, probs[:, k]) for k in range(probs.shape[1])])


def _write_cell(point, init, seed, labels, probs, patients, protocol_folder='finetune'):
  cell = point / protocol_folder / init / '1.0' / f'seed{seed}'
  (cell / 'ckpt' / '7').mkdir(parents=True)
  np.savez(cell / 'test_predictions.npz', probs=probs, labels=labels, patient_id=patients)
  (cell / 'result.json').write_text(json.dumps(dict(
      init=init, seed=seed, label_fraction=1.0, protocol='finetune',
      class_names=['a', 'b', 'c'], test={'auroc': _macro_auroc(labels, probs)})))


def test_table_has_seed_means_and_paired_deltas_from_scratch(tmp_path):
  rng = np.random.default_rng(0)
  n, k = 90, 3
  labels = np.arange(n) % k
  patients = np.array([f'p{i // 2}' for i in range(n)])  # two images per patient
  onehot = np.eye(k)[labels]
  probs = {}
  for init, signal in (('scratch', 0.5), ('curricular', 1.5)):
    probs[init] = [np.exp(signal * onehot + rng.normal(size=(n, k))) for _ in range(3)]
    probs[init] = [p / p.sum(-1, keepdims=True) for p in probs[init]]
  for name in ('pretrain.method=byol', 'pretrain.method=moco'):
    for init in ('scratch', 'curricular'):
      for seed in range(3):
        _write_cell(tmp_path / name, init, seed, labels, probs[init][seed], patients)
    (tmp_path / name / 'config.json').write_text('{}')
  rows = sweep.point_rows(tmp_path / 'pretrain.method=byol', n_boot=200)
  by = {r['init']: r for r in rows}
  means = {i: np.mean([_macro_auroc(labels, p) for p in probs[i]]) for i in probs}
  assert by['scratch']['auroc'] == pytest.approx(means['scratch'])
  assert by['scratch']['diff'] is None and by['curricular']['seeds'] == 3
  c = by['curricular']
  assert c['diff'] == pytest.approx(means['curricular'] - means['scratch'])
  assert c['lo'] < c['diff'] < c['hi'] and c['lo'] > 0 and c['p_value'] < 0.05
  table = sweep.write_table(tmp_path, n_boot=200).read_text()
  assert table.count('| curricular |') == 2 and table.count('| scratch |') == 2
  assert f'| {means["curricular"]:.3f} | {c["diff"]:+.3f} |' in table


def test_scratch_cells_are_copied_without_checkpoints(tmp_path):
  labels, probs = np.arange(6) % 3, np.full((6, 3), 1 / 3)
  patients = np.array([f'p{i}' for i in range(6)])
  source, target = tmp_path / 'a', tmp_path / 'b'
  for seed in range(2):
    _write_cell(source, 'scratch', seed, labels, probs, patients)
    _write_cell(source, 'curricular', seed, labels, probs, patients)
  assert sweep.copy_scratch(source, target) == 2
  copied = target / 'finetune' / 'scratch' / '1.0' / 'seed1'
  assert (copied / 'result.json').read_text() == (
      source / 'finetune' / 'scratch' / '1.0' / 'seed1' / 'result.json').read_text()
  assert (copied / 'test_predictions.npz').exists() and not (copied / 'ckpt').exists()
  assert not (target / 'finetune' / 'curricular').exists()
  assert sweep.copy_scratch(source, target) == 0  # already there


FAKE_LAUNCH = '''
import shutil, sys
args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
if args['config.pretrain.method'] == 'simclrr':
  print('a progress line', file=sys.stderr)
  print("error: config.pretrain.method must be one of ('simclr', 'byol'), got 'simclrr'",
        file=sys.stderr)
  sys.exit(1)
shutil.copytree(sys.argv[0] + '.point', args['workdir'])
'''


def test_failed_points_are_named_and_the_sweep_exits_1(tmp_path, monkeypatch, capsys):
  """A point whose run fails: the sweep goes on, writes the table of the others, names the
  failed point and its one-line error, and exits with 1."""
  labels, probs = np.arange(6) % 3, np.full((6, 3), 1 / 3)
  patients = np.array([f'p{i}' for i in range(6)])
  launch = tmp_path / 'launch.py'
  launch.write_text(FAKE_LAUNCH)
  template = tmp_path / 'launch.py.point'  # what the fake launch.py leaves in a workdir
  _write_cell(template, 'scratch', 0, labels, probs, patients)
  (template / 'config.json').write_text('{}')
  monkeypatch.setattr(sweep, 'launch_command', lambda: [sys.executable, str(launch)])
  workdir = tmp_path / 'sweep'
  with pytest.raises(SystemExit) as exit_:
    sweep.main(['--config=configs/default.py', f'--workdir={workdir}', '--n_boot=10',
                '--grid=pretrain.method=byol,simclrr'])
  assert exit_.value.code == 1
  err = capsys.readouterr().err
  # the point's own error line is not repeated; its other output is passed through
  assert 'a progress line' in err and "error: config.pretrain.method" not in err
  assert err.strip().splitlines()[-1] == (
      "error: 1 of 2 sweep point(s) failed: pretrain.method=simclrr (config.pretrain.method "
      "must be one of ('simclr', 'byol'), got 'simclrr'); the table of the others: "
      f"{workdir / 'sweep.md'}")
  table = (workdir / 'sweep.md').read_text()
  assert '| pretrain.method=byol | finetune | 1 | scratch | 1 |' in table
  assert 'Not in the table: 1 of 2 sweep point(s) failed: pretrain.method=simclrr' in table
  runs = json.loads((workdir / 'sweep.json').read_text())['runs']
  assert [(r['rc'], r['error'][:24]) for r in runs] == [(0, ''), (1, 'config.pretrain.method m')]


def test_a_sweep_of_a_bad_key_exits_1_in_one_line(tmp_path):
  """End to end: launch.py refuses the key before any compute; the sweep says so in one
  line on stderr and exits with 1."""
  import subprocess
  import sys
  from tests.conftest import ROOT, subprocess_env
  result = subprocess.run(
      [sys.executable, '-m', 'cxr_jax.cli.sweep', '--config=configs/default.py',
       f'--workdir={tmp_path / "sweep"}', '--grid=pretrain.methodd=byol'],
      cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith('error: 1 of 1 sweep point(s) failed: pretrain.methodd=byol '
                             '(--config.pretrain.methodd=byol: unknown config key '
                             'config.pretrain.methodd'), lines[0]
  assert (tmp_path / 'sweep' / 'sweep.md').exists()
