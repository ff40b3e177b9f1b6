"""Tests for cxr_jax.ssl.momentum: the EMA rate (BYOL sec. 3.2), its rules, and the target."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cxr_jax.models import heads
from cxr_jax.ssl import momentum


def test_ema_momentum_formula():
  base, total = 0.996, 1000
  for k in [0, 1, 250, 500, 777, 1000]:
    expected = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2
    np.testing.assert_allclose(float(momentum.ema_momentum(k, total, base)), expected, rtol=1e-7)
  np.testing.assert_allclose(float(momentum.ema_momentum(0, total, base)), 0.996, rtol=1e-7)
  np.testing.assert_allclose(float(momentum.ema_momentum(500, total, base)), 0.998, rtol=1e-7)
  assert float(momentum.ema_momentum(total, total, base)) == 1.0
  assert float(momentum.ema_momentum(2 * total, total, base)) == 1.0  # clipped after the end
  # the progress form the methods use: k / K with K = 1
  np.testing.assert_allclose(float(momentum.ema_momentum(0.25, 1.0, base)),
                             float(momentum.ema_momentum(250, total, base)), rtol=1e-7)


def test_target_momentum_rules():
  cfg = ml_collections.ConfigDict(dict(ema_base=0.99, ema_cosine=True))
  # 1. a stage schedule in hp wins
  assert float(momentum.target_momentum({'ema_momentum': 0.5, 'progress': 0.0}, cfg)) == 0.5
  # 2. the paper's cosine of the progress
  np.testing.assert_allclose(float(momentum.target_momentum({'progress': 0.5}, cfg)), 0.995,
                             rtol=1e-7)
  # 3. a constant
  cfg.ema_cosine = False
  np.testing.assert_allclose(float(momentum.target_momentum({'progress': 0.5}, cfg)), 0.99,
                             rtol=1e-7)


def test_ema_update_leafwise_and_ignores_online_only_subtrees():
  rng = np.random.default_rng(0)
  target = {'encoder': {'w': rng.normal(size=(3, 2)), 'b': rng.normal(size=(2,))},
            'projector': {'w': rng.normal(size=(2, 2))}}
  online = {'encoder': {'w': rng.normal(size=(3, 2)), 'b': rng.normal(size=(2,))},
            'projector': {'w': rng.normal(size=(2, 2))}, 'predictor': {'w': np.ones(2)}}
  tau = 0.9
  new = momentum.ema_update(target, online, tau)
  assert set(new) == {'encoder', 'projector'}
  for path in [('encoder', 'w'), ('encoder', 'b'), ('projector', 'w')]:
    t, o = target[path[0]][path[1]], online[path[0]][path[1]]
    np.testing.assert_allclose(new[path[0]][path[1]], tau * t + (1 - tau) * o, rtol=1e-12)


def test_ema_update_keeps_the_target_dtype():
  target = {'w': jnp.ones(3, jnp.bfloat16)}
  new = momentum.ema_update(target, {'w': jnp.zeros(3, jnp.float32)}, jnp.float32(0.5))
  assert new['w'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(new['w'], np.float32), 0.5)


def test_init_target_copies_without_predictor_and_without_aliasing():
  params = {'encoder': {'w': jnp.ones((2, 2))}, 'projector': {'w': jnp.ones(2)},
            'predictor': {'w': jnp.ones(2)}}
  stats = {'encoder': {'bn': {'mean': jnp.zeros(2)}}}
  target = momentum.init_target(params, stats)
  assert set(target) == {'params', 'batch_stats'}
  assert set(target['params']) == {'encoder', 'projector'}
  assert target['params']['encoder']['w'] is not params['encoder']['w']  # no alias
  np.testing.assert_array_equal(target['params']['encoder']['w'], 1.0)
  np.testing.assert_array_equal(target['batch_stats']['encoder']['bn']['mean'], 0.0)
  assert set(momentum.init_target(params, stats, exclude=())['params']) == set(params)


def test_update_target_moves_params_and_batch_stats():
  target = {'params': {'encoder': {'w': np.zeros(2)}},
            'batch_stats': {'encoder': {'m': np.ones(2)}}}
  params = {'encoder': {'w': np.full(2, 10.0)}, 'predictor': {'w': np.ones(2)}}
  stats = {'encoder': {'m': np.full(2, 3.0)}}
  new = momentum.update_target(target, params, stats, 0.75)
  np.testing.assert_allclose(new['params']['encoder']['w'], 2.5)       # 0.75 * 0 + 0.25 * 10
  np.testing.assert_allclose(new['batch_stats']['encoder']['m'], 1.5)  # 0.75 * 1 + 0.25 * 3
  assert set(new['params']) == {'encoder'}


def test_target_model_drops_the_predictor():
  class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3)(x)

  model = heads.SSLModel(encoder=Encoder(), projector=heads.ProjectionMLP(4, 2, num_layers=2),
                         predictor=heads.Predictor(4, 2))
  x = jnp.ones((2, 5))
  variables = model.init(jax.random.PRNGKey(0), x)
  target = momentum.init_target(variables['params'], variables['batch_stats'])
  out = momentum.target_model(model).apply(target, x)
  assert 'prediction' not in out and out['projection'].shape == (2, 2)
  # the target (without the predictor) projects exactly as the online network does
  np.testing.assert_array_equal(out['projection'], model.apply(variables, x)['projection'])
