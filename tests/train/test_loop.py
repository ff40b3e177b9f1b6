"""The training loop: checkpoint round trip and exact resume (state, RNG and data order);
the faults of long runs: a non-finite step is never saved, an unreadable checkpoint is
moved aside, a full disk stops with one line, a rotated metrics.jsonl."""
import errno
import logging
import os
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import common
from cxr_jax.data import pipeline
from cxr_jax.train import loop, sharding
from tests.conftest import TINY_PHANTOM


@pytest.fixture(scope='module')
def setup(tiny_data_dir):
  builder = pipeline.get_builder(common.data('phantom', 'unlabeled', TINY_PHANTOM), tiny_data_dir)
  source = pipeline.get_source(builder, 'unlabeled')
  mesh = sharding.make_mesh()
  tx = optax.sgd(0.1, momentum=0.9)

  def make_step(poison_at=None):
    def step(state, batch):
      # the update depends on the batch content and on the RNG, so a resume that replays
      # other data or another key ends with other parameters
      noise = jax.random.normal(jax.random.fold_in(state.rng, state.step), (4,))
      target = jnp.mean(batch['image'].astype(jnp.float32) / 255.0) + 0.01 * noise
      loss_fn = lambda p: jnp.sum((p['w'] - target) ** 2)
      loss, grads = jax.value_and_grad(loss_fn)(state.params)
      updates, opt_state = tx.update(grads, state.opt_state)
      params = optax.apply_updates(state.params, updates)
      if poison_at is not None:  # the weights become NaN at step `poison_at`, the loss later
        params = {'w': jnp.where(state.step + 1 == poison_at, jnp.nan, params['w'])}
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {'loss': loss}
    return jax.jit(loop.checked(step))
  steps = {None: make_step()}

  def init_state():
    params = {'w': jnp.zeros((4,))}
    return sharding.replicate(loop.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params),
        extra={}, rng=loop.fresh_rng(0)), mesh)

  def job(directory, num_steps, poison_at=None, **kw):
    if poison_at not in steps:
      steps[poison_at] = make_step(poison_at)
    kw = dict(dict(checkpoint_every=3, log_every=1), **kw)
    return loop.Job(name='test', directory=directory, num_steps=num_steps, init_state=init_state,
                    train_step=steps[poison_at], mesh=mesh,
                    loader=pipeline.make_loader(source, batch_size=8, seed=0, fields=('image',)),
                    **kw)
  return job


def _run(job, workdir):
  writer = loop.MetricWriter(workdir)
  try:
    return loop.run_job(job, writer)
  finally:
    writer.close()


def _equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _saved_states(job):
  """{step: the state of each checkpoint under the job's folder}."""
  mgr = loop.checkpoint_manager(job.directory)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, job.init_state())
  restore = lambda s: mgr.restore(s, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))['state']
  out = {s: restore(s) for s in mgr.all_steps()}
  mgr.close()
  return out


def test_resume_equals_uninterrupted(setup, tmp_path):
  writer = loop.MetricWriter(tmp_path)
  straight = loop.run_job(setup(tmp_path / 'a', 11), writer)   # crosses an epoch (8 batches)
  loop.run_job(setup(tmp_path / 'b', 5), writer)               # checkpoints at 3 and 5
  resumed = loop.run_job(setup(tmp_path / 'b', 11), writer)
  writer.close()
  assert int(resumed.step) == 11
  np.testing.assert_allclose(resumed.params['w'], straight.params['w'], rtol=0, atol=0)
  np.testing.assert_allclose(resumed.opt_state[0].trace['w'], straight.opt_state[0].trace['w'])


def test_checkpoint_round_trip(setup, tmp_path):
  writer = loop.MetricWriter(tmp_path)
  state = loop.run_job(setup(tmp_path / 'c', 4), writer)
  mgr = loop.checkpoint_manager(tmp_path / 'c')
  assert mgr.all_steps() == [3, 4]  # every checkpoint_every=3 steps, and at the end
  mgr.close()
  # a finished job's run_job returns the state restored from its last checkpoint, untrained
  again = setup(tmp_path / 'c', 4)
  again.train_step = lambda s, b: pytest.fail('a finished job was trained again')
  restored = loop.run_job(again, writer)
  writer.close()
  assert int(restored.step) == 4
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_finished_job_is_not_retrained(setup, tmp_path):
  writer = loop.MetricWriter(tmp_path)
  first = loop.run_job(setup(tmp_path / 'd', 3), writer)
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  again = loop.run_job(setup(tmp_path / 'd', 3), writer)
  writer.close()
  assert (tmp_path / 'metrics.jsonl').read_text().splitlines() == lines  # no new step logged
  np.testing.assert_array_equal(again.params['w'], first.params['w'])


