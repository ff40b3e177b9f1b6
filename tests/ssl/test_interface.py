"""Tests for the method interface of cxr_jax.ssl (its docstring) and the shared helpers of
cxr_jax.ssl.common: every method's loss_fn returns scalar metrics and an aux dict of arrays
that its update_extra accepts."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.ssl import TWO_VIEW_METHODS, common, get_method

BATCH, FEATURES, PROJ = 5, 6, 4  # all different, so a swapped axis shows


class Encoder(nn.Module):  # a tiny encoder with BatchNorm, pooled features [B, FEATURES]
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(8)(x.reshape(x.shape[0], -1))
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(FEATURES)(x)


small = dict(proj_hidden_dim=8, proj_dim=PROJ)
CASES = [('simclr', small), ('barlow_twins', small), ('vicreg', small),
         ('byol', dict(small, pred_hidden_dim=8)),
         ('moco', dict(small, variant='v2', queue_size=16)),
         ('moco', dict(small, variant='v3', pred_hidden_dim=8, proj_bn=True, ema_cosine=True))]
IDS = ['simclr', 'barlow_twins', 'vicreg', 'byol', 'moco_v2', 'moco_v3']


def test_every_method_is_covered():
  assert {name for name, _ in CASES} == set(TWO_VIEW_METHODS)  # pretext tasks: tests/ssl/test_pretext.py


@pytest.mark.parametrize('name,overrides', CASES, ids=IDS)
def test_loss_fn_returns_scalar_metrics_and_aux_arrays(name, overrides):
  method = get_method(name)
  cfg = method.DEFAULTS.copy_and_resolve_references()
  cfg.update(overrides)
  model = method.build_model(Encoder(), cfg)
  rng = np.random.default_rng(0)
  view1 = rng.normal(size=(BATCH, 3, 3, 1)).astype(np.float32)
  view2 = (view1 + 0.3 * rng.normal(size=view1.shape)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), view1, train=False)
  params, batch_stats = variables['params'], variables['batch_stats']
  extra = method.init_extra(params, batch_stats, cfg)
  hp = {'temperature': jnp.float32(0.3), 'progress': jnp.float32(0.25)}

  def step(params):  # as the train step uses the interface
    f = lambda p: method.loss_fn(model, p, batch_stats, extra, {'view1': view1, 'view2': view2}, hp, cfg)
    (loss, (new_stats, metrics, aux)), grads = jax.value_and_grad(f, has_aux=True)(params)
    new_extra = method.update_extra(extra, params, new_stats, hp, cfg, aux)
    return loss, new_stats, metrics, aux, new_extra, grads

  loss, new_stats, metrics, aux, new_extra, grads = jax.jit(step)(params)
  assert jnp.ndim(loss) == 0 and np.isfinite(float(loss))
  # metrics: scalars only, logged as they are; 'loss' is the loss
  assert isinstance(metrics, dict) and 'loss' in metrics
  for key, value in metrics.items():
    assert jnp.ndim(value) == 0, (key, jnp.shape(value))
  assert float(metrics['loss']) == float(loss)
  # aux: the pooled features of view 1, plus what update_extra needs
  assert isinstance(aux, dict)
  assert aux['features'].shape == (BATCH, FEATURES)
  expected_aux = {'features', 'keys'} if overrides.get('variant') == 'v2' else {'features'}
  assert set(aux) == expected_aux
  if 'keys' in aux:
    assert aux['keys'].shape == (BATCH, PROJ)
    np.testing.assert_allclose(np.linalg.norm(aux['keys'], axis=1), 1.0, rtol=1e-5)
  # the state keeps its structure, shapes and dtypes (it is donated between steps)
  same = lambda a, b: jax.tree_util.tree_map(lambda x, y: (x.shape, x.dtype) == (y.shape, y.dtype),
                                              a, b)
  assert all(jax.tree_util.tree_leaves(same(extra, new_extra)))
  assert all(jax.tree_util.tree_leaves(same(batch_stats, new_stats)))
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


def numpy_l2_normalize(x):
  """x / ||x|| row by row; rows of norm below 1e-6 are multiplied by 1e6 (the floor)."""
  x = np.asarray(x, np.float64)
  norms = np.sqrt((x * x).sum(axis=-1, keepdims=True))
  return x / np.maximum(norms, 1e-6)


def test_l2_normalize():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 3, 7)).astype(np.float32)
  got = common.l2_normalize(x)
  assert got.dtype == jnp.float32 and got.shape == x.shape
  np.testing.assert_allclose(got, numpy_l2_normalize(x), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-6)
  # a zero row stays zero (no NaN); a tiny row is scaled by 1e6, not divided by its norm
  tiny = np.asarray([[0.0, 0.0], [3e-8, 4e-8]], np.float32)
  np.testing.assert_allclose(common.l2_normalize(tiny), [[0, 0], [0.03, 0.04]], rtol=1e-5)
  # bfloat16 in, float32 out, same values as normalising the float32 copy
  xb = jnp.asarray(x, jnp.bfloat16)
  out = common.l2_normalize(xb)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, common.l2_normalize(np.asarray(xb, np.float32)))
