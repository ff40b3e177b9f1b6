"""Cost per record of shuffling a dataset of n records: Grain's `MapDataset.shuffle`
(one `index_shuffle` call per index) against `pipeline.EpochShuffle` (one numpy
permutation per epoch), over a source that costs nothing to read.

    python -m benchmarks.shuffle [--sizes=64,2048,100000] [--epochs=3]

Prints microseconds per record for each n, median of the epochs after the first.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def per_record_us(ds, n: int, epochs: int) -> float:
  times = []
  for epoch in range(epochs + 1):
    t0 = time.perf_counter()
    for i in range(epoch * n, (epoch + 1) * n):
      ds[i]
    times.append((time.perf_counter() - t0) / n * 1e6)
  return float(np.median(times[1:]))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='64,2048,100000')
  p.add_argument('--epochs', type=int, default=3)
  a = p.parse_args(argv)
  import grain
  from cxr_jax.data import pipeline
  print(f'{"records":>8} {"grain shuffle us/rec":>21} {"EpochShuffle us/rec":>20}')
  for n in (int(s) for s in a.sizes.split(',')):
    source = grain.MapDataset.range(n)
    epochs = a.epochs if n <= 10_000 else 1
    theirs = per_record_us(source.shuffle(seed=0).repeat(None), n, epochs)
    ours = per_record_us(pipeline.EpochShuffle(source, 0).repeat(None), n, epochs)
    print(f'{n:8d} {theirs:21.1f} {ours:20.1f}')


if __name__ == '__main__':
  main()
