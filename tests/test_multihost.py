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
      if key in ('num_devices', 'num_processes'):
        continue
      np.testing.assert_allclose(many[key], one[key], rtol=2e-4, atol=2e-5, err_msg=key)


def _worker(out, rank, num_processes, port):
  """One process of the 2-process run: the step of tests/train/step_equivalence.py."""
  from cxr_jax import platform
  platform.setup(f'127.0.0.1:{port}', num_processes, rank)
  import jax
  from tests.train import step_equivalence
  assert jax.process_count() == num_processes
  step_equivalence.main(out)
  jax.distributed.shutdown()


if __name__ == '__main__' and len(sys.argv) == 6 and sys.argv[1] == 'worker':
  sys.path.insert(0, str(ROOT))
  _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
