"""python -m cxr_jax.cli.embed: a finished stage's embeddings of a split equal the features of
that stage's encoder; the run's embeddings/<init>.npz (config.explain.umap). The same
finished run's time account (timing.json) and its stage's compute.json."""
import datetime
import json
import sys
import time

import numpy as np
import pytest

from cxr_jax import experiment, pretraining, ssl
from cxr_jax.cli import embed
from cxr_jax.data import pipeline, schema
from cxr_jax.train import inference, sharding, timing
from cxr_jax.train import state as state_lib
from tests.test_experiment import tiny_config


class _NoWriter:
  """run_job's metric writer for a finished job: it never writes (nothing is trained)."""

  def write(self, *args, **kwargs):
    del args, kwargs

  def close(self):
    pass


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, tiny_data_dir):
  """A tiny finished run: one 6-step stage, 4-step fine-tuning of scratch and curricular,
  the regimes' test embeddings saved."""
  workdir = tmp_path_factory.mktemp('embed_run')
  config = tiny_config(tiny_data_dir)
  config.pretrain.stages = config.pretrain.stages[:1]  # 6 steps, as tests/test_experiment.py's
  config.finetune.inits, config.finetune.protocols = 'scratch,curricular', 'finetune'
  config.finetune.steps, config.finetune.eval_every, config.finetune.batch_size = 4, 2, 8
  config.finetune.num_seeds, config.finetune.image_size, config.eval_batch_size = 1, 32, 16
  config.explain.umap = True
  with pytest.MonkeyPatch.context() as patch:  # the UMAP fit (~20 s): tests/test_report.py
    patch.setitem(sys.modules, 'umap', None)
    experiment.run(config, workdir)
  return config, workdir


def test_embed_cli_equals_the_stage_encoders_features(finished_run, tiny_data_dir, tmp_path,
                                                      capsys):
  config, workdir = finished_run
  out = tmp_path / 'emb.npz'
  embed.main([f'--workdir={workdir}', '--stage=low_res', '--data=phantom:test',
              f'--out={out}'])
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['embeddings'][0] == 32
  with np.load(out) as f:
    saved = dict(f)
  # the reference: the curriculum's last state (restored, not retrained), its encoder's
  # features at the stage's view size
  mesh = sharding.make_mesh()
  state = pretraining.run_curriculum(config, mesh, _NoWriter(), workdir, tiny_data_dir)
  assert int(state.step) == 6
  model = ssl.get_method('simclr').build_model(state_lib.encoder_from_config(config.model),
                                               config.pretrain.simclr)
  builder = pipeline.get_builder(config.finetune.data, tiny_data_dir)
  test = pipeline.read_all(pipeline.get_source(builder, 'test'),
                           ('image', 'label', 'id', 'patient_id'))
  expected = inference.make_features(model, 32, mesh, 16)(
      {'params': state.params, 'batch_stats': state.batch_stats}, test['image'])
  assert saved['embeddings'].dtype == np.float32 and saved['embeddings'].shape == expected.shape
  np.testing.assert_array_equal(saved['embeddings'], expected)
  np.testing.assert_array_equal(saved['labels'], test['label'])
  np.testing.assert_array_equal(saved['ids'], test['id'])
  np.testing.assert_array_equal(saved['patient_ids'], test['patient_id'])
  # the run's own embeddings of the curricular regime: the same encoder (the classifier's,
  # at finetune.image_size = 32), the same test images
  with np.load(workdir / 'embeddings' / 'curricular.npz') as f:
    np.testing.assert_allclose(f['embeddings'], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(f['labels'], test['label'])
    assert list(f['class_names']) == list(schema.class_names(builder))
  with np.load(workdir / 'embeddings' / 'scratch.npz') as f:  # random weights: others
    assert f['embeddings'].shape == expected.shape
    assert not np.allclose(f['embeddings'], expected)
  assert ('UMAP of the test embeddings (scratch, curricular): not drawn, umap-learn is not '
          'installed') in (workdir / 'report.md').read_text()


def test_embed_cli_of_a_fine_tuned_job_uses_its_best_weights(finished_run, tiny_data_dir,
                                                            tmp_path, monkeypatch):
  import warnings
  import orbax.checkpoint as ocp
  from cxr_jax.models import heads
  config, workdir = finished_run
  out = tmp_path / 'job.npz'
  opened = []  # the splits embed opens: only --data's, never the labelled train/val
  get_source = pipeline.get_source
  monkeypatch.setattr(pipeline, 'get_source',
                      lambda builder, split, *a, **k: opened.append(split) or
                      get_source(builder, split, *a, **k))
  embed.main([f'--workdir={workdir}', '--job=finetune/curricular/1/seed0',
              '--data=phantom:test', f'--out={out}'])
  assert opened == ['test']
  monkeypatch.undo()
  # the reference: the best weights as the checkpoint stores them, read without a target
  cell = workdir / 'finetune' / 'curricular' / '1' / 'seed0'
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UserWarning)
    tree = ocp.PyTreeCheckpointer().restore(cell / 'ckpt' / '4' / 'state')
  best = {'params': tree['extra']['best_params'],
          'batch_stats': tree['extra']['best_batch_stats']}
  builder = pipeline.get_builder(config.finetune.data, tiny_data_dir)
  images = pipeline.read_all(pipeline.get_source(builder, 'test'), ('image',))['image']
  model = heads.ClassifierModel(encoder=state_lib.encoder_from_config(config.model),
                                num_classes=len(schema.class_names(builder)))
  expected = inference.make_features(model, 32, sharding.make_mesh(), 16,
                                     encoder_only=True)(best, images)
  with np.load(out) as f:
    np.testing.assert_array_equal(f['embeddings'], expected)
  with np.load(workdir / 'embeddings' / 'curricular.npz') as f:  # fine-tuning moved them
    assert not np.allclose(f['embeddings'], expected)


