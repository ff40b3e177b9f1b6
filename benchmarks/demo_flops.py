"""FLOPs of the demo's pretraining steps (48 px and 64 px), the curriculum's total and
ssl_matched's length matched by images and by FLOPs (`cxr_jax.train.compute`).

    python -m benchmarks.demo_flops [--data_dir=DIR]

The demo's config (configs/default.py: ResNet-18 at width 0.25, SimCLR, batch 128,
120 steps at 48 px then 150 at 64 px) over a small phantom (256 unlabeled images of 32 px:
only the device crop's input differs from the demo's 64 px images, not the network).
Nothing is trained or compiled: each step is traced and lowered for the CPU backend.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from configs import common, default
from cxr_jax import experiment, regimes
from cxr_jax.data import pipeline
from cxr_jax.train import compute, sharding

PHANTOM = 'size=32,num_unlabeled=256,num_train=16,num_val=16,num_test=32,seed=0'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default='', help='TFDS data_dir (default: a temporary one)')
  args = parser.parse_args(argv)
  data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix='demo_flops_'))
  pipeline.get_builder(common.data('phantom', 'unlabeled', PHANTOM), data_dir)
  c = default.get_config()
  c.data_dir, c.phantom = str(data_dir), PHANTOM
  for stage in c.pretrain.stages:
    stage.data.options = PHANTOM
  c.pretrain.monitor_every = 0
  start = time.perf_counter()
  flops = experiment.stage_flops(c, sharding.make_mesh(), data_dir / 'workdir', data_dir)
  f48, f64 = flops.per_step(0, [48])[48], flops.per_step(1, [64])[64]
  print(f'one step at 48 px: {compute.format_flops(f48)}, at 64 px: {compute.format_flops(f64)}; '
        f'ratio {f48 / f64:.3f} ((48/64)^2 = {(48 / 64) ** 2:.4f}); counted in '
        f'{time.perf_counter() - start:.0f} s')
  curriculum = 120 * f48 + 150 * f64
  print(f'curriculum: {compute.format_flops(curriculum)} = {curriculum / f64:.1f} steps at 64 px')
  c.pretrain.match = 'flops'
  print(f'ssl_matched by FLOPs: {regimes.matched_steps(c.pretrain, flops.stage_total)} steps')
  c.pretrain.match = 'images'
  steps = regimes.matched_steps(c.pretrain)
  print(f'ssl_matched by images: {steps} steps, {steps * f64 / curriculum:.3f}× the '
        "curriculum's FLOPs")


if __name__ == '__main__':
  main()
