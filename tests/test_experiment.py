"""The experiment plan: a pretraining stage resumed mid-way follows the same schedules and
data order as an uninterrupted one; carry-over between stages; config validation."""
import json

import jax
import numpy as np
import pytest

from configs import default
from cxr_jax import configuration, experiment, finetuning, pretraining, regimes
from cxr_jax.curriculum import schedule
from cxr_jax.train import loop, sharding
from cxr_jax.train import state as state_lib
from tests.conftest import TINY_PHANTOM


def tiny_config(data_dir):
  c = default.get_config()
  c.data_dir = str(data_dir)
  c.phantom = TINY_PHANTOM
  c.model.width = 0.125
  c.pretrain.simclr.proj_hidden_dim, c.pretrain.simclr.proj_dim = 32, 16
  for stage in c.pretrain.stages:
    stage.steps, stage.batch_size = 6, 16
    stage.image_size = schedule('constant', 32)
  c.pretrain.stages[0].strength = schedule('linear', 0.2, 0.9)
  c.pretrain.monitor_every = 0
  c.checkpoint_every, c.log_every = 3, 1
  return c


class _Interrupted(Exception):
  pass


def _rows(workdir, job):
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r for r in rows if r['job'] == job and 'train/loss' in r}


@pytest.mark.parametrize('pacing', ['root', 'none'])  # paced sampler; loader over the image cache
def test_resumed_stage_follows_the_same_schedule_and_data(tmp_path, tiny_data_dir, pacing):
  config = tiny_config(tiny_data_dir)
  config.curriculum.pacing.kind = pacing
  mesh = sharding.make_mesh()
  a, b = tmp_path / 'a', tmp_path / 'b'
  a.mkdir(), b.mkdir()
  writer = loop.MetricWriter(a)
  straight = loop.run_job(pretraining.pretrain_job(config, 0, None, mesh, a, tiny_data_dir), writer)
  writer.close()

  writer = loop.MetricWriter(b)
  job = pretraining.pretrain_job(config, 0, None, mesh, b, tiny_data_dir)
  inner, calls = job.train_step, []

  def stop_after_three(state, batch):
    if len(calls) == 3:
      raise _Interrupted()  # as if killed after the checkpoint of step 3
    calls.append(1)
    return inner(state, batch)
  job.train_step = stop_after_three
  with pytest.raises(_Interrupted):
    loop.run_job(job, writer)
  resumed = loop.run_job(pretraining.pretrain_job(config, 0, None, mesh, b, tiny_data_dir), writer)
  writer.close()

  rows_a, rows_b = _rows(a, 'pretrain/low_res'), _rows(b, 'pretrain/low_res')
  assert sorted(rows_b) == [1, 2, 3, 4, 5, 6]
  for step in range(1, 7):
    for key in ('train/strength', 'train/lr', 'train/temperature', 'train/loss'):
      np.testing.assert_allclose(rows_b[step][key], rows_a[step][key], rtol=1e-6, err_msg=f'{key}@{step}')
  assert rows_a[1]['train/strength'] < rows_a[6]['train/strength']  # the schedule did move
  for x, y in zip(jax.tree_util.tree_leaves(straight.params), jax.tree_util.tree_leaves(resumed.params)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_stage_carry_over_keeps_or_resets_the_head(tmp_path, tiny_data_dir):
  config = tiny_config(tiny_data_dir)
  mesh = sharding.make_mesh()
  first = pretraining.pretrain_job(config, 0, None, mesh, tmp_path, tiny_data_dir).init_state()
  bumped = first.replace(params=jax.tree_util.tree_map(lambda x: x + 1.0, first.params))
  config.pretrain.stages[1].keep_head = False
  fresh = pretraining.pretrain_job(config, 1, None, mesh, tmp_path, tiny_data_dir).init_state()
  carried = pretraining.pretrain_job(config, 1, bumped, mesh, tmp_path, tiny_data_dir).init_state()
  same = lambda x, y: all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in
                          zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)))
  assert same(carried.params['encoder'], bumped.params['encoder'])
  assert same(carried.params['projector'], fresh.params['projector'])   # re-initialised
  config.pretrain.stages[1].keep_head = True
  kept = pretraining.pretrain_job(config, 1, bumped, mesh, tmp_path, tiny_data_dir).init_state()
  assert same(kept.params['projector'], bumped.params['projector'])


