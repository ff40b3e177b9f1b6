"""Curricula whose stages run different methods: the strict hand-over (the encoder carries
over, heads/target/optimizer start fresh), a mixed-method curriculum resumed after a kill
equals an uninterrupted one, per-method optimizer recipes, the config errors that name
the key, and resuming a workdir written before stages had a method."""
import json
import logging

import jax
import numpy as np
import pytest

from configs import default
from cxr_jax import configuration, pretraining, ssl
from cxr_jax.train import loop, sharding
from tests.test_experiment import tiny_config, validates_or_names


def _same(x, y):
  lx, ly = jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)
  return len(lx) == len(ly) and all(np.array_equal(np.asarray(a), np.asarray(b))
                                    for a, b in zip(lx, ly))


def mixed_config(data_dir, second='simclr'):
  """Stage 0 rotation, stage 1 `second` (the global method), tiny."""
  c = tiny_config(data_dir)
  c.pretrain.method = second
  c.pretrain.stages[0].method = 'rotation'
  c.pretrain.rotation.head_hidden_dim = 16
  c.pretrain.byol.update(dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32))
  for stage in c.pretrain.stages:
    stage.steps, stage.batch_size = 4, 8
  c.checkpoint_every = 2
  return c


def test_a_change_of_method_hands_over_the_encoder_only(tmp_path, tiny_data_dir, caplog):
  config = mixed_config(tiny_data_dir, second='byol')
  configuration.validate(config)
  mesh = sharding.make_mesh()
  first = pretraining.pretrain_job(config, 0, None, mesh, tmp_path, tiny_data_dir).init_state()
  assert set(first.params) == {'encoder', 'head'}  # the rotation classifier
  bumped = first.replace(params=jax.tree_util.tree_map(lambda x: x + 1.0, first.params))
  fresh = pretraining.pretrain_job(config, 1, None, mesh, tmp_path, tiny_data_dir).init_state()
  caplog.set_level(logging.INFO, logger='cxr_jax')
  # keep_head and keep_target are True (their defaults): with another method they cannot apply
  assert config.pretrain.stages[1].keep_head and config.pretrain.stages[1].keep_target
  carried = pretraining.pretrain_job(config, 1, bumped, mesh, tmp_path,
                                     tiny_data_dir).init_state()
  assert ('stage full_res: method byol after rotation: encoder carried over; '
          'projector/predictor/target/optimizer fresh') in caplog.text
  assert _same(carried.params['encoder'], bumped.params['encoder'])
  assert _same(carried.batch_stats['encoder'], bumped.batch_stats['encoder'])
  assert not _same(carried.params['encoder'], fresh.params['encoder'])
  for head in ('projector', 'predictor'):
    assert _same(carried.params[head], fresh.params[head])
  # the target restarts as the carried-over online network, the optimizer from zero
  assert _same(carried.extra['target']['params']['encoder'], bumped.params['encoder'])
  assert _same(carried.extra['target']['params']['projector'], fresh.params['projector'])
  assert _same(carried.opt_state, fresh.opt_state)
  # the same method twice keeps the head (keep_head=True): the hand-over of today
  config.pretrain.stages[0].method = 'byol'
  byol_first = pretraining.pretrain_job(config, 0, None, mesh, tmp_path, tiny_data_dir).init_state()
  byol_bumped = byol_first.replace(
      params=jax.tree_util.tree_map(lambda x: x + 1.0, byol_first.params))
  kept = pretraining.pretrain_job(config, 1, byol_bumped, mesh, tmp_path,
                                  tiny_data_dir).init_state()
  assert _same(kept.params['projector'], byol_bumped.params['projector'])
  # keep_optimizer=True across a change of method is refused naming the key
  config.pretrain.stages[0].method = 'rotation'
  config.pretrain.stages[1].keep_optimizer = True
  with pytest.raises(ValueError, match=r'stages\[1\].keep_optimizer=True'):
    pretraining.pretrain_job(config, 1, bumped, mesh, tmp_path, tiny_data_dir).init_state()


class _Interrupted(Exception):
  pass


def _rows(workdir, job):
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r for r in rows if r['job'] == job and 'train/loss' in r}


