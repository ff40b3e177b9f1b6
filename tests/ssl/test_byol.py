"""Tests for cxr_jax.ssl.byol: regression loss (BYOL eq. 2), the target, loss_fn and
update_extra (the EMA helpers themselves: test_momentum.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.ssl import byol
from tests.ssl.test_simclr import run_sharded_check  # the one 4-device script


def numpy_regression_loss(p, z):
  """BYOL eq. 2 per example, || p/||p|| - z/||z|| ||^2, averaged over the batch."""
  total = 0.0
  for pb, zb in zip(np.asarray(p, np.float64), np.asarray(z, np.float64)):
    diff = pb / np.linalg.norm(pb) - zb / np.linalg.norm(zb)
    total += sum(d * d for d in diff)
  return total / len(p)


@pytest.mark.parametrize('batch,dim', [(1, 3), (2, 5), (7, 4), (16, 32)])
def test_regression_loss_matches_numpy(batch, dim):
  rng = np.random.default_rng(batch * 10 + dim)
  p = rng.normal(size=(batch, dim)).astype(np.float32)
  z = rng.normal(size=(batch, dim)).astype(np.float32)
  np.testing.assert_allclose(float(byol.regression_loss(p, z)), numpy_regression_loss(p, z),
                             rtol=1e-5, atol=1e-6)


def test_regression_loss_hand_cases():
  loss = lambda p, z: float(byol.regression_loss(np.asarray([p], np.float32),
                                                 np.asarray([z], np.float32)))
  assert abs(loss([1, 0], [0, 1]) - 2.0) < 1e-6        # orthogonal: 2 - 2 cos = 2
  assert abs(loss([3, 0], [1, 0])) < 1e-6              # same direction, any norm: 0
  assert abs(loss([1, 0], [-2, 0]) - 4.0) < 1e-6       # opposite: 4
  np.testing.assert_allclose(loss([1, 1], [1, 0]), 2 - math.sqrt(2), rtol=1e-6)  # 45 degrees


def test_regression_loss_stops_the_gradient_on_the_target():
  rng = np.random.default_rng(3)
  p = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  grad_p, grad_z = jax.grad(byol.regression_loss, argnums=(0, 1))(p, z)
  np.testing.assert_array_equal(grad_z, 0.0)
  assert float(jnp.abs(grad_p).max()) > 0.0


def test_init_extra_copies_the_online_network_without_predictor():
  params = {'encoder': {'w': jnp.ones((2, 2))}, 'projector': {'w': jnp.ones(2)},
            'predictor': {'w': jnp.ones(2)}}
  stats = {'encoder': {'bn': {'mean': jnp.zeros(2)}}}
  extra = byol.init_extra(params, stats, byol.DEFAULTS)
  assert set(extra['target']['params']) == {'encoder', 'projector'}
  assert extra['target']['params']['encoder']['w'] is not params['encoder']['w']  # no alias
  np.testing.assert_array_equal(extra['target']['params']['encoder']['w'], 1.0)
  np.testing.assert_array_equal(extra['target']['batch_stats']['encoder']['bn']['mean'], 0.0)


def test_update_extra_moves_the_target_by_the_scheduled_rate():
  params = {'encoder': {'w': jnp.zeros((2, 2))}, 'projector': {'w': jnp.zeros(2)},
            'predictor': {'w': jnp.zeros(2)}}
  stats = {'encoder': {'bn': {'mean': jnp.zeros(2)}}}
  extra = byol.init_extra(params, stats, byol.DEFAULTS)
  online = jax.tree_util.tree_map(lambda p: p + 1.0, params)
  online_stats = jax.tree_util.tree_map(lambda p: p + 2.0, stats)
  cfg = byol.DEFAULTS.copy_and_resolve_references()
  # tau(1/2) = 1 - 0.004 * (cos(pi / 2) + 1) / 2 = 0.998: target = 0.002 * online
  new = byol.update_extra(extra, online, online_stats, {'progress': 0.5}, cfg,
                          {'features': jnp.ones((3, 4))})
  np.testing.assert_allclose(new['target']['params']['encoder']['w'], 0.002, rtol=1e-4)
  np.testing.assert_allclose(new['target']['batch_stats']['encoder']['bn']['mean'], 0.004,
                             rtol=1e-4)
  assert set(new['target']['params']) == {'encoder', 'projector'}
  # a scheduled rate wins over the cosine
  new = byol.update_extra(extra, online, online_stats, {'progress': 0.5, 'ema_momentum': 0.5},
                          cfg, {'features': jnp.ones((3, 4))})
  np.testing.assert_allclose(new['target']['params']['projector']['w'], 0.5)


class LinearModel:
  """Stands in for heads.SSLModel in loss_fn: features = flattened image, projection =
  features @ W, prediction = projection @ V (when it has a predictor)."""

  def __init__(self, predictor=True):
    self.predictor = predictor

  def clone(self, predictor=None):
    return LinearModel(predictor is not None)

  def apply(self, variables, x, train, mutable):
    assert train and mutable == ['batch_stats']
    params = variables['params']
    features = x.reshape(x.shape[0], -1)
    out = {'features': features, 'projection': features @ params['projector']['w']}
    if self.predictor:
      out['prediction'] = out['projection'] @ params['predictor']['w']
    return out, {'batch_stats': variables['batch_stats']}


def linear_setup(predictor, seed=0, batch=3, dim=4):
  rng = np.random.default_rng(seed)
  view1 = rng.normal(size=(batch, 2, 3, 1)).astype(np.float32)
  view2 = rng.normal(size=(batch, 2, 3, 1)).astype(np.float32)
  params = {'encoder': {}, 'projector': {'w': rng.normal(size=(6, dim)).astype(np.float32)}}
  if predictor:
    params['predictor'] = {'w': rng.normal(size=(dim, dim)).astype(np.float32)}
  target = {'encoder': {}, 'projector': {'w': rng.normal(size=(6, dim)).astype(np.float32)}}
  return view1, view2, params, target


def test_loss_fn_pairs_each_prediction_with_the_other_views_target():
  view1, view2, params, target = linear_setup(predictor=True)
  extra = {'target': {'params': target, 'batch_stats': {}}}
  cfg = byol.DEFAULTS.copy_and_resolve_references()
  hp = {'progress': 0.5}
  loss, (_, metrics, aux) = byol.loss_fn(LinearModel(), params, {}, extra, {'view1': view1, 'view2': view2}, hp,
                                          cfg)
  flat = lambda v: v.reshape(len(v), -1)
  p1, p2 = (flat(v) @ params['projector']['w'] @ params['predictor']['w'] for v in (view1, view2))
  z1, z2 = (flat(v) @ target['projector']['w'] for v in (view1, view2))
  expected = numpy_regression_loss(p1, z2) + numpy_regression_loss(p2, z1)  # symmetrised
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(aux['features'], flat(view1), rtol=1e-6)
  assert set(aux) == {'features'} and set(metrics) == {'loss', 'ema_momentum'}
  np.testing.assert_allclose(float(metrics['ema_momentum']), 1 - 0.004 * 0.5, rtol=1e-7)


def test_sharded_loss_equals_single_device():
  run_sharded_check([('byol', dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16))])