@pytest.mark.parametrize('change, message', [
    (lambda c: setattr(c.pretrain.stages[0], 'steps', 0), r'stages\[0\].steps must be > 0'),
    (lambda c: setattr(c.pretrain.stages[1], 'name', 'low_res'), 'stage names must be unique'),
    (lambda c: setattr(c.finetune, 'protocols', 'finetune,lineer'), "unknown protocol 'lineer'"),
    (lambda c: setattr(c.finetune, 'inits', 'imagenet'), 'imagenet_checkpoint is empty'),
    (lambda c: setattr(c.pretrain, 'ssl_stage', 'nope'), "ssl_stage='nope' is not a stage"),
    (lambda c: setattr(c, 'augment_on', 'gpu'), "augment_on must be 'device' or 'host'"),
    (lambda c: (setattr(c, 'augment_on', 'host'), setattr(c.curriculum.pacing, 'kind', 'root')),
     "augment_on='host' needs config.curriculum.pacing.kind='none'"),
    (lambda c: setattr(c.finetune, 'steps', -5), r'config.finetune.steps must be an integer >= 1, got -5'),
    (lambda c: setattr(c.finetune, 'num_seeds', 0), 'config.finetune.num_seeds must be an integer >= 1'),
    (lambda c: setattr(c.finetune, 'label_fractions', (1.5,)), r'label_fractions must be fractions in \(0, 1\]'),
    (lambda c: setattr(c.finetune, 'label_fractions', (0.0,)), r'label_fractions must be fractions in \(0, 1\]'),
    (lambda c: setattr(c.finetune, 'strength', -3.0), 'config.finetune.strength must be a number >= 0'),
    (lambda c: setattr(c.pretrain.stages[1].strength, 'start', 1.5), r'stages\[1\].strength must stay in \[0, 1\]'),
    (lambda c: c.pretrain.stages[0].image_size.update(dict(kind='linear', end=4.0)),
     r'stages\[0\].image_size must stay in >= 8, but reaches 4'),
    (lambda c: setattr(c, 'checkpoint_every', 0), 'config.checkpoint_every must be an integer >= 1'),
    (lambda c: setattr(c, 'log_every', 0), 'config.log_every must be an integer >= 1'),
    (lambda c: setattr(c.pretrain.stages[0], 'batch_size', 0), r'stages\[0\].batch_size must be an integer >= 1'),
    (lambda c: setattr(c.model, 'dtype', 'float8'), "config.model.dtype must be one of"),
    (lambda c: setattr(c.model, 'stem', 'tiny'), "config.model.stem must be one of"),
    (lambda c: setattr(c.pretrain.optimizer, 'lr', 0.0), 'config.pretrain.optimizer.lr must be > 0'),
    (lambda c: setattr(c.finetune.optimizer, 'name', 'adam'), 'config.finetune.optimizer.name must be one of'),
    (lambda c: setattr(c.curriculum, 'difficulty', 'loss'), 'config.curriculum.difficulty must be one of'),
    (lambda c: setattr(c.curriculum.pacing, 'kind', 'cubic'), 'config.curriculum.pacing'),
    (lambda c: setattr(c.explain, 'stage', 7), "config.explain.stage must be 'auto'"),
    (lambda c: setattr(c.explain, 'randomise', 'head,layer3'),
     r"config.explain.randomise: 'layer3'; choose from \('head', 'full'\)"),
    (lambda c: setattr(c.explain, 'masks', 'segmenter:'), r"config.explain.masks='segmenter:'"),
    (lambda c: c.explain.data.update(dict(name='covid_qu_ex', split='')),
     'config.explain.data.split: empty'),
    (lambda c: setattr(c.pretrain.stages[1], 'positives', 'study'),
     r"stages\[1\].positives must be one of \('image', 'patient'\)"),
    (lambda c: (setattr(c.pretrain.stages[0], 'positives', 'patient'),
                setattr(c.curriculum.pacing, 'kind', 'root')),
     r"stages\[0\].positives='patient' needs config.curriculum.pacing.kind='none'"),
    (lambda c: setattr(c.finetune, 'inits', 'ssl_matched'), None),  # accepted
])
def test_validate_names_the_bad_key(change, message):
  config = default.get_config()
  config.finetune.inits = 'scratch,ssl,curricular'
  change(config)
  validates_or_names(config, message)


def validates_or_names(config, message):
  """`configuration.validate(config)` passes (message None) or raises a ValueError whose
  text matches `message`."""
  if message is None:
    configuration.validate(config)
    return
  with pytest.raises(ValueError, match=message):
    configuration.validate(config)