def test_nan_loss_stops_with_a_named_error(setup, tmp_path):
  job = setup(tmp_path / 'e', 3)
  inner = job.train_step
  nan_loss = lambda out: (out[0], dict(out[1], loss=out[1]['loss'] * jnp.nan))
  job.train_step = lambda s, b: nan_loss(inner(s, b))
  with pytest.raises(loop.NonFiniteError, match='test: training diverged at step 1: the loss was nan'):
    _run(job, tmp_path)


@pytest.mark.parametrize('poison_at, kept', [(2, []), (5, [2])])
def test_a_non_finite_state_is_never_saved_and_a_lower_lr_resumes(setup, tmp_path, poison_at, kept):
  # checked at logs (every 3 steps) and saves (every 2): the NaN of step 2 is found before
  # the save of step 2; that of step 5 at the log of step 6, after the save of step 4, and
  # the checkpoint of step 4, the state step 5 diverged from, is moved aside
  job = setup(tmp_path / 'run', 8, poison_at=poison_at, log_every=3, checkpoint_every=2,
              advice='To continue, re-run with --config.x.lr=0.1 --config.allow_changes=x.lr')
  with pytest.raises(loop.NonFiniteError) as error:
    _run(job, tmp_path)
  message = str(error.value)
  assert f'test: training diverged at step {poison_at}: its update made the weights or ' \
         'optimizer state non-finite' in message
  assert '--config.x.lr=0.1 --config.allow_changes=x.lr' in message
  ckpt = loop.checkpoint_dir(tmp_path / 'run')
  if kept:
    assert f'moved aside to {ckpt}/4.nonfinite-' in message
    assert f'The last finite checkpoint, step 2, is kept under {ckpt}' in message
  else:
    assert 'No checkpoint is left: the job starts afresh when re-run' in message
  saved = _saved_states(job)
  assert sorted(saved) == kept
  for state in saved.values():
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(
        (state.params, state.opt_state)))
  # the way forward (here: a step that does not diverge) resumes from the last finite
  # checkpoint and ends where an uninterrupted run does
  resumed = _run(setup(tmp_path / 'run', 8), tmp_path)
  _equal(resumed, _run(setup(tmp_path / 'straight', 8), tmp_path))


def _metadata(job, step):
  (loop.checkpoint_dir(job.directory) / str(step) / 'state' / '_METADATA').write_text('')


def _truncate(job, step):
  for f in (loop.checkpoint_dir(job.directory) / str(step) / 'state' / 'd').iterdir():
    os.truncate(f, f.stat().st_size // 2)


def _nan_weights(job, step):
  """Rewrites the checkpoint with NaN weights (as this loop, before it checked, could save)."""
  state = _saved_states(job)[step]
  mgr = loop.checkpoint_manager(job.directory)
  mgr.delete(step)
  mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state.replace(params={'w': state.params['w'] * jnp.nan})),
      data=grain.checkpoint.CheckpointSave(iter(job.loader))), force=True)
  mgr.wait_until_finished()
  mgr.close()


@pytest.mark.parametrize('damage, why', [(_metadata, 'corrupt'), (_truncate, 'corrupt'),
                                         (_nan_weights, 'nonfinite')])
def test_an_unusable_latest_checkpoint_is_moved_aside(setup, tmp_path, caplog, damage, why):
  _run(setup(tmp_path / 'run', 5), tmp_path)      # checkpoints at 3 and 5
  damage(setup(tmp_path / 'run', 5), 5)
  ckpt = loop.checkpoint_dir(tmp_path / 'run')
  with caplog.at_level(logging.WARNING, 'cxr_jax'):
    resumed = _run(setup(tmp_path / 'run', 11), tmp_path)
  [aside] = [p.name for p in ckpt.iterdir() if p.name.startswith('5.')]
  assert aside.startswith(f'5.{why}-')
  assert f'moved the checkpoint of step 5 aside to {ckpt / aside}' in caplog.text
  assert 'resumed from the checkpoint at step 3' in caplog.text
  _equal(resumed, _run(setup(tmp_path / 'straight', 11), tmp_path))


