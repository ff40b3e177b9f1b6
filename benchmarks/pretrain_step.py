"""Times cxr_jax's real pretraining step, optionally against a PyTorch reference.

    python -m benchmarks.pretrain_step --model=resnet18 --res=128 --batch=64 \
        --method=simclr [--vs=torch] [--torch_compile] [--width=1.0] \
        [--dtype=float32|bfloat16] [--steps=N] [--scope=both|full|model]

Two scopes, timed for both frameworks so the comparison is fair either way:
  full:  uint8 images -> two augmented views on the device -> model, loss, update.
         Ours is `cxr_jax.pretraining.make_step`, the step training runs; torch
         runs the same augmentation operations batched in torch (torch_reference.py).
  model: two precomputed float views -> model, loss, update (what the step does when
         the views come from host-side augmentation in Grain workers).
Both use the imagenet stem, LARS (optax.lars; the same update written in torch), lr 0.3,
SimCLR temperature 0.2 (BYOL: EMA 0.996).

Each contender runs one step per round, alternating (A B A B ...) in this one process,
so background load hits all alike; the figure is the median over rounds after warm-up.
Printed: views/s (2 views per image), step time, compile time, peak memory, achieved
FLOP/s (the step's convolutions and matmuls counted from the layer shapes,
benchmarks/flops.py, / step time) and its fraction of the
matmul rate measured in the same run, and the ratio ours / torch (> 1: we are faster).
"""
from __future__ import annotations

import argparse
import time

from benchmarks import flops
from cxr_jax import platform as cxr_platform


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='resnet18')
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--res', type=int, default=128, help='view side in pixels')
  p.add_argument('--store', type=int, default=0,
                 help='stored image side the views are cut from (0: same as --res)')
  p.add_argument('--batch', type=int, default=64, help='images per step (2 views each)')
  p.add_argument('--method', default='simclr', choices=('simclr', 'byol'))
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--optimizer', default='lars', choices=('lars', 'sgd'))
  p.add_argument('--steps', type=int, default=5, help='timed A/B rounds')
  p.add_argument('--warmup', type=int, default=1, help='untimed steps per contender')
  p.add_argument('--scope', default='both', choices=('both', 'full', 'model'))
  p.add_argument('--vs', default='', choices=('', 'torch'))
  p.add_argument('--torch_compile', action='store_true',
                 help='also time torch.compile (in addition to eager)')
  p.add_argument('--no_torch_eager', action='store_true')
  p.add_argument('--small_map_conv', type=int, default=1)
  p.add_argument('--dot_batch_norm', type=int, default=-1,
                 help='BatchNorm sums as dots: 1 on, 0 off, -1 the backend default')
  p.add_argument('--remat', type=int, default=0, help='rematerialise ResNet blocks')
  p.add_argument('--xla_cpu_ynn', default='auto', choices=('auto', 'on', 'off'),
                 help='YNNPACK fusions on the CPU backend (auto: platform.py default)')
  p.add_argument('--memory_only', action='store_true',
                 help='compile and print XLA memory analysis only (no run)')
  return p.parse_args(argv)