def test_a_missing_split_is_found_before_any_training(tmp_path, tiny_data_dir):
  config = tiny_config(tiny_data_dir)
  config.finetune.data.val_split = 'validation'
  with pytest.raises(ValueError, match="config.finetune.data.val_split: dataset 'phantom' has no "
                                       "split 'validation'"):
    experiment.run(config, tmp_path)
  assert not (tmp_path / 'pretrain').exists()
  # the corrected command is not refused as a change of a run that never started
  assert not (tmp_path / 'config.json').exists()


def test_image_sizes_round_to_multiples_of_eight():
  sizes = pretraining.image_sizes(schedule('linear', 24, 64), 6, 'k')
  assert sizes[0] == 24 and sizes[-1] == 56 and all(s % 8 == 0 for s in sizes)
  assert list(sizes) == sorted(sizes)


def test_finetune_jobs_with_model_selection_compile_their_step_once(tmp_path, tiny_data_dir):
  # evaluation replaces the state's best-so-far weights and score; if those came back with
  # another type or sharding than the step's outputs, every evaluation would recompile it
  config = tiny_config(tiny_data_dir)
  config.finetune.steps, config.finetune.eval_every, config.finetune.batch_size = 4, 2, 8
  config.finetune.image_size, config.eval_batch_size = 32, 16
  mesh = sharding.make_mesh()
  data = finetuning.EvalData(config.finetune.data, tiny_data_dir, config.image_cache)
  programs = finetuning.Programs(config.model, config.finetune, len(data.class_names),
                                 config.eval_batch_size, mesh)
  writer = loop.MetricWriter(tmp_path)
  results = [finetuning.finetune_job(config, programs, 'finetune', 'scratch', 1.0, seed, None,
                                     data, mesh, writer, tmp_path) for seed in (0, 1)]
  assert programs.step._cache_size() == 1
  assert all(r['best_step'] in (2, 4) for r in results)  # selection did run
  # a result.json torn by a kill (before it was written atomically) is evaluated again,
  # from the job's last checkpoint: the same result
  (tmp_path / 'finetune' / 'scratch' / '1' / 'seed0' / 'result.json').write_text('{"prot')
  again = finetuning.finetune_job(config, programs, 'finetune', 'scratch', 1.0, 0, None, data,
                                  mesh, writer, tmp_path)
  writer.close()
  assert again == results[0]


def test_host_augmentation_matches_the_device_path_at_strength_zero(tmp_path, tiny_data_dir,
                                                                    monkeypatch):
  # at strength 0 both paths cut the plain resize (32 -> 24 px, antialiased): with float32
  # host views the runs agree to float rounding; with the default uint8 views (rounded
  # to 1/255) only roughly
  import functools
  from cxr_jax.data import host_augment
  config = tiny_config(tiny_data_dir)
  stage = config.pretrain.stages[0]
  stage.steps, stage.strength, stage.image_size = 3, schedule('constant', 0.0), schedule('constant', 24)
  mesh = sharding.make_mesh()
  two_views = host_augment.TwoViews

  def losses(where, dtype='uint8'):
    config.augment_on = where
    monkeypatch.setattr(host_augment, 'TwoViews', functools.partial(two_views, dtype=dtype))
    workdir = tmp_path / f'{where}_{dtype}'
    workdir.mkdir()
    writer = loop.MetricWriter(workdir)
    loop.run_job(pretraining.pretrain_job(config, 0, None, mesh, workdir, tiny_data_dir), writer)
    writer.close()
    rows = _rows(workdir, 'pretrain/low_res')
    return np.asarray([rows[step]['train/loss'] for step in (1, 2, 3)])

  device, exact, rounded = losses('device'), losses('host', 'float32'), losses('host', 'uint8')
  # step 1's loss is computed before any update: the same views give the same loss.
  # Later steps drift a little (Adam's first updates are ~lr * sign(grad), so even
  # rounding-level gradient differences move some weights by ~lr)
  np.testing.assert_allclose(exact[0], device[0], rtol=1e-5)
  np.testing.assert_allclose(exact, device, rtol=5e-3)
  assert np.all(np.isfinite(rounded)) and not np.array_equal(rounded, device)
  np.testing.assert_allclose(rounded, device, rtol=2e-2)