def test_no_readable_checkpoint_starts_afresh(setup, tmp_path, caplog):
  _run(setup(tmp_path / 'run', 5), tmp_path)
  ckpt = loop.checkpoint_dir(tmp_path / 'run')
  for step in (3, 5):
    _metadata(setup(tmp_path / 'run', 5), step)
  with caplog.at_level(logging.WARNING, 'cxr_jax'):
    again = _run(setup(tmp_path / 'run', 5), tmp_path)
  assert 'no usable checkpoint left: starting this job afresh' in caplog.text
  assert sorted(p.name.split('.')[0] for p in ckpt.iterdir()) == ['3', '3', '5', '5']
  _equal(again, _run(setup(tmp_path / 'straight', 5), tmp_path))


def test_a_checkpoint_of_another_model_is_an_error_and_is_kept(setup, tmp_path):
  _run(setup(tmp_path / 'run', 3), tmp_path)
  job = setup(tmp_path / 'run', 5)
  inner = job.init_state
  job.init_state = lambda: (lambda s: s.replace(params={'w': jnp.zeros((5,))}))(inner())
  with pytest.raises(loop.workdir_lib.RunError,
                     match=r"test: the checkpoint of step 3 .* does not fit this job's state"):
    _run(job, tmp_path)
  assert loop.saved_steps(tmp_path / 'run') == [3]


def test_a_full_disk_stops_with_one_line_and_the_next_run_resumes(setup, tmp_path, monkeypatch,
                                                                  caplog):
  # the data item's writer fails in Orbax's background save of step 6, as a full disk would
  save = grain.checkpoint.CheckpointHandler.save

  def full(self, directory, *args, **kwargs):
    if '/6.orbax-checkpoint-tmp' in str(directory):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return save(self, directory, *args, **kwargs)
  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, 'save', full)
  with caplog.at_level(logging.ERROR):
    with pytest.raises(loop.workdir_lib.DiskFullError) as error:
      _run(setup(tmp_path / 'run', 11), tmp_path)
  message = str(error.value)
  assert '\n' not in message
  assert (f'test: no space left on device for a checkpoint under '
          f'{loop.checkpoint_dir(tmp_path / "run")} (') in message
  assert ' free there); free some space and re-run the same command to resume from step 3' \
      in message
  assert not [r for r in caplog.records if r.exc_info]  # Orbax's tracebacks are not printed
  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, 'save', save)
  resumed = _run(setup(tmp_path / 'run', 11), tmp_path)
  _equal(resumed, _run(setup(tmp_path / 'straight', 11), tmp_path))


def test_metrics_survive_a_removed_or_rotated_file_and_a_torn_line(setup, tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "job": "killed", "train/lo')  # a line torn by a kill
  writer = loop.MetricWriter(tmp_path)
  writer.write('a', 1, {'x': 1.0})
  path.rename(tmp_path / 'metrics.jsonl.1')  # rotated
  writer.write('a', 2, {'x': 2.0})
  path.unlink()                              # removed
  writer.write('a', 3, {'x': 3.0})
  writer.close()
  assert (tmp_path / 'metrics.jsonl.1').read_text().splitlines() == [
      '{"step": 1, "job": "killed", "train/lo', '{"step": 1, "job": "a", "x": 1.0}']
  assert path.read_text() == '{"step": 3, "job": "a", "x": 3.0}\n'


def test_a_full_disk_under_metrics_jsonl_is_one_line(tmp_path):
  writer = loop.MetricWriter(tmp_path)
  writer._path = Path('/dev/full')  # every write fails with ENOSPC
  with pytest.raises(loop.workdir_lib.DiskFullError,
                     match=r'^a: no space left on device for a line of /dev/full \(.* free '
                           r'there\); free some space and re-run the same command to resume\.$'):
    writer.write('a', 1, {'x': 1.0})
  writer.close()
