"""Two JAX processes on this machine (CPU backend, local coordinator, gloo collectives)
compute the same pretraining step as one process with the same global batch.

Each process is started as `python -m tests.test_multihost WORKER OUT RANK N PORT`; it
goes through `cxr_jax.platform.setup` (jax.distributed + CPU collectives), feeds its
half of the global batch with `sharding.to_global`, and runs the real SimCLR step of
tests/train/step_equivalence.py (augmentation, BN over the global batch, NT-Xent over
all 2B views, LARS). The 1-process reference is that script itself.
"""
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT, subprocess_env

NUM_PROCESSES = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path, jax_cache_dir):
  env = subprocess_env(jax_cache_dir)
  env.pop('XLA_FLAGS', None)  # one CPU device per process
  ref = tmp_path / 'one.npz'
  subprocess.run([sys.executable, '-m', 'tests.train.step_equivalence', str(ref)], cwd=ROOT,
                 env=env, check=True, timeout=600)
  port = _free_port()
  outs = [tmp_path / f'rank{r}.npz' for r in range(NUM_PROCESSES)]
  procs = [subprocess.Popen([sys.executable, '-m', 'tests.test_multihost', 'worker', str(out),
                             str(rank), str(NUM_PROCESSES), str(port)], cwd=ROOT, env=env)
           for rank, out in enumerate(outs)]
  try:
    codes = [p.wait(timeout=600) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert codes == [0] * NUM_PROCESSES
  one = dict(np.load(ref))
  for out in outs:
    many = dict(np.load(out))
    assert int(many['num_devices']) == NUM_PROCESSES and int(many['num_processes']) == 2
    for key in one:
      if key == 'num_devices':
        continue
      np.testing.assert_allclose(many[key], one[key], rtol=2e-4, atol=2e-5, err_msg=key)


def _worker(out, rank, num_processes, port):
  """One process of the 2-process run (mirrors tests/train/step_equivalence.py)."""
  from cxr_jax import platform
  platform.setup(f'127.0.0.1:{port}', num_processes, rank)
  import jax
  import jax.numpy as jnp
  from configs import common
  from cxr_jax import curriculum, pretraining, ssl
  from cxr_jax.models import build_encoder
  from cxr_jax.train import loop, optim, sharding

  assert jax.process_count() == num_processes
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
  local = images.reshape(num_processes, -1, *images.shape[1:])[rank]  # this process's half
  step = jax.jit(pretraining.make_step(model, method, mcfg, tx, schedules, 32),
                 out_shardings=sharding.replicated(mesh))
  state, metrics = step(state, sharding.to_global({'image': local}, mesh))
  flat = {'loss': np.asarray(metrics['loss'])}
  for path, leaf in jax.tree_util.tree_leaves_with_path({'p': state.params, 'b': state.batch_stats}):
    flat[jax.tree_util.keystr(path)] = np.asarray(leaf)
  flat['num_devices'] = np.asarray(jax.device_count())
  flat['num_processes'] = np.asarray(jax.process_count())
  np.savez(out, **flat)
  jax.distributed.shutdown()


if __name__ == '__main__' and len(sys.argv) == 6 and sys.argv[1] == 'worker':
  sys.path.insert(0, str(ROOT))
  _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
