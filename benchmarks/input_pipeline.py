"""Input pipeline throughput: prepared ArrayRecord records -> batches, with and
without augmentation, host-side (numpy/OpenCV, per core) against device-side (jit).

    python -m benchmarks.input_pipeline [--store=256] [--res=128] [--batch=256]
        [--num=2048] [--data_dir=/tmp/cxr_bench_tfds] [--rounds=3]

Contenders, each timed in alternating rounds in this one process (median):
  read:        Grain DataLoader, records -> uint8 batches (no decoding: the records
               hold raw pixels), in this process = one core.
  read+host:   the same with two host views per image (cxr_jax.data.host_augment)
               in the same process, BLAS single-threaded = one core.
  device aug:  augment.two_views jitted on the CPU backend (all cores) on a batch
               already in memory: the cost the step pays when views are cut on device.
Images/s per core for the host paths is the single-process rate; with W Grain
workers it scales with the cores given (up to memory bandwidth).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # one core per host contender
os.environ.setdefault('OMP_NUM_THREADS', '1')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--store', type=int, default=256)
  p.add_argument('--res', type=int, default=128)
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--num', type=int, default=2048)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--data_dir', default='/tmp/cxr_bench_tfds')
  a = p.parse_args(argv)
  from cxr_jax import platform
  platform.setup()
  import grain
  import jax
  import numpy as np
  from benchmarks import common, prepare
  from cxr_jax.data import augment, host_augment, pipeline

  common.print_facts(common.machine_facts())
  builder, seconds = prepare.prepare(a.store, a.num, a.data_dir)
  print(f'# prepared/opened phantom {a.store}px x {a.num} in {seconds:.1f} s')
  source = pipeline.get_source(builder, 'unlabeled')

  import tensorflow_datasets as tfds
  # Only the image is decoded: the records also hold zlib-compressed lung and lesion
  # masks whose decompression otherwise dominates the read (see docs/benchmarks.md).
  image_only = builder.as_data_source(
      'unlabeled', decoders=tfds.decode.PartialDecoding({'image': True}))

  def read_rate(ops, n_batches, src=source):
    loader = grain.DataLoader(
        data_source=src,
        sampler=grain.samplers.IndexSampler(len(source), shuffle=True, seed=0, num_epochs=None),
        operations=ops, worker_count=0)
    it = iter(loader)
    next(it)  # open files, warm caches
    t0 = time.perf_counter()
    for _ in range(n_batches):
      next(it)
    return n_batches * a.batch / (time.perf_counter() - t0)

  select = pipeline.SelectFields(('image',))
  batch = grain.transforms.Batch(a.batch, drop_remainder=True)
  views = host_augment.make_random_map(a.res, strength=1.0)
  two = jax.jit(augment.two_views, static_argnums=(3,))
  images = jax.device_put(np.stack([np.asarray(source[i]['image']) for i in range(a.batch)]))
  key = jax.random.key(0)
  jax.block_until_ready(two(key, images, 1.0, a.res))

  def device_rate():
    t0 = time.perf_counter()
    jax.block_until_ready(two(key, images, 1.0, a.res))
    return a.batch / (time.perf_counter() - t0)

  contenders = {
      'read all fields (1 core)': lambda: read_rate([select, batch], 2),
      'read image only (1 core)': lambda: read_rate([select, batch], 4, image_only),
      'read+host 2 views (1 core)': lambda: read_rate([select, views, batch], 1, image_only),
      f'device 2 views (jit, {os.cpu_count()} cores)': device_rate,
  }
  rates = {k: [] for k in contenders}
  for _ in range(a.rounds):
    for k, f in contenders.items():
      rates[k].append(f())
  print(f'# store {a.store}px -> views {a.res}px, batch {a.batch}; load {common.load_average()}')
  for k, r in rates.items():
    print(f'{k:<36} {common.median(r):>9.0f} images/s  (rounds: '
          + ', '.join(f'{x:.0f}' for x in r) + ')')
  host = common.median(rates['read+host 2 views (1 core)'])
  dev = common.median(rates[f'device 2 views (jit, {os.cpu_count()} cores)'])
  print(f'host augmentation per core / device augmentation per core on this CPU: '
        f'{host / (dev / os.cpu_count()):.1f}x')
  return {k: common.median(r) for k, r in rates.items()}


if __name__ == '__main__':
  main()
