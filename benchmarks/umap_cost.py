"""What config.explain.umap adds to the demo: the regimes' test embeddings and their UMAP.

    python -m benchmarks.umap_cost [--regimes=2] [--num_test=512] [--size=64]

The demo's shapes (configs/default.py): its classifier encoder (ResNet-18, width 0.25),
finetune.image_size 64, eval_batch_size 128, a 512-image test split of 64 px images (random
pixels: the cost does not depend on them, nor on the weights). Per regime (the demo has
two, scratch and curricular): the test features (`finetuning.Programs.features`, the
function the run uses; compiled once) and one UMAP fit (`report.figures.figure_umap`'s
settings). Printed, in seconds: the features' compilation + first call, each later call,
importing umap-learn, the first fit in the process (numba compiles UMAP's kernels then)
and each later fit, and the total the switch adds to a run + its report.
"""
from __future__ import annotations

import argparse
import time

from cxr_jax import platform as cxr_platform


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--regimes', type=int, default=2)
  parser.add_argument('--num_test', type=int, default=512)
  parser.add_argument('--size', type=int, default=64)
  args = parser.parse_args()
  cxr_platform.setup()
  import numpy as np
  from configs import default
  from cxr_jax import finetuning
  from cxr_jax.train import sharding
  config = default.get_config()
  mesh = sharding.make_mesh()
  programs = finetuning.Programs(config.model, config.finetune, 4, config.eval_batch_size, mesh)
  images = np.random.default_rng(0).integers(0, 256, (args.num_test, args.size, args.size, 1),
                                             dtype=np.uint8)
  out = {}
  feats = []
  for r in range(args.regimes):
    params, batch_stats = finetuning.classifier_variables(programs.model, r, 0, 1, None,
                                                          'scratch')
    t = time.perf_counter()
    feats.append(programs.features({'params': params, 'batch_stats': batch_stats}, images))
    out.setdefault('features', []).append(time.perf_counter() - t)
  t = time.perf_counter()
  import umap
  out['import_umap'] = time.perf_counter() - t
  labels = np.arange(args.num_test) % 4
  for f in feats:
    t = time.perf_counter()
    umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=0, n_jobs=1).fit_transform(
        np.asarray(f, np.float64) + labels[:, None] * 0.0)
    out.setdefault('umap_fit', []).append(time.perf_counter() - t)
  total = sum(out['features']) + out['import_umap'] + sum(out['umap_fit'])
  print(f'features [{args.num_test}, {feats[0].shape[1]}] per regime (first incl. compile): '
        + ', '.join(f'{s:.2f}' for s in out['features']))
  print(f'import umap: {out["import_umap"]:.2f}')
  print('UMAP fit per regime (first incl. numba JIT): '
        + ', '.join(f'{s:.2f}' for s in out['umap_fit']))
  print(f'total added ({args.regimes} regimes): {total:.1f} s')


if __name__ == '__main__':
  main()