def test_a_stage_or_classifier_of_another_network_is_refused_naming_the_leaf(tmp_path,
                                                                            tiny_data_dir):
  config = tiny_config(tiny_data_dir)
  mesh = sharding.make_mesh()
  first = pretraining.pretrain_job(config, 0, None, mesh, tmp_path, tiny_data_dir).init_state()
  config.model.width = 0.25  # the next stage's network is wider: no silent random weights
  with pytest.raises(ValueError, match=r"stages\[1\]: the previous stage's network does not "
                                       r'fit the model: encoder/.* is \(.*\), the model has'):
    pretraining.pretrain_job(config, 1, first, mesh, tmp_path, tiny_data_dir).init_state()
  programs = finetuning.Programs(config.model, config.finetune, 4, 16, mesh)
  with pytest.raises(ValueError, match='the curricular encoder .*does not fit the model'):
    finetuning.classifier_variables(programs.model, 0, 0, 1, state_lib.encoder_variables(first),
                                    'curricular')


def test_frozen_probes_of_a_fixed_encoder_on_all_labels_run_one_seed():
  assert list(finetuning.seeds('finetune', 'curricular', 1.0, 3)) == [0, 1, 2]
  assert list(finetuning.seeds('linear', 'curricular', 1.0, 3)) == [0]
  assert list(finetuning.seeds('knn', 'imagenet', 1.0, 3)) == [0]
  assert list(finetuning.seeds('knn', 'curricular', 0.25, 3)) == [0, 1, 2]  # subsets differ
  assert list(finetuning.seeds('linear', 'scratch', 1.0, 3)) == [0, 1, 2]  # random encoders


def _checkpoint_leaves(workdir):
  """{checkpoint folder: its state's float leaves} of every pretraining checkpoint."""
  import warnings
  import orbax.checkpoint as ocp
  out = {}
  for step_dir in sorted(workdir.glob('pretrain/*/ckpt/*')):
    if step_dir.name.isdigit():
      with warnings.catch_warnings():  # no target: shardings read from the checkpoint
        warnings.simplefilter('ignore', UserWarning)
        tree = ocp.PyTreeCheckpointer().restore(step_dir / 'state')
      out[str(step_dir.relative_to(workdir))] = [
          np.asarray(x) for x in jax.tree_util.tree_leaves(tree)
          if np.issubdtype(np.asarray(x).dtype, np.floating)]
  return out


def test_a_diverged_stage_stops_and_resumes_with_a_lower_learning_rate(tmp_path, tiny_data_dir):
  """lr 1e30: the first update (after the warm-up's zero) makes the weights huge but
  finite, the next loss is NaN. Nothing non-finite is saved, the checkpoint that diverged
  is moved aside, and the flags the error gives (with a sane learning rate) finish the run."""
  from cxr_jax import experiment
  config = tiny_config(tiny_data_dir)
  config.pretrain.stages = config.pretrain.stages[:1]
  config.checkpoint_every, config.log_every = 2, 3
  config.finetune.inits, config.finetune.protocols = 'curricular', 'linear'
  config.eval_batch_size, config.finetune.image_size = 16, 32
  config.pretrain.optimizer.lr = 1e30
  with pytest.raises(loop.NonFiniteError) as error:
    experiment.run(config, tmp_path)
  message = str(error.value)
  assert 'pretrain/low_res: training diverged at step 3: the loss was nan.' in message
  assert 'The checkpoint of step 2, from which step 3 diverged, was moved aside' in message
  assert ('re-run the same command with --config.pretrain.optimizer.lr=1e+29 '
          '--config.allow_changes=pretrain.optimizer.lr') in message
  assert [p.name[:12] for p in (tmp_path / 'pretrain/low_res/ckpt').iterdir()] == ['2.nonfinite-']
  assert not (tmp_path / 'report.md').exists()

  config.pretrain.optimizer.lr, config.allow_changes = 1e-3, 'pretrain.optimizer.lr'
  [result] = experiment.run(config, tmp_path)
  assert 0.0 <= result['test']['auroc'] <= 1.0 and (tmp_path / 'report.md').exists()
  leaves = _checkpoint_leaves(tmp_path)
  assert sorted(leaves) == ['pretrain/low_res/ckpt/4', 'pretrain/low_res/ckpt/6']
  assert all(np.isfinite(x).all() for xs in leaves.values() for x in xs)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['pretrain']['optimizer']['lr'] == 1e-3
  assert saved['amendments'][0]['changes'] == {'pretrain.optimizer.lr': [1e30, 1e-3]}


