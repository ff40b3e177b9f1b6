"""Runs one SimCLR pretraining step of a tiny ResNet on a fixed global batch and saves the
loss and updated parameters: `python -m tests.train.step_equivalence OUT.npz`.

test_sharding.py runs it with 1 and with 4 (fake CPU) devices and compares the outputs;
test_multihost.py runs `main` in each of 2 processes (each feeding its half of the batch).
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from cxr_jax import curriculum, pretraining, ssl
from cxr_jax.models import build_encoder
from cxr_jax.train import loop, optim, sharding


def main(out):
  """The step on this process's share of the global batch -> OUT.npz."""
  mesh = sharding.make_mesh()
  method = ssl.get_method('simclr')
  mcfg = method.DEFAULTS.copy_and_resolve_references()
  mcfg.proj_hidden_dim, mcfg.proj_dim = 32, 16
  model = method.build_model(build_encoder('resnet18', width=0.125, stem='small'), mcfg)
  tx, lr = optim.make_optimizer(common.optimizer_config('lars', lr=0.3, warmup_steps=0), 10, 8)
  schedules = {'strength': curriculum.make_schedule(0.8, 10),
               'temperature': curriculum.make_schedule(0.2, 10),
               'ema_momentum': curriculum.make_schedule(0.99, 10),
               'progress': lambda t: t / 10, 'lr': lr}
  variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1)), train=False)
  params, batch_stats = variables['params'], variables['batch_stats']
  state = sharding.replicate(loop.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params), extra={}, rng=loop.fresh_rng(0)), mesh)
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1), dtype=np.uint8)
  local = images.reshape(jax.process_count(), -1, *images.shape[1:])[jax.process_index()]
  step = jax.jit(pretraining.make_step(model, method, mcfg, tx, schedules, 32),
                 out_shardings=sharding.replicated(mesh))
  state, metrics = step(state, sharding.to_global({'image': local}, mesh))
  flat = {'loss': np.asarray(metrics['loss'])}
  for path, leaf in jax.tree_util.tree_leaves_with_path({'p': state.params, 'b': state.batch_stats}):
    flat[jax.tree_util.keystr(path)] = np.asarray(leaf)
  flat['num_devices'] = np.asarray(jax.device_count())
  flat['num_processes'] = np.asarray(jax.process_count())
  np.savez(out, **flat)


if __name__ == '__main__':
  main(sys.argv[1])