def build_jax(a):
  """(compiled full step, compiled model step, state factory, inputs, facts) of ours."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from cxr_jax import curriculum, pretraining, ssl
  from cxr_jax.models import build_encoder
  from cxr_jax.train import loop, optim, sharding

  mesh = sharding.make_mesh()
  method = ssl.get_method(a.method)
  mcfg = method.DEFAULTS.copy_and_resolve_references()
  kw = dict(width=a.width, stem='imagenet', dtype=jnp.dtype(a.dtype),
            small_map_conv=bool(a.small_map_conv))
  if a.remat:
    kw['remat'] = True
  if a.dot_batch_norm >= 0:
    kw['dot_batch_norm'] = bool(a.dot_batch_norm)
  model = method.build_model(build_encoder(a.model, **kw), mcfg)
  ocfg = optim.optimizer_config(a.optimizer, lr=0.3, base_batch_size=a.batch,
                                lr_scaling='none', warmup_steps=0, weight_decay=1e-6)
  tx, lr = optim.make_optimizer(ocfg, 10_000, a.batch)
  schedules = {'strength': curriculum.make_schedule(1.0, 10_000),
               'temperature': curriculum.make_schedule(0.2, 10_000),
               'progress': lambda t: t / 10_000, 'lr': lr}
  if a.method == 'byol':
    schedules['ema_momentum'] = curriculum.make_schedule(0.996, 10_000)
  store = a.store or a.res

  def fresh_state():
    variables = jax.jit(model.init, static_argnames='train')(
        jax.random.key(0, impl='rbg'), jnp.zeros((2, a.res, a.res, 1)), train=False)
    params, batch_stats = variables['params'], variables['batch_stats']
    return sharding.replicate(loop.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params), extra=method.init_extra(params, batch_stats, mcfg),
        rng=loop.fresh_rng(0)), mesh)

  # the step training runs; given 'view1'/'view2' it skips cutting views (the model alone)
  step = pretraining.make_step(model, method, mcfg, tx, schedules, a.res)

  rng = np.random.default_rng(0)
  inputs = {
      'full': sharding.to_global(
          {'image': rng.integers(0, 256, (a.batch, store, store, 1), dtype=np.uint8)}, mesh),
      'model': sharding.to_global(
          {'view1': rng.integers(0, 256, (a.batch, a.res, a.res, 1), dtype=np.uint8),
           'view2': rng.integers(0, 256, (a.batch, a.res, a.res, 1), dtype=np.uint8)}, mesh)}
  compiled, facts = {}, {}
  state = fresh_state()
  for scope in ('full', 'model'):
    if a.scope not in ('both', scope):
      continue
    t0 = time.perf_counter()
    jitted = jax.jit(step, donate_argnums=0, out_shardings=sharding.replicated(mesh))
    c = jitted.lower(state, inputs[scope]).compile()
    facts[scope] = {'compile_s': time.perf_counter() - t0}
    # FLOPs from the layer shapes (benchmarks/flops.py): XLA's cost analysis of a GPU
    # compile leaves out the cuDNN convolutions; its own figure is kept for reference
    facts[scope]['flops'] = flops.count(step, state, inputs[scope])
    cost = c.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    facts[scope]['xla_flops'] = float(cost.get('flops', 0.0)) if cost else 0.0
    mem = c.memory_analysis()
    if mem is not None:
      facts[scope]['xla_temp_gib'] = mem.temp_size_in_bytes / 2**30
      facts[scope]['xla_args_gib'] = mem.argument_size_in_bytes / 2**30
      facts[scope]['xla_out_gib'] = mem.output_size_in_bytes / 2**30
      facts[scope]['xla_alias_gib'] = mem.alias_size_in_bytes / 2**30
    compiled[scope] = c
  return compiled, fresh_state, inputs, facts


def main(argv=None):
  a = parse_args(argv)
  if a.xla_cpu_ynn != 'auto':
    cxr_platform.set_cpu_ynn_fusion(a.xla_cpu_ynn == 'on')
  cxr_platform.setup()
  import jax
  from benchmarks import common

  facts = common.machine_facts()
  common.print_facts(facts)
  print(f'# args: {vars(a)}')
  compiled, fresh_state, inputs, jfacts = build_jax(a)
  for scope, f in jfacts.items():
    print(f'# ours/{scope}: compile {f["compile_s"]:.1f} s, FLOP/step {f["flops"]:.3e} '
          f'(layer shapes; XLA cost analysis {f["xla_flops"]:.3e}), '
          + ', '.join(f'{k} {v:.3f}' for k, v in f.items()
                      if k.startswith('xla_') and k != 'xla_flops'))
  if a.memory_only:
    return jfacts

  states = {scope: fresh_state() for scope in compiled}
  contenders = {}
  for scope, c in compiled.items():
    def one(scope=scope, c=c):
      def run():
        states[scope], metrics = c(states[scope], inputs[scope])
        return metrics['loss']
      return common.time_call(run, lambda r: r.block_until_ready())
    contenders[f'ours/{scope}'] = one

  if a.vs == 'torch':
    import torch
    from benchmarks import torch_reference
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    gpu = device == 'cuda'
    variants = ([] if a.no_torch_eager else [('eager', False)]) + (
        [('compile', True)] if a.torch_compile else [])
    for scope in compiled:
      for label, comp in variants:
        t0 = time.perf_counter()
        ts = torch_reference.Step(a.model, a.width, a.method, a.res, a.batch, a.optimizer,
                                  scope, device, amp=gpu and a.dtype == 'bfloat16',
                                  channels_last=gpu, compile=comp)
        x = ts.inputs()
        ts.sync(ts(x))  # first call: torch.compile's compilation happens here
        jfacts.setdefault(f'torch_{label}/{scope}', {})['compile_s'] = time.perf_counter() - t0

        def one(ts=ts, x=x):
          return common.time_call(lambda: ts(x), lambda r: ts.sync(r.item()))
        contenders[f'torch_{label}/{scope}'] = one

  for _ in range(a.warmup):
    for one in contenders.values():
      one()
  load_before = common.load_average()
  times = common.ab_rounds(contenders, a.steps)
  load_after = common.load_average()

  dtype = 'bfloat16' if a.dtype == 'bfloat16' and jax.default_backend() != 'cpu' else 'float32'
  rate = common.matmul_rate(dtype)
  print(f'# matmul rate ({dtype}, XLA): {rate / 1e9:.1f} GFLOP/s; '
        f'load before/after timing: {load_before} / {load_after}')
  rss = common.peak_rss_gib()
  dev_mem = common.device_memory_gib()
  results = {}
  print(f'{"contender":<22}{"views/s":>10}{"step ms":>10}{"min ms":>9}{"GFLOP/s":>10}'
        f'{"of peak":>9}{"compile s":>11}')
  for name, ts_ in times.items():
    med = common.median(ts_)
    scope = name.split('/')[1]
    step_flops = jfacts[scope]['flops']  # same model and batch: one count serves both
    results[name] = {'step_s': med, 'views_per_s': 2 * a.batch / med, 'times': ts_}
    print(f'{name:<22}{2 * a.batch / med:>10.1f}{1e3 * med:>10.1f}{1e3 * min(ts_):>9.1f}'
          f'{step_flops / med / 1e9:>10.1f}{step_flops / med / rate:>9.1%}'
          f'{jfacts.get(name, jfacts[scope])["compile_s"]:>11.1f}')
  for scope in compiled:
    ours = results[f'ours/{scope}']['step_s']
    for name in results:
      if name.startswith('torch') and name.endswith(scope):
        print(f'ratio ours/{name} (views/s): {results[name]["step_s"] / ours:.2f}')
  print(f'peak host RSS (whole process, both frameworks): {rss:.2f} GiB'
        + (f'; device peak {dev_mem:.2f} GiB' if dev_mem is not None else ''))
  return results


if __name__ == '__main__':
  main()