def test_embed_refuses_an_unknown_or_unfinished_stage(finished_run, tmp_path):
  _, workdir = finished_run
  with pytest.raises(SystemExit, match="'nope' is not a stage"):
    embed.main([f'--workdir={workdir}', '--stage=nope', '--data=phantom:test',
                f'--out={tmp_path / "e.npz"}'])
  with pytest.raises(SystemExit, match='pretrain_ssl/low_res is not finished'):
    embed.main([f'--workdir={workdir}', '--stage=low_res', '--folder=pretrain_ssl',
                '--data=phantom:test', f'--out={tmp_path / "e.npz"}'])


def test_a_workdir_from_before_the_umap_switch_resumes_with_it_off(tmp_path):
  from configs import default
  from cxr_jax import configuration
  config = default.get_config()
  saved = json.loads(config.to_json_best_effort())
  del saved['explain']['umap'], saved['allow_changes']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  configuration.check_or_write_config(config, tmp_path)  # accepted, config.json unchanged
  assert json.loads((tmp_path / 'config.json').read_text()) == saved
  config.explain.umap = True
  with pytest.raises(ValueError, match="explain.umap: '<absent>' -> True"):
    configuration.check_or_write_config(config, tmp_path)


def test_the_run_accounts_for_its_wall_time_by_job_and_phase(finished_run):
  """timing.json (cxr_jax/train/timing.py): the phases are non-negative, add up to the
  session's wall time, which is no more than the time since it started, and leave little
  to 'other'."""
  _, workdir = finished_run
  [session] = json.loads((workdir / 'timing.json').read_text())['sessions']
  started = datetime.datetime.fromisoformat(session['started']).timestamp()
  assert 0 < session['wall_s'] <= time.time() - started + 1.0  # its clock: whole seconds
  phases = session['phases']
  assert set(phases) == set(timing.PHASES)
  assert all(v >= 0 for job in session['jobs'].values() for v in job.values())
  assert sum(phases.values()) == pytest.approx(session['wall_s'], rel=1e-3)
  assert phases['other'] < 0.25 * session['wall_s']
  assert all(phases[p] > 0 for p in ('data', 'compile', 'train', 'eval', 'checkpoint', 'report'))
  jobs = session['jobs']
  assert {'pretrain/low_res', 'finetune/scratch/1/seed0', 'finetune/curricular/1/seed0'} <= set(jobs)
  assert jobs['pretrain/low_res']['train'] > 0 and jobs['pretrain/low_res']['compile'] > 0


def test_the_run_records_its_stage_s_compute_and_reports_both_accounts(finished_run):
  _, workdir = finished_run
  record = json.loads((workdir / 'pretrain/low_res/compute.json').read_text())
  assert record['steps'] == 6 and record['images'] == 6 * 16 and record['views'] == 2 * 6 * 16
  assert record['steps_per_size'] == {'32': 6}
  assert record['flops_per_step']['32'] > 0
  assert record['flops'] == pytest.approx(6 * record['flops_per_step']['32'])
  # the stage's time in the account when the record was written (after the stage)
  total = json.loads((workdir / 'timing.json').read_text())['total']
  assert 0 < record['wall_s'] == pytest.approx(
      sum(total['jobs']['pretrain/low_res'].values()), rel=1e-3)
  report = (workdir / 'report.md').read_text()
  assert '## Time by phase' in report and '| `pretrain/low_res` |' in report
  assert '| **run** |' in report
  assert '## Pretraining compute per regime' in report
  assert '| curricular | low_res | 6 | 96 | 192 |' in report
  assert 'Unequal compute' not in report  # one pretrained regime
