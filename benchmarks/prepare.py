"""Dataset preparation speed: the phantom TFDS builder, render + encode + ArrayRecord.

    python -m benchmarks.prepare [--size=256] [--num=1024] [--data_dir=/tmp/...]

Prints images/s of `download_and_prepare` (one process: TFDS's generator runs in this
process) and of the renderer alone, so the share spent writing records is visible.
The dataset is prepared once per options; benchmarks.input_pipeline then reads it.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time


def prepare(size: int, num: int, data_dir: str):
  """Prepares phantom(size, num unlabeled) under data_dir; returns (builder, seconds)."""
  from configs import common
  from cxr_jax.data import pipeline
  options = f'size={size},num_unlabeled={num},num_train=16,num_val=16,num_test=16,seed=0'
  t0 = time.perf_counter()
  builder = pipeline.get_builder(common.data('phantom', 'unlabeled', options), data_dir)
  return builder, time.perf_counter() - t0


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', type=int, default=256)
  p.add_argument('--num', type=int, default=1024)
  p.add_argument('--data_dir', default='')
  a = p.parse_args(argv)
  from benchmarks import common
  from cxr_jax.data.builders import phantom
  print(f'# date={common.machine_facts()["date"]}, cores={common.os.cpu_count()}, '
        f'load={common.load_average()}')
  data_dir = a.data_dir or tempfile.mkdtemp(prefix='cxr_prepare_')
  n_render = max(16, a.num // 8)
  t0 = time.perf_counter()
  for i in range(n_render):
    phantom.render(phantom.example_rng(0, 'unlabeled', i), i % 4, size=a.size)
  render_rate = n_render / (time.perf_counter() - t0)
  _, seconds = prepare(a.size, a.num, data_dir)
  total = a.num + 48
  print(f'phantom {a.size}px: prepare {total} images in {seconds:.1f} s = '
        f'{total / seconds:.0f} images/s (one process); renderer alone {render_rate:.0f} '
        f'images/s; load {common.load_average()}')
  if not a.data_dir:
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == '__main__':
  main()
