"""On an accelerator: the FLOP count of `cxr_jax.train.compute` (the step lowered for the
CPU backend) against the accelerator's own cost analysis and a count from layer shapes,
and the time account's compile events on that backend.

    python -m benchmarks.gpu_accounting_check [--batch=16] [--res=224] [--out=FILE.json]

ResNet-50 (width 1, ImageNet stem, float32) training step at `res` px: forward, backward
and an SGD update. Layer-shape count: 4.09 G multiply-adds per 224 px image forward
(the usual ResNet-50 figure), 2 FLOPs each, × 3 for a training step, × (res/224)^2.
Needs only jax, flax and numpy.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models.resnet import resnet50
from cxr_jax.train import compute, timing


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--res', type=int, default=224)
  parser.add_argument('--out', default='')
  args = parser.parse_args(argv)
  model = resnet50(width=1.0)
  x = jnp.zeros((args.batch, args.res, args.res, 1), jnp.float32)
  variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))

  def step(params, batch_stats, images):
    def loss(p):
      out, updates = model.apply({'params': p, 'batch_stats': batch_stats}, images, train=True,
                                 mutable=['batch_stats'])
      return jnp.mean(out ** 2), updates['batch_stats']
    (value, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return jax.tree_util.tree_map(lambda a, g: a - 1e-3 * g, params, grads), new_stats, value

  out = {'backend': jax.default_backend(), 'device': str(jax.devices()[0]),
         'jax': jax.__version__, 'batch': args.batch, 'res': args.res}
  start = time.perf_counter()
  out['flops_cpu_lowering'] = compute.step_flops(step, variables['params'],
                                                 variables['batch_stats'], x)
  out['count_seconds'] = time.perf_counter() - start
  out['flops_layer_shapes'] = 2 * 4.09e9 * 3 * args.batch * (args.res / 224) ** 2
  account = timing.start()
  with timing.phase('train', job='resnet50_step'):
    jitted = jax.jit(step)
    compiled = jitted.lower(variables['params'], variables['batch_stats'], x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out['flops_backend_compiled'] = float(cost.get('flops', -1)) if cost else None
    result = jitted(variables['params'], variables['batch_stats'], x)
    jax.block_until_ready(result)
    start = time.perf_counter()
    for _ in range(5):
      result = jitted(variables['params'], variables['batch_stats'], x)
    jax.block_until_ready(result)
    out['step_seconds'] = (time.perf_counter() - start) / 5
  out['time_account'] = account.snapshot()['jobs']
  out['ratio_cpu_lowering_to_layer_shapes'] = (out['flops_cpu_lowering'] /
                                               out['flops_layer_shapes'])
  out['tflops_per_s'] = out['flops_cpu_lowering'] / out['step_seconds'] / 1e12
  text = json.dumps(out, indent=1)
  print(text, flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  main()
