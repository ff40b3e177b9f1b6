"""bfloat16 compute (config.model.dtype='auto' on a GPU/TPU) against float32: the same tiny
SimCLR job, a few steps from the same weights on the same images, on the CPU backend
(which computes in bf16 too), agrees within a stated tolerance; 'auto' resolves in one
place (`platform.compute_dtype`)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from cxr_jax import curriculum, platform, pretraining, ssl
from cxr_jax.train import loop, optim
from cxr_jax.train import state as state_lib

# Measured (2-core CPU, jax 0.10.2, 2026-12-04, this job): losses of 3 steps within
# 0.4-0.8% relative, features' cosine similarity >= 0.99995. The bounds leave room
# for other backends' bf16 rounding while still failing a wrong cast (float16 overflow,
# a bf16 loss reduction, parameters kept in bf16).
LOSS_RTOL = 2e-2
MIN_COSINE = 0.99


def _run(dtype: str, steps: int = 3):
  """(losses [steps], pooled features [B, C] after the steps) of a tiny SimCLR job."""
  model_config = ml_collections.ConfigDict(dict(name='resnet18', width=0.125, stem='imagenet',
                                                dtype=dtype, remat=False))
  method = ssl.get_method('simclr')
  mcfg = method.DEFAULTS.copy_and_resolve_references()
  mcfg.proj_hidden_dim, mcfg.proj_dim = 32, 16
  model = method.build_model(state_lib.encoder_from_config(model_config), mcfg)
  tx, lr = optim.make_optimizer(common.optimizer_config('adamw', lr=1e-3, warmup_steps=0),
                                steps, 8)
  schedules = {'strength': curriculum.make_schedule(0.5, steps),
               'temperature': curriculum.make_schedule(0.2, steps),
               'progress': lambda t: t / steps, 'lr': lr}
  variables = state_lib.init_variables(model, state_lib.init_key(0), 1)
  state = loop.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                          batch_stats=variables['batch_stats'],
                          opt_state=tx.init(variables['params']), extra={},
                          rng=loop.fresh_rng(0))
  step = jax.jit(pretraining.make_step(model, method, mcfg, tx, schedules, 32))
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1), dtype=np.uint8)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, {'image': images})
    losses.append(float(metrics['loss']))
  out = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                    jnp.asarray(images, jnp.float32) / 255.0, train=False)
  return np.asarray(losses), np.asarray(out['features'], np.float32), state.params


def test_bfloat16_and_float32_runs_of_one_tiny_job_agree():
  loss32, f32, params32 = _run('float32')
  loss16, f16, params16 = _run('bfloat16')
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params16))
  np.testing.assert_allclose(loss16, loss32, rtol=LOSS_RTOL)
  cosine = (f16 * f32).sum(-1) / np.linalg.norm(f16, axis=-1) / np.linalg.norm(f32, axis=-1)
  assert cosine.min() > MIN_COSINE, cosine
  assert not np.array_equal(f16, f32)  # bf16 really computed in bf16


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu(monkeypatch):
  assert platform.compute_dtype('float16') == 'float16'
  assert platform.compute_dtype('auto') == ('bfloat16' if jax.default_backend() in ('gpu', 'tpu')
                                            else 'float32')
  for backend, expected in (('gpu', 'bfloat16'), ('tpu', 'bfloat16'), ('cpu', 'float32')):
    monkeypatch.setattr(jax, 'default_backend', lambda b=backend: b)
    assert platform.compute_dtype('auto') == expected
    config = ml_collections.ConfigDict(dict(name='resnet18', width=0.125, stem='small',
                                            dtype='auto', remat=False))
    assert state_lib.encoder_from_config(config).dtype == jnp.dtype(expected)


@pytest.mark.parametrize('cores, workers', [(1, 0), (2, 0), (3, 2), (16, 8), (64, 8)])
def test_auto_worker_count_from_the_cores(cores, workers):
  assert platform.num_workers(-1, cores) == workers
  assert platform.num_workers(3, cores) == 3
