"""python -m cxr_jax.cli.order_tasks: the ordering rules on hand-made score tables, and the
tool end to end on the tiny phantom (scores = the monitors' logged values, val only;
curriculum overrides accepted by launch.py's config loader)."""
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs import default
from cxr_jax import trained
from cxr_jax.cli import order_tasks
from cxr_jax import pretraining
from cxr_jax import ssl
from cxr_jax.data import pipeline
from cxr_jax.data.schema import class_names as config_classes
from cxr_jax.eval import probes
from cxr_jax.train import inference
from cxr_jax.train import sharding
from cxr_jax.train import state as state_lib
from tests.conftest import tiny_overrides

NAN = float('nan')


# ------------------------------------------------------------------------------ rules

def test_rules_order_by_score_strongest_last_by_default():
  scores = {'jigsaw': 0.61, 'rotation': 0.55, 'simclr': 0.72}
  assert order_tasks.ascending(scores) == ['rotation', 'jigsaw', 'simclr']
  assert order_tasks.descending(scores) == ['simclr', 'jigsaw', 'rotation']
  assert order_tasks.best_only(scores) == ['simclr']


def test_rules_break_ties_by_name_and_leave_out_nan():
  scores = {'c': 0.6, 'a': 0.6, 'b': NAN, 'd': 0.5, 'e': None}
  # the rank: best first, tied tasks alphabetical; ascending is that rank reversed
  assert order_tasks.rank(scores) == ['a', 'c', 'd']
  assert order_tasks.descending(scores) == ['a', 'c', 'd']
  assert order_tasks.ascending(scores) == ['d', 'c', 'a']
  assert order_tasks.best_only(scores) == ['a']
  assert order_tasks.best_only({'x': NAN}) == [] and order_tasks.ascending({}) == []
  # the order of the table does not matter
  assert order_tasks.ascending(dict(reversed(list(scores.items())))) == ['d', 'c', 'a']


def test_choose_scores_and_reasons():
  rows = {'simclr': dict(knn_auroc=0.8, linear_auroc=0.6),     # mean 0.70
          'byol': dict(knn_auroc=0.6, linear_auroc=0.9),       # mean 0.75
          'moco': dict(knn_auroc=NAN, linear_auroc=0.95),      # mean NaN
          'vicreg': dict(task='vicreg', error='ValueError: bad')}
  chosen, left_out = order_tasks.choose(rows, 'ascending', 'mean')
  assert chosen == ['simclr', 'byol']
  assert left_out == {'vicreg': 'failed: ValueError: bad',
                      'moco': 'mean of kNN and linear-probe AUROC is NaN'}
  assert order_tasks.choose(rows, 'ascending', 'knn')[0] == ['byol', 'simclr']
  assert order_tasks.choose(rows, 'descending', 'linear')[0] == ['moco', 'byol', 'simclr']
  assert order_tasks.choose(rows, 'best_only', 'linear')[0] == ['moco']
  with pytest.raises(ValueError, match='--rule'):
    order_tasks.choose(rows, 'random', 'mean')
  with pytest.raises(ValueError, match='--score'):
    order_tasks.choose(rows, 'ascending', 'auc')


def test_a_failed_candidate_is_reported_and_all_failed_exits_nonzero(tmp_path, monkeypatch,
                                                                     tiny_data_dir):
  def fails(config, task, task_dir, mesh):
    raise RuntimeError(f'{task} broke\nsecond line')
  monkeypatch.setattr(order_tasks, 'run_candidate', fails)
  with pytest.raises(SystemExit, match='every candidate failed: simclr: RuntimeError: '
                                       'simclr broke; byol: RuntimeError: byol broke'):
    order_tasks.main(['--config=configs/default.py', f'--workdir={tmp_path}',
                      '--tasks=simclr,byol', *tiny_overrides(tiny_data_dir)])
  table = (tmp_path / 'order.md').read_text()
  assert '| simclr | – | – | – | – | failed |' in table
  assert '- byol: failed: RuntimeError: byol broke' in table
  assert 'Curriculum (stage order): none' in table


def test_unknown_task_is_refused_before_any_training(tmp_path):
  with pytest.raises(SystemExit):
    order_tasks.main(['--config=configs/default.py', f'--workdir={tmp_path}',
                      '--tasks=simclr,no_such_task'])
  assert not (tmp_path / 'simclr').exists()


