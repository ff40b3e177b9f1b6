"""Every speed path gives the plain path's numbers: outputs AND gradients.

Fast paths: the small-map 3x3 convolution (layers.conv3x3_small_map, stride 1 and 2),
BatchNorm with its batch sums as dots (batch_norm.DotBatchNorm), block
rematerialisation (ResNet(remat=True)), and the CPU XLA flag default set by
cxr_jax.platform (YNNPACK fusions off). Speed itself is measured in benchmarks/, never
asserted here.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from cxr_jax import platform
import flax.linen as nn

from cxr_jax.models import batch_norm, layers, resnet
from tests.conftest import ROOT, subprocess_env


def _random_variables(shapes, seed=0):
  """Random values for every variable, BN scales/variances away from zero."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.asarray(
          (rng.uniform(0.5, 1.5, v.shape) if jax.tree_util.keystr(path)
           .endswith(("'scale']", "'var']")) else
           0.3 * rng.standard_normal(v.shape)), v.dtype), shapes)


@pytest.mark.parametrize('hw', [(1, 1), (2, 2), (1, 2), (2, 1)])
def test_small_map_conv_gradients_match_xla_conv(hw):
  x = jax.random.normal(jax.random.key(0), (3, *hw, 5))
  k = jax.random.normal(jax.random.key(1), (3, 3, 5, 4))
  w = jax.random.normal(jax.random.key(2), (3, *hw, 4))  # a non-uniform cotangent

  def plain(x, k):
    return jnp.sum(w * lax.conv_general_dilated(
        x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')))

  def fast(x, k):
    return jnp.sum(w * layers.conv3x3_small_map(x, k))

  vp, gp = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(x, k)
  vf, gf = jax.jit(jax.value_and_grad(fast, argnums=(0, 1)))(x, k)
  np.testing.assert_allclose(vf, vp, rtol=1e-5, atol=1e-5)
  for a, b in zip(gf, gp):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('hw', [(4, 4), (3, 3), (2, 2), (1, 1), (4, 3), (5, 2)])
def test_strided_small_map_conv_gradients_match_xla_conv(hw):
  x = jax.random.normal(jax.random.key(0), (3, *hw, 5))
  k = jax.random.normal(jax.random.key(1), (3, 3, 5, 4))
  out = tuple((n - 1) // 2 + 1 for n in hw)
  w = jax.random.normal(jax.random.key(2), (3, *out, 4))

  def plain(x, k):
    return jnp.sum(w * lax.conv_general_dilated(
        x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')))

  def fast(x, k):
    return jnp.sum(w * layers.conv3x3_small_map(x, k, strides=2))

  vp, gp = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(x, k)
  vf, gf = jax.jit(jax.value_and_grad(fast, argnums=(0, 1)))(x, k)
  np.testing.assert_allclose(vf, vp, rtol=1e-5, atol=1e-5)
  for a, b in zip(gf, gp):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('hw', [(8, 8), (7, 5), (2, 2)])
def test_stem_max_pool_gradient_is_jaxs(hw):
  x = jax.random.normal(jax.random.key(0), (2, *hw, 3))
  # ReLU'd inputs: many windows of equal zeros, where only the first maximum may get
  # the gradient
  x = jnp.concatenate([x, jax.nn.relu(x)], axis=-1)
  plain = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  y = jax.jit(plain)(x)
  w = jax.random.normal(jax.random.key(1), y.shape)
  np.testing.assert_array_equal(jax.jit(layers.max_pool_3x3_s2)(x), y)
  g_plain = jax.jit(jax.grad(lambda x: jnp.sum(w * plain(x))))(x)
  g_fast = jax.jit(jax.grad(lambda x: jnp.sum(w * layers.max_pool_3x3_s2(x))))(x)
  # (overlapping windows add their gradients in another order: rounding only)
  np.testing.assert_allclose(g_fast, g_plain, rtol=1e-6, atol=1e-6)
  # and the first maximum alone gets it: each window passes on exactly its dy
  assert np.isclose(float(jnp.sum(g_fast)), float(jnp.sum(w)), rtol=1e-5)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_dot_batch_norm_is_flax_batch_norm(dtype):
  """Outputs, running statistics and gradients (input, scale, bias) in training mode,
  and outputs in evaluation mode, against flax.linen.BatchNorm."""
  x = (3.0 + 2.0 * jax.random.normal(jax.random.key(0), (6, 5, 4, 7))).astype(dtype)
  cot = jax.random.normal(jax.random.key(1), x.shape)
  kw = dict(momentum=0.9, epsilon=1e-5, dtype=dtype)
  ours, theirs = batch_norm.DotBatchNorm(**kw), nn.BatchNorm(**kw)
  variables = _random_variables(jax.eval_shape(
      lambda: theirs.init(jax.random.key(0), x, use_running_average=False)))
  assert (jax.tree.structure(variables) == jax.tree.structure(jax.eval_shape(
      lambda: ours.init(jax.random.key(0), x))))

  def train(module, use_running_average):
    def f(params, x):
      kwargs = ({'use_running_average': use_running_average}
                if isinstance(module, nn.BatchNorm) else {})
      m = module if isinstance(module, nn.BatchNorm) else module.clone(
          use_running_average=use_running_average)
      y, updates = m.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                           mutable=['batch_stats'], **kwargs)
      return jnp.sum(cot * y.astype(jnp.float32)), (y, updates['batch_stats'])
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        variables['params'], x)

  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  for use_running_average in (False, True):
    (v1, (y1, s1)), g1 = train(ours, use_running_average)
    (v2, (y2, s2)), g2 = train(theirs, use_running_average)
    assert y1.dtype == y2.dtype == dtype
    np.testing.assert_allclose(np.float32(y1), np.float32(y2), **tol)
    _assert_trees_close(s1, s2, rtol=1e-5, atol=1e-6)
    _assert_trees_close(g1, g2, **(tol if dtype == jnp.float32 else
                                   dict(rtol=5e-2, atol=0.5)))
    if dtype == jnp.float32:
      np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-4)


def _train_loss_and_grads(model, variables, x):
  """Loss, parameter gradients and new batch stats of one training-mode apply."""
  def loss(params):
    out, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                               x, train=True, mutable=['batch_stats'])
    return jnp.mean(jnp.sin(out)), updates['batch_stats']
  (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
  return value, grads, stats


def _assert_trees_close(a, b, rtol, atol):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for (path, x), y in zip(la, lb):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('flag, size', [('small_map_conv', 64), ('dot_batch_norm', 32)])
def test_fast_path_model_gradients_match_plain(flag, size):
  # small_map_conv: the imagenet stem on 64 px leaves 2x2 maps in stage 4 (stride-2 conv
  # 4x4 -> 2x2 included), where the fast path applies; dot_batch_norm: every BatchNorm.
  # 8 examples keep BN's batch statistics well conditioned on 2x2 maps.
  x = jax.random.normal(jax.random.key(3), (8, size, size, 1))
  fast = resnet.resnet18(width=0.125, **{flag: True})
  slow = resnet.resnet18(width=0.125, **{flag: False})
  variables = _random_variables(jax.eval_shape(fast.init, jax.random.key(0), x))
  vf, gf, sf = _train_loss_and_grads(fast, variables, x)
  vs, gs, ss = _train_loss_and_grads(slow, variables, x)
  np.testing.assert_allclose(vf, vs, rtol=1e-5, atol=1e-6)
  _assert_trees_close(gf, gs, rtol=2e-3, atol=2e-5)
  _assert_trees_close(sf, ss, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('block', ['basic', 'bottleneck'])
def test_remat_keeps_params_outputs_and_gradients(block):
  # one block per stage keeps the compilation small; both block types are covered
  x = jax.random.normal(jax.random.key(4), (4, 32, 32, 1))
  plain = resnet.ResNet(stage_sizes=(1, 1, 1, 1), block_cls=block, width=0.125)
  remat = resnet.ResNet(stage_sizes=(1, 1, 1, 1), block_cls=block, width=0.125, remat=True)
  shapes = jax.eval_shape(plain.init, jax.random.key(0), x)
  assert (jax.tree.map(lambda v: (v.shape, v.dtype), shapes) ==
          jax.tree.map(lambda v: (v.shape, v.dtype),
                       jax.eval_shape(remat.init, jax.random.key(0), x)))
  variables = _random_variables(shapes)
  vp, gp, sp = _train_loss_and_grads(plain, variables, x)
  vr, gr, sr = _train_loss_and_grads(remat, variables, x)
  np.testing.assert_allclose(vr, vp, rtol=1e-5, atol=1e-6)
  _assert_trees_close(gr, gp, rtol=1e-4, atol=1e-6)
  _assert_trees_close(sr, sp, rtol=1e-5, atol=1e-6)
  # eval mode (no remat effect, but the wrapped blocks must take train=False too)
  np.testing.assert_allclose(jax.jit(remat.apply)(variables, x),
                             jax.jit(plain.apply)(variables, x), rtol=1e-5, atol=1e-6)


def test_platform_sets_cpu_flag_default_and_respects_user(monkeypatch):
  monkeypatch.setattr(platform, '_backend_initialised', lambda: False)
  monkeypatch.delenv('CXR_JAX_CPU_YNN', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  platform.apply_xla_defaults()
  flags = os.environ['XLA_FLAGS'].split()
  assert '--xla_force_host_platform_device_count=2' in flags
  assert '--xla_cpu_experimental_ynn_fusion_type=' in flags
  # a value the user chose wins
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=default')
  platform.apply_xla_defaults()
  assert os.environ['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=default'


def _step(out, xla_flags, cache):
  env = subprocess_env(cache)
  env['XLA_FLAGS'] = xla_flags
  subprocess.run([sys.executable, '-m', 'tests.train.step_equivalence', str(out)], cwd=ROOT,
                 env=env, check=True, timeout=600)
  return dict(np.load(out))


def test_cpu_flag_default_gives_the_same_step(tmp_path, jax_cache_dir, default_flags_step):
  """One real SimCLR step (augmentation, model, loss, LARS) with XLA's default CPU
  fusions and with platform.py's default: same loss, parameters and BN statistics."""
  ynn = dict(default_flags_step)
  eigen = _step(tmp_path / 'eigen.npz', '--xla_cpu_experimental_ynn_fusion_type=',
                jax_cache_dir)
  assert set(ynn) == set(eigen)
  for key in ynn:
    np.testing.assert_allclose(eigen[key], ynn[key], rtol=2e-4, atol=2e-5, err_msg=key)
