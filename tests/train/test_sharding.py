"""The same step on 1 device and on 4 (fake CPU) devices gives the same loss and update:
the global batch, its BatchNorm statistics and its SimCLR negatives do not depend on how
the batch is sharded."""
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT, subprocess_env


def _run(tmp_path, devices, cache):
  out = tmp_path / f'step_{devices}.npz'
  subprocess.run([sys.executable, '-m', 'tests.train.step_equivalence', str(out)], cwd=ROOT,
                 env=subprocess_env(cache, devices=devices), check=True, timeout=600)
  return dict(np.load(out))


def test_one_and_four_devices_agree(tmp_path, jax_cache_dir, default_flags_step):
  one = dict(default_flags_step)
  four = _run(tmp_path, 4, jax_cache_dir)
  assert int(one.pop('num_devices')) == 1 and int(four.pop('num_devices')) == 4
  assert one.keys() == four.keys() and len(one) > 50
  assert np.isfinite(one['loss']) and one['loss'] > 0
  for key in one:
    np.testing.assert_allclose(four[key], one[key], rtol=2e-4, atol=2e-5, err_msg=key)