def test_a_candidate_is_the_ssl_stage_alone_with_its_method_and_monitored_at_its_end():
  config = order_tasks.parse_config(['x', '--config=configs/default.py',
                                     '--config.pretrain.monitor_every=0'])
  c = order_tasks.candidate_config(config, 'byol', 0, 7, '/data')
  assert [s.name for s in c.pretrain.stages] == ['low_res'] and c.pretrain.ssl_stage == ''
  assert c.pretrain.method == 'byol' and c.pretrain.stages[0].steps == 7
  assert c.pretrain.stages[0].image_size.start == 48  # the stage's own settings
  assert c.pretrain.monitor_every == 7 and c.data_dir == '/data'
  assert config.pretrain.method == 'simclr' and len(config.pretrain.stages) == 2  # a copy
  with config.unlocked():  # per-stage methods: the stage's field is set too
    for stage in config.pretrain.stages:
      stage.method = 'simclr'
  c = order_tasks.candidate_config(config, 'vicreg', 1, None, '/data')
  assert c.pretrain.stages[0].method == 'vicreg' and c.pretrain.stages[0].steps == 150


# ------------------------------------------------------------------------ end to end

TASKS = ('simclr', 'vicreg')
STEPS = 3


def _args(workdir, data_dir, *more):
  return ['--config=configs/default.py', f'--workdir={workdir}', f'--tasks={",".join(TASKS)}',
          f'--steps={STEPS}', *tiny_overrides(data_dir),
          '--config.pretrain.vicreg.proj_hidden_dim=32', '--config.pretrain.vicreg.proj_dim=16',
          *more]


@pytest.fixture(scope='module')
def ordered(tmp_path_factory, tiny_data_dir):
  """Two candidates of 3 steps each (the tiny default config's last stage, 32 px, batch
  16, monitors at the last step), ordered by the default rule."""
  workdir = tmp_path_factory.mktemp('order')
  chosen = order_tasks.main(_args(workdir, tiny_data_dir))
  return workdir, chosen


def _monitor_line(task_dir):
  rows = [json.loads(l) for l in (task_dir / 'metrics.jsonl').read_text().splitlines()]
  lines = [r for r in rows if r['job'] == 'pretrain/full_res' and 'monitor/knn_auroc' in r]
  assert [r['step'] for r in lines] == [STEPS]  # one candidate run, monitored at its end
  return lines[0]


def test_scores_are_the_monitors_on_val_and_the_order_follows_them(ordered, tiny_data_dir):
  workdir, chosen = ordered
  result = json.loads((workdir / 'order.json').read_text())
  mesh = sharding.make_mesh()
  builder = pipeline.get_builder(_tiny_config(workdir / 'simclr').finetune.data,
                                 tiny_data_dir)
  train = pipeline.read_all(pipeline.get_source(builder, 'train'), ('image', 'label'))
  val = pipeline.read_all(pipeline.get_source(builder, 'val'), ('image', 'label'))
  means = {}
  for task in TASKS:
    row = result['candidates'][task]
    monitor = _monitor_line(workdir / task)
    assert row['knn_auroc'] == monitor['monitor/knn_auroc']
    assert row['steps'] == STEPS and row['batch_size'] == 16 and row['images_seen'] == 48
    assert row['image_size'] == 32
    # single-label monitors log the linear probe's AUROC too: the tool takes it as it is
    assert row['linear_auroc_source'] == 'monitor'
    assert row['linear_auroc'] == monitor['monitor/linear_auroc']
    # the linear AUROC: the probe on the candidate's final encoder, fit on train and
    # scored on val by sklearn's AUROC (the restored state: nothing is retrained)
    config = _tiny_config(workdir / task)
    assert config.pretrain.method == task and len(config.pretrain.stages) == 1
    assert config.pretrain.stages[0].steps == STEPS
    state = pretraining.run_curriculum(config, mesh, _NoWriter(), workdir / task,
                                       tiny_data_dir)
    assert int(state.step) == STEPS
    model = ssl.get_method(task).build_model(state_lib.encoder_from_config(config.model),
                                             config.pretrain[task])
    extract = inference.make_features(model, 32, mesh, 16)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    num_classes = len(config_classes(builder))
    probe = probes.linear_probe_fit(extract(variables, train['image']), train['label'],
                                    num_classes)
    p = np.asarray(probes.linear_probe_predict(probe, extract(variables, val['image'])))
    # macro one-vs-rest AUROC over the classes val has both with and without
    per_class = [roc_auc_score(val['label'] == c, p[:, c]) for c in range(num_classes)
                 if 0 < np.sum(val['label'] == c) < len(val['label'])]
    assert row['linear_auroc'] == pytest.approx(np.mean(per_class), abs=1e-6)
    means[task] = (row['knn_auroc'] + row['linear_auroc']) / 2
  # ascending by the mean score (ties by name): the stronger task last
  expected = sorted(TASKS, key=lambda t: (-means[t], t))[::-1]
  assert chosen == result['curriculum'] == expected
  table = (workdir / 'order.md').read_text()
  for task in TASKS:
    r = result['candidates'][task]
    assert (f'| {task} | {r["knn_auroc"]:.3f} | {r["linear_auroc"]:.3f} | {means[task]:.3f} |'
            in table)
  assert f'Curriculum (stage order): {expected[0]} → {expected[1]}' in table


