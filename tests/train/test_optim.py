"""Tests for cxr_jax.train.optim: LARS masks by hand, lr scaling, warmup + cosine."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.train import optim


def _params():
  rng = np.random.default_rng(0)
  return {
      'conv': {'kernel': jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
      'dense': {'kernel': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                'bias': jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
      'bn': {'scale': jnp.asarray(1 + 0.1 * rng.normal(size=(3,)), jnp.float32),
             'bias': jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
  }


def _grads(seed):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params())


def test_decay_mask_keeps_kernels_only():
  mask = optim.decay_mask(_params())
  assert mask == {'conv': {'kernel': True}, 'dense': {'kernel': True, 'bias': False},
                  'bn': {'scale': False, 'bias': False}}


def test_lars_two_steps_by_hand():
  """LARS (You et al. 2017, Alg. 1; optax order: decay, trust ratio, lr, momentum):
    u = g + wd w                         (kernels only)
    r = eta ||w|| / ||u||                (kernels only; 1 for biases / BN)
    v_t = mu v_{t-1} + lr_t r u,  update = -v_t
  """
  wd, eta, mu, lr = 1e-2, 1e-3, 0.9, 0.5
  cfg = optim.optimizer_config('lars', lr=lr, lr_scaling='none', warmup_steps=0,
                               weight_decay=wd, momentum=mu, trust_coefficient=eta)
  tx, schedule = optim.make_optimizer(cfg, total_steps=100, batch_size=256)
  params = _params()
  state = tx.init(params)
  velocity = {'kernel': 0.0, 'bias': 0.0}
  w = np.asarray(params['dense']['kernel'], np.float64)
  for step in range(2):  # params stay fixed, so both steps use the same w
    grads = _grads(step + 1)
    updates, state = tx.update(grads, state, params)
    lr_t = float(schedule(step))
    np.testing.assert_allclose(lr_t, lr * 0.5 * (1 + math.cos(math.pi * step / 100)), rtol=1e-6)
    g_w = np.asarray(grads['dense']['kernel'], np.float64)
    u = g_w + wd * w
    ratio = eta * np.linalg.norm(w) / np.linalg.norm(u)
    velocity['kernel'] = mu * velocity['kernel'] + lr_t * ratio * u
    np.testing.assert_allclose(updates['dense']['kernel'], -velocity['kernel'], rtol=1e-5)
    # a bias: no weight decay and no trust ratio, plain momentum SGD
    velocity['bias'] = mu * velocity['bias'] + lr_t * np.asarray(grads['dense']['bias'])
    np.testing.assert_allclose(updates['dense']['bias'], -velocity['bias'], rtol=1e-5)
    if step == 0:  # BN scale and bias: likewise untouched by decay and trust ratio
      np.testing.assert_allclose(updates['bn']['scale'], -lr_t * np.asarray(grads['bn']['scale']),
                                 rtol=1e-6)
      np.testing.assert_allclose(updates['bn']['bias'], -lr_t * np.asarray(grads['bn']['bias']),
                                 rtol=1e-6)


def test_sgd_and_adamw_decay_kernels_only():
  zero = jax.tree_util.tree_map(jnp.zeros_like, _params())
  for name in ('sgd', 'adamw'):
    cfg = optim.optimizer_config(name, lr=0.1, lr_scaling='none', weight_decay=0.5)
    tx, _ = optim.make_optimizer(cfg, total_steps=10, batch_size=256)
    params = _params()
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates['dense']['kernel']).max()) > 0, name
    assert float(jnp.abs(updates['conv']['kernel']).max()) > 0, name
    for leaf in (updates['dense']['bias'], updates['bn']['scale'], updates['bn']['bias']):
      np.testing.assert_array_equal(leaf, 0.0)
  # sgd: decayed weights through nesterov momentum at step 0: -lr (1 + mu) wd w
  cfg = optim.optimizer_config('sgd', lr=0.1, lr_scaling='none', weight_decay=0.5, momentum=0.9)
  tx, schedule = optim.make_optimizer(cfg, total_steps=10, batch_size=256)
  params = _params()
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates['dense']['kernel'],
                             -float(schedule(0)) * 1.9 * 0.5 * params['dense']['kernel'], rtol=1e-5)


@pytest.mark.parametrize('scaling,expected', [('none', 0.3), ('linear', 0.3 * 1024 / 256),
                                              ('sqrt', 0.3 * 2.0)])
def test_lr_scaling(scaling, expected):
  cfg = optim.optimizer_config('lars', lr=0.3, base_batch_size=256, lr_scaling=scaling)
  np.testing.assert_allclose(optim.scaled_learning_rate(cfg, 1024), expected, rtol=1e-12)


def test_lr_scaling_rejects_unknown():
  cfg = optim.optimizer_config('sgd', lr_scaling='cubic')
  with pytest.raises(ValueError, match='lr_scaling'):
    optim.scaled_learning_rate(cfg, 256)
  with pytest.raises(ValueError, match='optimizer.name'):
    optim.make_optimizer(optim.optimizer_config('rmsprop'), 10, 256)


def test_warmup_cosine_against_formula():
  # peak = 0.1 * 512/256 = 0.2; linear warmup over W = 10 steps, then
  # peak (1 + cos(pi (t - W) / (T - W))) / 2 down to 0 at T = 100
  cfg = optim.optimizer_config('sgd', lr=0.1, base_batch_size=256, lr_scaling='linear',
                               warmup_steps=10)
  schedule = optim.learning_rate_schedule(cfg, total_steps=100, batch_size=512)
  peak, warm, total = 0.2, 10, 100
  for t in [0, 1, 5, 9, 10, 11, 40, 55, 99, 100]:
    if t < warm:
      expected = peak * t / warm
    else:
      expected = peak * 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm)))
    np.testing.assert_allclose(float(schedule(t)), expected, rtol=1e-5, atol=1e-7)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 0.2, rtol=1e-6)
  assert abs(float(schedule(100))) < 1e-7
