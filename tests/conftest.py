"""Shared fixtures: one tiny phantom dataset and one tiny config for the whole session."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `configs` is imported as a package by config files



def pytest_configure(config):
  # one persistent compilation cache for this process and its subprocesses: the same
  # tiny programs are compiled once per session instead of once per test
  import tempfile
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='cxr_jax_jit_'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


TINY_PHANTOM = 'size=32,num_unlabeled=64,num_train=16,num_val=16,num_test=32,confounder_strength=0.5,seed=0'


@pytest.fixture(scope='session')
def jax_cache_dir():
  """The persistent compilation cache shared by the test subprocesses."""
  return os.environ['JAX_COMPILATION_CACHE_DIR']


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """A TFDS data_dir holding the tiny phantom, built once."""
  from cxr_jax.data import pipeline
  from configs import common
  data_dir = tmp_path_factory.mktemp('tfds')
  pipeline.get_builder(common.data('phantom', 'train', TINY_PHANTOM), data_dir)
  return data_dir


def tiny_overrides(data_dir=None):
  """Command-line overrides that shrink configs/default.py to a seconds-long run."""
  args = [
      f'--config.phantom={TINY_PHANTOM}',
      '--config.model.width=0.125',
      '--config.pretrain.stages[0].steps=4', '--config.pretrain.stages[1].steps=4',
      '--config.pretrain.stages[0].batch_size=16', '--config.pretrain.stages[1].batch_size=16',
      '--config.pretrain.stages[0].image_size.start=32', '--config.pretrain.stages[1].image_size.start=32',
      '--config.pretrain.simclr.proj_hidden_dim=32', '--config.pretrain.simclr.proj_dim=16',
      '--config.finetune.steps=4', '--config.finetune.num_seeds=1',
      '--config.finetune.eval_every=2', '--config.finetune.batch_size=8',
      '--config.finetune.image_size=32', '--config.eval_batch_size=16',
      '--config.checkpoint_every=2', '--config.log_every=2',
  ]
  if data_dir is not None:
    args.append(f'--config.data_dir={data_dir}')
  return args


def subprocess_env(jax_cache_dir=None, devices=None):
  env = dict(os.environ)
  env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
  if jax_cache_dir:
    env['JAX_COMPILATION_CACHE_DIR'] = jax_cache_dir
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  if devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


@pytest.fixture(scope='session')
def default_flags_step(tmp_path_factory):
  """One SimCLR step of a tiny ResNet on 1 device with XLA's default CPU flags
  (tests/train/step_equivalence.py), shared by the sharding and fast-path tests."""
  import subprocess
  import numpy as np
  out = tmp_path_factory.mktemp('step') / 'one_device.npz'
  env = subprocess_env()
  env['XLA_FLAGS'] = ''
  subprocess.run([sys.executable, '-m', 'tests.train.step_equivalence', str(out)], cwd=ROOT,
                 env=env, check=True, timeout=600)
  return dict(np.load(out))