def test_a_mixed_method_curriculum_resumes_exactly_after_a_kill(tmp_path, tiny_data_dir):
  config = mixed_config(tiny_data_dir)
  config.pretrain.rotation.optimizer.lr = 2e-3  # rotation's own recipe: twice simclr's
  mesh = sharding.make_mesh()
  a, b = tmp_path / 'a', tmp_path / 'b'
  a.mkdir(), b.mkdir()
  writer = loop.MetricWriter(a)
  straight = pretraining.run_curriculum(config, mesh, writer, a, tiny_data_dir)
  writer.close()

  writer = loop.MetricWriter(b)
  first = loop.run_job(pretraining.pretrain_job(config, 0, None, mesh, b, tiny_data_dir), writer)
  job = pretraining.pretrain_job(config, 1, first, mesh, b, tiny_data_dir,
                                 previous_method='rotation')
  inner, calls = job.train_step, []

  def stop_after_three(state, batch):
    if len(calls) == 3:
      raise _Interrupted()  # killed after the checkpoint of step 2, before step 4
    calls.append(1)
    return inner(state, batch)
  job.train_step = stop_after_three
  with pytest.raises(_Interrupted):
    loop.run_job(job, writer)
  resumed = pretraining.run_curriculum(config, mesh, writer, b, tiny_data_dir)
  writer.close()

  for job_name in ('pretrain/low_res', 'pretrain/full_res'):
    rows_a, rows_b = _rows(a, job_name), _rows(b, job_name)
    assert sorted(rows_b) == [1, 2, 3, 4], job_name
    for step in range(1, 5):
      for key in ('train/loss', 'train/lr', 'train/strength'):
        np.testing.assert_allclose(rows_b[step][key], rows_a[step][key], rtol=1e-6,
                                   err_msg=f'{job_name} {key}@{step}')
  assert 'train/accuracy' in _rows(a, 'pretrain/low_res')[1]  # the rotation task's metrics
  low, full = _rows(a, 'pretrain/low_res'), _rows(a, 'pretrain/full_res')
  np.testing.assert_allclose(low[3]['train/lr'], 2 * full[3]['train/lr'], rtol=1e-6)
  assert set(straight.params) == {'encoder', 'projector'}
  for x, y in zip(jax.tree_util.tree_leaves(straight.params),
                  jax.tree_util.tree_leaves(resumed.params)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_methods_bring_their_optimizer_recipe():
  pretrain = default.get_config().pretrain
  for name in ssl.METHODS:  # every method has its settings, with optimizer overrides
    assert 'optimizer' in pretrain[name], name
  assert ssl.optimizer_config(pretrain, 'barlow_twins').lr == 3e-3
  assert ssl.optimizer_config(pretrain, 'vicreg').lr == 3e-3
  assert ssl.optimizer_config(pretrain, 'simclr').lr == pretrain.optimizer.lr == 1e-3
  assert ssl.optimizer_config(pretrain, 'vicreg').weight_decay == pretrain.optimizer.weight_decay
  assert ssl.optimizer_key(pretrain, 'vicreg', 'lr') == 'pretrain.vicreg.optimizer.lr'
  assert ssl.optimizer_key(pretrain, 'simclr', 'lr') == 'pretrain.optimizer.lr'


@pytest.mark.parametrize('change, message', [
    (lambda c: setattr(c.pretrain.stages[1], 'method', 'rotaton'),
     r"config.pretrain.stages\[1\].method must be one of .*got 'rotaton'"),
    (lambda c: (setattr(c.pretrain.stages[0], 'method', 'rotation'),
                setattr(c.pretrain.stages[1], 'keep_optimizer', True)),
     r"stages\[1\].keep_optimizer=True: the stage runs 'simclr' after 'rotation'"),
    (lambda c: (setattr(c.pretrain.stages[1], 'method', 'jigsaw'), setattr(c, 'augment_on', 'host')),
     r"stages\[1\].method: the pretext task 'jigsaw' builds its inputs on the device"),
    (lambda c: (setattr(c.pretrain, 'method', 'inpainting'),
                setattr(c.pretrain.stages[0], 'positives', 'patient')),
     r"stages\[0\].positives='patient' needs a two-view method"),
    (lambda c: (setattr(c.pretrain.stages[0], 'method', 'jigsaw'),
                c.pretrain.stages[0].image_size.update(dict(start=16.0))),
     r'config.pretrain.jigsaw.tile_fraction: a tile of 4 px at a view size of 16 px'),
    (lambda c: setattr(c.pretrain.vicreg.optimizer, 'lr', 0.0),
     r'config.pretrain.vicreg.optimizer .*lr must be > 0'),
    (lambda c: (setattr(c.pretrain.vicreg.optimizer, 'lrate', 1.0),
                setattr(c.pretrain.stages[0], 'method', 'vicreg')),
     r'config.pretrain.vicreg.optimizer.lrate: not an optimizer setting'),
    (lambda c: (setattr(c.pretrain.stages[0], 'method', 'relative_position'),
                setattr(c.pretrain.stages[1], 'method', 'jigsaw')), None),  # accepted
])
def test_validate_names_the_bad_method_key(change, message):
  config = default.get_config()
  change(config)
  validates_or_names(config, message)


def test_resuming_ignores_settings_of_methods_no_stage_runs(tmp_path):
  config = default.get_config()
  configuration.check_or_write_config(config, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  for stage in saved['pretrain']['stages']:  # a workdir written before stages had a method
    del stage['method']
  del saved['pretrain']['jigsaw']           # nor pretext tasks
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config.pretrain.vicreg.optimizer.lr = 1e-2  # no stage runs vicreg
  configuration.check_or_write_config(config, tmp_path)
  config.pretrain.simclr.proj_dim = 64        # the stages run simclr
  with pytest.raises(ValueError, match='pretrain.simclr.proj_dim'):
    configuration.check_or_write_config(config, tmp_path)
  config.pretrain.simclr.proj_dim = 128
  config.pretrain.stages[1].method = 'vicreg'  # now vicreg's settings matter
  with pytest.raises(ValueError, match='pretrain.vicreg.optimizer.lr'):
    configuration.check_or_write_config(config, tmp_path)


def test_the_report_names_each_stages_method(tmp_path):
  from cxr_jax.report import sections
  config = default.get_config()
  config.pretrain.stages[0].method = 'rotation'
  configuration.check_or_write_config(config, tmp_path)
  (tmp_path / 'metrics.jsonl').write_text(''.join(
      json.dumps({'step': 4, 'job': f'pretrain/{name}', 'train/loss': loss}) + '\n'
      for name, loss in (('low_res', 1.25), ('full_res', 5.5))))
  text = '\n'.join(sections.header(tmp_path))
  assert '- `pretrain/low_res` (rotation): 4 steps, final loss 1.2500' in text
  assert '- `pretrain/full_res` (simclr): 4 steps, final loss 5.5000' in text