def test_a_candidate_whose_monitor_logged_no_linear_auroc_gets_the_same_probe_refit(
    ordered, tmp_path):
  """A finished candidate of an earlier version (its monitor line without
  `monitor/linear_auroc`): the tool refits the monitors' probe on the restored encoder,
  trains nothing, and scores what the monitor would have logged."""
  workdir, _ = ordered
  task = TASKS[0]
  task_dir = tmp_path / task
  shutil.copytree(workdir / task, task_dir)
  logged = _monitor_line(task_dir)['monitor/linear_auroc']
  metrics = task_dir / 'metrics.jsonl'
  rows = [json.loads(l) for l in metrics.read_text().splitlines()]
  for r in rows:
    r.pop('monitor/linear_auroc', None)
  metrics.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  (task_dir / 'candidate.json').unlink()
  row = order_tasks.run_candidate(_tiny_config(task_dir), task, task_dir,
                                  sharding.make_mesh())
  assert row['linear_auroc_source'] == 'probe'
  assert row['linear_auroc'] == pytest.approx(logged, abs=1e-6)
  assert len(metrics.read_text().splitlines()) == len(rows)  # no step ran


def test_curriculum_overrides_are_accepted_by_the_launch_config_loader(ordered, tmp_path):
  workdir, chosen = ordered
  text = (workdir / 'curriculum.txt').read_text()
  lines = [l for l in text.splitlines() if l.startswith('--config.')]
  assert lines == [f'--config.pretrain.stages[{i}].method={t}' for i, t in enumerate(chosen)]
  config_file = 'configs/default.py'
  if 'method' not in default.get_config().pretrain.stages[0]:
    # before per-stage methods land: the same config with the stage field they add
    config_file = tmp_path / 'with_stage_methods.py'
    config_file.write_text(
        'from configs import default\n\n\ndef get_config(arg=None):\n'
        '  c = default.get_config(arg)\n'
        '  for stage in c.pretrain.stages:\n'
        "    stage.method = ''\n"
        '  return c\n')
  config = order_tasks.parse_config(['launch.py', f'--config={config_file}', *lines])
  assert [s.method for s in config.pretrain.stages] == chosen
  # the snippet makes a config of as many stages, each a copy of the candidates' stage
  snippet = text.split('get_config() after c.pretrain.stages is set:\n', 1)[1]
  c = default.get_config()
  exec(snippet, {}, {'c': c})
  assert [(s.name, s.method) for s in c.pretrain.stages] == [(t, t) for t in chosen]
  assert all(s.steps == 150 and s.image_size.start == 64 for s in c.pretrain.stages)


def test_a_rerun_resumes_without_training_and_applies_another_rule(ordered, tiny_data_dir):
  workdir, chosen = ordered
  before = json.loads((workdir / 'order.json').read_text())['candidates']
  again = order_tasks.main(_args(workdir, tiny_data_dir, '--rule=best_only'))
  after = json.loads((workdir / 'order.json').read_text())['candidates']
  assert again == [chosen[-1]]
  assert after == before  # same scores, no more wall time: nothing was trained
  for task in TASKS:
    _monitor_line(workdir / task)  # still one monitor line: no step ran again
  assert '--config.pretrain.stages[0].method=' + chosen[-1] in (
      workdir / 'curriculum.txt').read_text()


# ---------------------------------------------------------------------------- helpers

class _NoWriter:
  """run_job's metric writer for a finished job: nothing is trained, nothing written."""

  def write(self, *args, **kwargs):
    del args, kwargs

  def close(self):
    pass


def _tiny_config(task_dir):
  """The candidate's config as its run saved it."""
  return trained.config_from_json(task_dir / 'config.json')
