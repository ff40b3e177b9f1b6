"""Tests for cxr_jax.ssl.moco: InfoNCE (MoCo eq. 1), the FIFO queue, 1 vs 4 devices."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.ssl import moco
from tests.ssl.test_byol import LinearModel, linear_setup  # the stand-in model
from tests.ssl.test_simclr import run_sharded_check  # the one 4-device script


def numpy_infonce(q, k, queue, tau):
  """MoCo eq. 1 per query: -log exp(q.k+/t) / (exp(q.k+/t) + sum_neg exp(q.n/t)), with
  unit-normalised vectors; negatives = the queue, or the batch's other keys if empty."""
  unit = lambda v: np.asarray(v, np.float64) / np.linalg.norm(v)
  total = 0.0
  for i in range(len(q)):
    qi = unit(q[i])
    positive = qi @ unit(k[i])
    if len(queue):
      negatives = [qi @ unit(n) for n in queue]
    else:
      negatives = [qi @ unit(k[j]) for j in range(len(k)) if j != i]
    denominator = math.exp(positive / tau) + sum(math.exp(s / tau) for s in negatives)
    total += -math.log(math.exp(positive / tau) / denominator)
  return total / len(q)


@pytest.mark.parametrize('batch,dim,size', [(1, 4, 0), (1, 4, 5), (3, 8, 0), (6, 5, 7),
                                            (4, 16, 32)])
@pytest.mark.parametrize('tau', [0.2, 1.0])
def test_infonce_matches_numpy(batch, dim, size, tau):
  rng = np.random.default_rng(batch * 1000 + dim * 10 + size)
  q = rng.normal(size=(batch, dim)).astype(np.float32)
  k = rng.normal(size=(batch, dim)).astype(np.float32)
  queue = rng.normal(size=(size, dim)).astype(np.float32)
  got = float(moco.infonce(q, k, queue, tau))
  np.testing.assert_allclose(got, numpy_infonce(q, k, queue, tau), rtol=1e-5, atol=1e-6)


