"""Tests for cxr_jax.ssl.simclr: NT-Xent against SimCLR eq. 1, and 1 vs 4 devices."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_jax.ssl import simclr

ROOT = Path(__file__).resolve().parents[2]


def numpy_nt_xent(z1, z2, tau):
  """SimCLR eq. 1, one anchor at a time: l(i, j) = -log exp(s_ij/tau) / sum_{k != i} exp(s_ik/tau)
  with s the cosine similarity, averaged over the 2B anchors (eq. after Algorithm 1)."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  n, b = len(z), len(z1)
  total = 0.0
  for i in range(n):
    j = (i + b) % n  # the other view of the same image
    sims = [z[i] @ z[k] / (np.linalg.norm(z[i]) * np.linalg.norm(z[k])) for k in range(n)]
    denominator = sum(math.exp(sims[k] / tau) for k in range(n) if k != i)
    total += -math.log(math.exp(sims[j] / tau) / denominator)
  return total / n


@pytest.mark.parametrize('batch,dim', [(1, 3), (2, 4), (5, 7), (8, 16)])
@pytest.mark.parametrize('tau', [0.1, 0.5])
def test_nt_xent_matches_numpy(batch, dim, tau):
  rng = np.random.default_rng(batch * 100 + dim)
  z1 = rng.normal(size=(batch, dim)).astype(np.float32)
  z2 = rng.normal(size=(batch, dim)).astype(np.float32)
  got = float(simclr.nt_xent(z1, z2, tau))
  np.testing.assert_allclose(got, numpy_nt_xent(z1, z2, tau), rtol=1e-5, atol=1e-6)


def test_nt_xent_batch_of_one_is_zero():
  # with one image, each anchor's only other sample is its positive: -log(1) = 0
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(1, 5)), rng.normal(size=(1, 5))
  assert abs(float(simclr.nt_xent(z1, z2, 0.2))) < 1e-6


def test_nt_xent_hand_case_orthogonal():
  # images e1 and e2, both views identical: each anchor has cos 1 with its positive and
  # cos 0 with the other image's two views, so l = -log(e^(1/t) / (e^(1/t) + 2))
  z = np.eye(2, dtype=np.float32)
  for tau in (1.0, 0.5, 0.1):
    expected = math.log(1.0 + 2.0 * math.exp(-1.0 / tau))
    np.testing.assert_allclose(float(simclr.nt_xent(z, z, tau)), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(simclr.nt_xent(z, z, 1.0)), 0.5514447, rtol=1e-6)


def test_nt_xent_is_scale_invariant_and_temperature_sharpens():
  rng = np.random.default_rng(1)
  z1 = rng.normal(size=(4, 6)).astype(np.float32)
  z2 = z1 + 0.1 * rng.normal(size=(4, 6)).astype(np.float32)
  base = float(simclr.nt_xent(z1, z2, 0.5))
  np.testing.assert_allclose(float(simclr.nt_xent(3 * z1, 0.5 * z2, 0.5)), base, rtol=1e-5)
  # well-aligned positives: a lower temperature makes the loss smaller
  losses = [float(simclr.nt_xent(z1, z2, t)) for t in (1.0, 0.5, 0.1)]
  assert losses[0] > losses[1] > losses[2]


# --- the loss on 4 fake devices equals the single-device loss on the same global batch ---

SHARDED_SCRIPT = r'''
import json, sys
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from cxr_jax.ssl import get_method

assert jax.device_count() == 4, jax.devices()

class Encoder(nn.Module):  # tiny MLP with BatchNorm: checks global BN statistics too
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(16)(x.reshape(x.shape[0], -1))
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(8)(x)

def check(name, overrides):
  method = get_method(name)
  cfg = method.DEFAULTS.copy_and_resolve_references()
  cfg.update(overrides)
  model = method.build_model(Encoder(), cfg)
  rng = np.random.default_rng(0)
  view1 = rng.normal(size=(8, 4, 4, 1)).astype(np.float32)
  view2 = (view1 + 0.3 * rng.normal(size=view1.shape)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), view1, train=False)
  params, batch_stats = variables['params'], variables['batch_stats']
  extra = method.init_extra(params, batch_stats, cfg)
  # perturbed online params, so that the EMA target differs from them
  params = jax.tree_util.tree_map(lambda p: p * 1.1 + 0.01, params)
  hp = {'temperature': jnp.float32(0.3), 'progress': jnp.float32(0.25)}

  def step(params, batch_stats, extra, hp, view1, view2):
    def f(p):
      return method.loss_fn(model, p, batch_stats, extra, {'view1': view1, 'view2': view2}, hp, cfg)
    (loss, (new_stats, metrics, aux)), grads = jax.value_and_grad(f, has_aux=True)(params)
    new_extra = method.update_extra(extra, params, new_stats, hp, cfg, aux)
    return loss, grads, new_stats, metrics, aux, new_extra

  args = (params, batch_stats, extra, hp)
  single = jax.jit(step)(*args, view1, view2)
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  v1, v2 = jax.device_put(view1, sharded), jax.device_put(view2, sharded)
  assert len(v1.sharding.device_set) == 4
  multi = jax.jit(step)(*jax.device_put(args, replicated), v1, v2)
  parts = ('loss', 'grads', 'batch_stats', 'metrics', 'aux', 'extra')
  for part, one, four in zip(parts, single, multi):
    flat_one, tree_one = jax.tree_util.tree_flatten(one)
    flat_four, tree_four = jax.tree_util.tree_flatten(four)
    assert tree_one == tree_four, part
    # summation order differs across devices: float32 round-off relative to the part's scale
    # (e.g. the gradient of a bias before BatchNorm is 0 up to round-off)
    scale = max([float(np.abs(np.asarray(a)).max()) for a in flat_one if np.size(a)]
                + [1.0])
    for a, b in zip(flat_one, flat_four):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale,
                                 err_msg=f'{name} {overrides}: {part}')
  assert np.isfinite(float(single[0])) and float(single[0]) != 0.0
  print(name, overrides, 'loss', float(single[0]))

for name, overrides in json.loads(sys.argv[1]):
  check(name, overrides)
print('SHARDED-OK')
'''


def run_sharded_check(cases):
  """Runs SHARDED_SCRIPT on 4 fake CPU devices for [(method, cfg overrides), ...]."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
  result = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT, json.dumps(cases)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0 and 'SHARDED-OK' in result.stdout, (
      f'stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}')


def test_sharded_loss_equals_single_device():
  run_sharded_check([('simclr', dict(proj_hidden_dim=16, proj_dim=8))])