def test_a_bfloat16_run_goes_end_to_end_and_saves_float32_arrays(tmp_path, tiny_data_dir):
  """model.dtype='bfloat16' pretrains, fine-tunes, explains and reports; predictions and
  attention maps are saved as float32 (np.savez would store bfloat16 as raw bytes)."""
  from cxr_jax import experiment
  config = tiny_config(tiny_data_dir)
  config.model.dtype = 'bfloat16'
  config.pretrain.stages = config.pretrain.stages[:1]
  config.pretrain.stages[0].steps = 2
  config.finetune.inits, config.finetune.num_seeds = 'curricular', 1
  config.finetune.steps, config.finetune.eval_every, config.finetune.batch_size = 2, 2, 8
  config.finetune.image_size, config.eval_batch_size = 32, 16
  config.explain.enabled, config.explain.num_overlays = True, 1
  [result] = experiment.run(config, tmp_path)
  cell = tmp_path / 'finetune' / 'curricular' / '1' / 'seed0'
  with np.load(cell / 'test_predictions.npz') as f:
    assert f['probs'].dtype == np.float32
    np.testing.assert_allclose(f['probs'].sum(-1), 1.0, rtol=1e-5)
  with np.load(cell / 'attention.npz') as f:
    assert not [k for k in f.files if f[k].dtype.kind == 'V']  # no raw bytes
    assert f['overlay_cam_pred'].dtype == np.float32
  assert 0.0 <= result['test']['auroc'] <= 1.0
  report = (tmp_path / 'report.md').read_text()
  assert '| curricular | 1 | 1 |' in report


def test_matched_steps_give_the_single_stage_the_curriculum_images():
  config = default.get_config()  # 120 x 128 + 150 x 128 images -> 270 steps at 128
  assert regimes.matched_steps(config.pretrain) == 270
  config.pretrain.stages[0].batch_size, config.pretrain.stages[1].batch_size = 256, 64
  assert regimes.matched_steps(config.pretrain) == (120 * 256 + 150 * 64) // 64
  config.pretrain.ssl_stage = 'low_res'  # the target stage at 256: 40_320 / 256 = 157.5
  assert regimes.matched_steps(config.pretrain) == 158  # whole steps, at least as many
  matched = regimes.matched_config(config)
  assert matched.pretrain.stages[0].steps == 158 and config.pretrain.stages[0].steps == 120


def test_the_ssl_matched_regime_runs_its_stage_alone_in_its_own_folder(tmp_path, tiny_data_dir,
                                                                      monkeypatch):
  config = tiny_config(tiny_data_dir)
  config.pretrain.stages[0].steps, config.pretrain.stages[1].steps = 4, 2
  config.finetune.inits = 'scratch,ssl,ssl_matched'
  configuration.validate(config)
  jobs = []

  def plan_only(config, mesh, writer, workdir, data_dir, stage_indices=None, folder='pretrain',
                imagenet=None):  # the jobs the regime would run, without training them
    jobs.extend(pretraining.pretrain_job(config, i, None, mesh, workdir, data_dir, folder)
                for i in stage_indices)
  monkeypatch.setattr(pretraining, 'run_curriculum', plan_only)
  experiment.pretrained_encoders(config, ['scratch', 'ssl', 'ssl_matched'], sharding.make_mesh(),
                                 None, tmp_path, tiny_data_dir)
  assert [(j.name, j.num_steps) for j in jobs] == [('pretrain_ssl/full_res', 2),
                                                   ('pretrain_ssl_matched/full_res', 6)]
  assert jobs[1].directory == tmp_path / 'pretrain_ssl_matched' / 'full_res'
  assert config.pretrain.stages[1].steps == 2  # the run's own config is unchanged


@pytest.mark.parametrize('augment_on', ['device', 'host'])
def test_patient_positives_on_one_image_patients_give_todays_batches(tiny_data_dir, augment_on):
  config = tiny_config(tiny_data_dir)  # the tiny phantom: one image per patient
  config.augment_on = augment_on

  def batches(positives):
    config.pretrain.stages[0].positives = positives
    job = pretraining.pretrain_job(config, 0, None, sharding.make_mesh(), tiny_data_dir,
                                   tiny_data_dir)
    it = iter(job.loader)
    return [next(it) for _ in range(3)]
  for paired, today in zip(batches('patient'), batches('image')):
    if augment_on == 'device':
      assert set(paired) == {'image', 'image2'}
      np.testing.assert_array_equal(paired['image2'], paired['image'])
    for key in today:
      np.testing.assert_array_equal(paired[key], today[key])