def test_infonce_hand_cases():
  e1, e2 = np.eye(2, dtype=np.float32)
  # one query e1, its key e1 (cos 1), one queued negative e2 (cos 0), tau = 1:
  # -log(e / (e + 1)) = log(1 + 1/e)
  expected = math.log(1.0 + math.exp(-1.0))
  got = moco.infonce(e1[None], e1[None], e2[None], 1.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  # in-batch (K = 0): queries e1, e2 with keys e1, e2: each sees the other key at cos 0
  got = moco.infonce(np.stack([e1, e2]), np.stack([e1, e2]), np.zeros((0, 2), np.float32), 1.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  # inputs are L2-normalised inside: scaling changes nothing
  got = moco.infonce(5 * e1[None], 0.1 * e1[None], 3 * e2[None], 1.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  # one query, no negatives at all: the loss is -log 1 = 0
  assert abs(float(moco.infonce(e1[None], e2[None], np.zeros((0, 2), np.float32), 0.2))) < 1e-7


def test_enqueue_is_fifo_and_wraps():
  size, dim, batch = 5, 2, 2
  queue = jnp.zeros((size, dim))
  ptr = jnp.zeros((), jnp.int32)
  fifo = []  # the reference: the last `size` keys, oldest first
  for step in range(4):
    keys = np.arange(batch * dim, dtype=np.float32).reshape(batch, dim) + 100 * (step + 1)
    queue, ptr = moco.enqueue(queue, keys, ptr)
    fifo = (fifo + list(keys))[-size:]
    assert int(ptr) == (step + 1) * batch % size
    assert queue.shape == (size, dim)
    # reading the queue from the pointer on gives the keys oldest first once it is full
    if (step + 1) * batch >= size:
      order = [(int(ptr) + j) % size for j in range(size)]
      np.testing.assert_array_equal(np.asarray(queue)[order], np.stack(fifo))
  # hand check: 4 enqueues of 2 keys (first coords 100k, 100k + 2) into 5 slots fill
  # slots 0,1 | 2,3 | 4,0 | 1,2, so slot 3 still holds the second key of step 2
  np.testing.assert_array_equal(np.asarray(queue)[:, 0], [302, 400, 402, 202, 300])


def test_enqueue_rejects_a_batch_larger_than_the_queue():
  with pytest.raises(ValueError, match='at least one global batch'):
    moco.enqueue(jnp.zeros((2, 3)), jnp.ones((3, 3)), jnp.zeros((), jnp.int32))


def test_update_extra_enqueues_the_keys_and_moves_the_target():
  cfg = moco.DEFAULTS.copy_and_resolve_references()
  cfg.update(queue_size=6, proj_dim=3, ema_base=0.9)
  params = {'encoder': {'w': jnp.ones((2, 3))}, 'projector': {'b': jnp.zeros((3,))}}
  extra = moco.init_extra(params, {}, cfg)
  assert extra['queue'].shape == (6, 3) and int(extra['queue_ptr']) == 0
  np.testing.assert_allclose(np.linalg.norm(extra['queue'], axis=1), 1.0, rtol=1e-6)
  online = jax.tree_util.tree_map(lambda p: p + 1.0, params)
  keys = jnp.arange(12.0).reshape(4, 3)
  new = moco.update_extra(extra, online, {}, {'progress': 0.5}, cfg,
                          {'features': jnp.zeros((4, 2)), 'keys': keys})
  np.testing.assert_array_equal(new['queue'][:4], keys)
  np.testing.assert_array_equal(new['queue'][4:], extra['queue'][4:])
  assert int(new['queue_ptr']) == 4
  # m = 0.9 constant (v2): target = 0.9 * 1 + 0.1 * 2 = 1.1
  np.testing.assert_allclose(new['target']['params']['encoder']['w'], 1.1, rtol=1e-6)
  np.testing.assert_allclose(new['target']['params']['projector']['b'], 0.1, rtol=1e-6)


def test_v3_has_no_queue_and_a_cosine_rate():
  cfg = moco.DEFAULTS.copy_and_resolve_references()
  cfg.update(variant='v3', ema_base=0.99, ema_cosine=True)
  params = {'encoder': {'w': jnp.zeros((2,))}, 'projector': {'w': jnp.zeros((2,))},
            'predictor': {'w': jnp.zeros((2,))}}
  extra = moco.init_extra(params, {}, cfg)
  assert set(extra) == {'target'} and 'predictor' not in extra['target']['params']
  online = jax.tree_util.tree_map(lambda p: p + 1.0, params)
  new = moco.update_extra(extra, online, {}, {'progress': 0.5}, cfg,
                          {'features': jnp.zeros((4, 2))})
  # m(1/2) = 1 - 0.01 * (cos(pi/2) + 1) / 2 = 0.995: target = 0.005
  np.testing.assert_allclose(new['target']['params']['encoder']['w'], 0.005, rtol=1e-5)
  cfg.variant = 'v4'
  with pytest.raises(ValueError, match='variant'):
    moco.init_extra(params, {}, cfg)


def test_loss_fn_v2_queries_view1_against_keys_of_view2_and_the_queue():
  view1, view2, params, target = linear_setup(predictor=False)
  cfg = moco.DEFAULTS.copy_and_resolve_references()
  cfg.update(queue_size=5, proj_dim=4)
  extra = moco.init_extra(params, {}, cfg)
  extra['target'] = {'params': target, 'batch_stats': {}}
  hp = {'temperature': 0.2, 'progress': 0.0}
  loss, (_, metrics, aux) = moco.loss_fn(LinearModel(False), params, {}, extra, {'view1': view1, 'view2': view2},
                                          hp, cfg)
  flat = lambda v: v.reshape(len(v), -1)
  q = flat(view1) @ params['projector']['w']
  k = flat(view2) @ target['projector']['w']
  np.testing.assert_allclose(float(loss), numpy_infonce(q, k, np.asarray(extra['queue']), 0.2),
                             rtol=1e-5)
  # the normalised keys travel in aux (for the enqueue), not in the logged metrics
  np.testing.assert_allclose(aux['keys'], k / np.linalg.norm(k, axis=1, keepdims=True),
                             rtol=1e-5)
  np.testing.assert_allclose(aux['features'], flat(view1), rtol=1e-6)
  assert set(metrics) == {'loss', 'ema_momentum'} and set(aux) == {'features', 'keys'}
  # what update_extra enqueues is exactly aux['keys']
  new = moco.update_extra(extra, params, {}, hp, cfg, aux)
  np.testing.assert_array_equal(new['queue'][:3], aux['keys'])


def test_loss_fn_v3_is_symmetric_in_batch_and_scaled_by_two_tau():
  view1, view2, params, target = linear_setup(predictor=True)
  cfg = moco.DEFAULTS.copy_and_resolve_references()
  cfg.update(variant='v3')
  extra = {'target': {'params': target, 'batch_stats': {}}}
  tau = 0.5
  loss, (_, metrics, aux) = moco.loss_fn(LinearModel(), params, {}, extra, {'view1': view1, 'view2': view2},
                                          {'temperature': tau, 'progress': 0.0}, cfg)
  flat = lambda v: v.reshape(len(v), -1)
  np.testing.assert_allclose(aux['features'], flat(view1), rtol=1e-6)
  assert set(aux) == {'features'}  # no queue, nothing to enqueue
  np.testing.assert_allclose(float(metrics['loss']), float(loss))
  q1, q2 = (flat(v) @ params['projector']['w'] @ params['predictor']['w'] for v in (view1, view2))
  k1, k2 = (flat(v) @ target['projector']['w'] for v in (view1, view2))
  no_queue = np.zeros((0, 4))
  expected = 2 * tau * (numpy_infonce(q1, k2, no_queue, tau) + numpy_infonce(q2, k1, no_queue, tau))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_sharded_loss_equals_single_device():
  small = dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16)
  run_sharded_check([
      ('moco', dict(small, variant='v2', queue_size=16)),
      ('moco', dict(small, variant='v3', proj_layers=3, proj_bn=True, ema_cosine=True)),
  ])
