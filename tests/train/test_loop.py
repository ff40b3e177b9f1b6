"""The training loop: checkpoint round trip and exact resume (state, RNG and data order)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
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

  @jax.jit
  def step(state, batch):
    # the update depends on the batch content and on the RNG, so a resume that replays
    # other data or another key ends with other parameters
    noise = jax.random.normal(jax.random.fold_in(state.rng, state.step), (4,))
    target = jnp.mean(batch['image'].astype(jnp.float32) / 255.0) + 0.01 * noise
    loss_fn = lambda p: jnp.sum((p['w'] - target) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), {'loss': loss}

  def init_state():
    params = {'w': jnp.zeros((4,))}
    return sharding.replicate(loop.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params),
        extra={}, rng=loop.fresh_rng(0)), mesh)

  def job(directory, num_steps):
    return loop.Job(name='test', directory=directory, num_steps=num_steps, init_state=init_state,
                    train_step=step, mesh=mesh, checkpoint_every=3, log_every=1,
                    loader=pipeline.make_loader(source, batch_size=8, seed=0, fields=('image',)))
  return job


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
  job.train_step = lambda s, b: (lambda out: (out[0], {'loss': out[1]['loss'] * jnp.nan}))(inner(s, b))
  writer = loop.MetricWriter(tmp_path)
  with pytest.raises(FloatingPointError, match=r'test: the loss became nan at step 1'):
    loop.run_job(job, writer)
  writer.close()
