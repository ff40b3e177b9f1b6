"""Input pipeline throughput: prepared ArrayRecord records -> batches, with and
without augmentation, host-side (numpy/OpenCV, per core) against device-side (jit).

    python -m benchmarks.input_pipeline [--store=256] [--res=128] [--batch=256]
        [--num=2048] [--data_dir=/tmp/cxr_bench_tfds] [--rounds=3]

Contenders, each timed in alternating rounds in this one process (median):
  DataLoader:  Grain DataLoader over the TFDS source (tf.Example records: the image
               stored raw, masks zlib; ArrayRecord's per-record compression), all fields
               decoded (the pretraining path before commit 16ab2ae) or the image only.
  loader:      `cxr_jax.data.pipeline.make_loader` (grain.MapDataset, 2 read threads)
               over the TFDS records, and over the split's image cache
               (`image_cache.for_split`: raw uint8 records, uncompressed ArrayRecord),
               which is what pretraining reads.
  raw:         the same images as raw records, TFDS's compression or none, indexed
               straight through grain.MapDataset (no iterator): the read's floor.
  read+host:   DataLoader (image only) with two host views per image
               (cxr_jax.data.host_augment), BLAS single-threaded = one core.
  device aug:  augment.two_views jitted on the CPU backend (all cores) on a batch
               already in memory: the cost the step pays when views are cut on device.
Rates are images per CPU-second of this process (time.process_time, all threads), i.e.
images/s per core: on a shared machine the wall-clock rate depends on what else runs,
the CPU time much less. With W Grain workers the host paths scale with the cores given
(up to memory bandwidth).

    python -m benchmarks.input_pipeline --feed [--store=224] [--num=2048] [--batch=128]
        [--workers=0,1,2]

What feeds a GPU at 224 px (docs/scaling.md): an image cache of `--num` synthetic uint8
images at `--store` px (written straight as `image_cache.for_split` writes it; the loader
only copies bytes, so the content does not matter), its disk bytes per image, then
`pipeline.make_loader` over it with 0 / 1 / 2 ... worker processes: the default
pipeline (uint8 images batched, views cut on the device: 2 views per image) and host
augmentation (`host_augment.TwoViews`, both views cut in the loader at --store px).
Rates in views/s: per core (CPU time of this process) without workers, wall clock with
workers; then the resident memory while reading the whole cache once.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # one core per host contender
os.environ.setdefault('OMP_NUM_THREADS', '1')


def _rss_mib() -> float:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def feed(a):
  """The loader's views/s at --store px (see the module docstring)."""
  from absl import flags
  import numpy as np
  from array_record.python.array_record_module import ArrayRecordWriter
  from benchmarks import common
  from cxr_jax.data import host_augment, image_cache, pipeline
  if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags
    flags.FLAGS.mark_as_parsed()
  common.print_facts(common.machine_facts())
  os.makedirs(a.data_dir, exist_ok=True)
  path = os.path.join(a.data_dir, f'feed_{a.store}_{a.num}.image-cache.array_record')
  shape = (a.store, a.store, 1)
  if not os.path.exists(path):
    rng = np.random.default_rng(0)
    writer = ArrayRecordWriter(path + '.tmp', image_cache.OPTIONS)
    for _ in range(a.num):
      writer.write(rng.integers(0, 256, shape, np.uint8).tobytes())
    writer.close()
    os.replace(path + '.tmp', path)
  print(f'# cache: {a.num} images {a.store}px, {os.path.getsize(path) / a.num:,.0f} bytes per '
        f'image on disk ({a.store * a.store} pixel bytes)')
  rss0 = _rss_mib()
  cache = image_cache.RawImages(path, shape, np.uint8)
  rows = []
  for host in (False, True):
    for workers in (int(w) for w in a.workers.split(',')):
      maps = (host_augment.TwoViews(a.store, 1.0, batch_size=a.batch, seed=0).map_with_index
              if host else None)
      loader = pipeline.make_loader(cache, batch_size=a.batch, seed=0, worker_count=workers,
                                    map_with_index=maps)
      it = iter(loader)
      next(it)  # start the workers, open the file
      n = max(2, (a.num // a.batch) // (4 if host else 1))
      t0, c0 = time.time(), time.process_time()
      for _ in range(n):
        next(it)
      wall, cpu = time.time() - t0, time.process_time() - c0
      views = 2 * n * a.batch
      what = 'host augmentation (2 views in the loader)' if host else 'default (uint8 images; views on device)'
      rate = f'{views / cpu:8.0f} views/s per core (CPU time)' if workers == 0 else \
          f'{views / wall:8.0f} views/s wall'
      rows.append(f'{what:<44} workers {workers}: {rate}; wall {views / wall:.0f} views/s')
      print(rows[-1], flush=True)
      del it
  order = np.random.default_rng(1).permutation(len(cache))
  for i in order:
    cache[int(i)]
  print(f'# resident memory reading all {a.num} images once (random order): '
        f'{_rss_mib() - rss0:+.0f} MiB (the cache is {os.path.getsize(path) / 2**20:.0f} MiB); '
        f'load {common.load_average()}')
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--store', type=int, default=256)
  p.add_argument('--res', type=int, default=128)
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--num', type=int, default=2048)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--data_dir', default='/tmp/cxr_bench_tfds')
  p.add_argument('--feed', action='store_true', help='the loader at --store px (docstring)')
  p.add_argument('--workers', default='0,1,2', help='--feed: worker counts to time')
  a = p.parse_args(argv)
  if a.feed:
    return feed(a)
  from cxr_jax import platform
  platform.setup()
  import grain
  import jax
  import numpy as np
  from benchmarks import common, prepare
  from cxr_jax.data import augment, host_augment, image_cache, pipeline

  common.print_facts(common.machine_facts())
  builder, seconds = prepare.prepare(a.store, a.num, a.data_dir)
  print(f'# prepared/opened phantom {a.store}px x {a.num} in {seconds:.1f} s')
  source = pipeline.get_source(builder, 'unlabeled')

  # What pretraining reads: the image only (stored uncompressed since builder version
  # 1.1.0); the zlib-compressed masks and the other fields stay undecoded.
  image_only = source.decoding(('image',))

  # The same images as raw uint8 records (no zlib, no proto): what a builder that stores
  # `image` with encoding=None, read with only that field, approaches.
  def raw_records(options):
    tag = options.replace(',', '_').replace(':', '')
    path = os.path.join(a.data_dir, f'raw_{a.store}_{a.num}_{tag}.array_record')
    if not os.path.exists(path):
      from array_record.python.array_record_module import ArrayRecordWriter
      writer = ArrayRecordWriter(path + '.tmp', options)
      for i in range(len(source)):
        writer.write(np.ascontiguousarray(image_only[i]['image'], np.uint8).tobytes())
      writer.close()
      os.replace(path + '.tmp', path)
    return grain.sources.ArrayRecordDataSource([path])

  shape = np.asarray(source[0]['image']).shape
  # TFDS writes its ArrayRecord files with 'group_size:1' and ArrayRecord's default
  # per-record compression; the uncompressed variant is what a raw image cache would be.
  raw = raw_records('group_size:1')
  raw_plain = raw_records('group_size:1,uncompressed')

  class FromRaw(grain.transforms.Map):
    def map(self, record):
      return {'image': np.frombuffer(record, np.uint8).reshape(shape)}

  raw_ds = (grain.MapDataset.source(raw).shuffle(seed=0).repeat()
            .map(FromRaw()).batch(a.batch, drop_remainder=True))
  plain_ds = (grain.MapDataset.source(raw_plain).shuffle(seed=0).repeat()
              .map(FromRaw()).batch(a.batch, drop_remainder=True))

  def dataset_rate(ds, n_batches=4):
    ds[0]
    t0 = time.process_time()
    for i in range(1, n_batches + 1):
      ds[i]
    return n_batches * a.batch / (time.process_time() - t0)

  def read_rate(ops, n_batches, src=source, threads=None):
    options = {} if threads is None else {'read_options': grain.ReadOptions(num_threads=threads)}
    loader = grain.DataLoader(
        data_source=src,
        sampler=grain.samplers.IndexSampler(len(source), shuffle=True, seed=0, num_epochs=None),
        operations=ops, worker_count=0, **options)
    it = iter(loader)
    next(it)  # open files, warm caches
    t0 = time.process_time()
    for _ in range(n_batches):
      next(it)
    return n_batches * a.batch / (time.process_time() - t0)

  select = pipeline.SelectFields(('image',))
  batch = grain.transforms.Batch(a.batch, drop_remainder=True)
  views = host_augment.make_random_map(a.res, strength=1.0)
  two = jax.jit(augment.two_views, static_argnums=(3,))
  images = jax.device_put(np.stack([np.asarray(source[i]['image']) for i in range(a.batch)]))
  key = jax.random.key(0)
  jax.block_until_ready(two(key, images, 1.0, a.res))

  def device_rate():
    t0 = time.process_time()  # CPU time of all of XLA's threads
    jax.block_until_ready(two(key, images, 1.0, a.res))
    return a.batch / (time.process_time() - t0)

  cache = image_cache.for_split(source)  # what pretraining reads (config.image_cache)

  def loader_rate(src, n_batches, threads):
    it = iter(pipeline.make_loader(src, batch_size=a.batch, seed=0, read_threads=threads))
    next(it)  # open files, start the threads
    t0 = time.process_time()  # all threads of this process, prefetch included
    for _ in range(n_batches):
      next(it)
    return n_batches * a.batch / (time.process_time() - t0)

  contenders = {
      'DataLoader, all fields (before 16ab2ae)': lambda: read_rate([select, batch], 2),
      'DataLoader, image only': lambda: read_rate([select, batch], 8, image_only),
      'loader, TFDS records': lambda: loader_rate(source, 8, 2),
      'loader, image cache (pretraining)': lambda: loader_rate(cache, 32, 2),
      'loader, image cache, 0 threads': lambda: loader_rate(cache, 32, 0),
      'raw TFDS-compressed records (MapDataset)': lambda: dataset_rate(raw_ds, 8),
      'raw uncompressed records (MapDataset)': lambda: dataset_rate(plain_ds, 32),
      'read+host 2 views': lambda: read_rate([select, views, batch], 1, image_only),
      'device 2 views (jit, CPU backend)': device_rate,
  }
  rates = {k: [] for k in contenders}
  for _ in range(a.rounds):
    for k, f in contenders.items():
      rates[k].append(f())
  print(f'# store {a.store}px -> views {a.res}px, batch {a.batch}; load {common.load_average()}')
  for k, r in rates.items():
    print(f'{k:<42} {common.median(r):>9.0f} images/s per core  (rounds: '
          + ', '.join(f'{x:.0f}' for x in r) + ')')
  host = common.median(rates['read+host 2 views'])
  dev = common.median(rates['device 2 views (jit, CPU backend)'])
  print(f'host augmentation / device augmentation, per core on this CPU: {host / dev:.1f}x')
  return {k: common.median(r) for k, r in rates.items()}


if __name__ == '__main__':
  main()
