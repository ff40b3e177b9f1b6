"""The cost of the loop's finite check: the demo's steps with and without it.

    python -m benchmarks.finite_check [--rounds=7] [--block=10] [--config=configs/default.py]

`loop.checked` adds metrics['finite'] to a step: one fused reduction over its loss and
new params, batch_stats and opt_state, inside the jit. The loop fetches every step's flag
(with its loss) at the host syncs it already makes (logging, evaluation, saving), so the
check adds no host sync. Timed here, for the demo's pretraining step (configs/default.py:
its model, SimCLR, AdamW, batch, first-stage view size, views cut on the device) and its
fine-tuning step: blocks of `--block` steps (the demo's log_every) ending as the loop's
logging step does: without the check, one fetch of the metrics; with it, the fetch of the
block's (flag, loss) pairs, then the metrics. Contenders alternate block by block in this
one process (A B A B ...), so background load hits both alike; printed: the median
wall and CPU seconds per step of each (CPU: time.process_time, all threads; on a shared
machine it depends less on the other users than the wall time), the ratios checked /
unchecked, and the check alone (the reduction jitted by itself on the step's state) per
call and as a fraction of the unchecked step.
"""
from __future__ import annotations

import argparse
import importlib.util
import time

from cxr_jax import platform as cxr_platform


def _config(path: str):
  spec = importlib.util.spec_from_file_location('_config_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def build(config):
  """{name: (jitted unchecked step, jitted checked step, state factory, batch)}."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from cxr_jax import curriculum, finetuning, pretraining, ssl
  from cxr_jax.models import heads
  from cxr_jax.train import loop, optim, sharding
  from cxr_jax.train import state as state_lib

  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  size = int(config.phantom.split('size=')[1].split(',')[0])
  stage = config.pretrain.stages[0]
  method = ssl.get_method(config.pretrain.method)
  mcfg = config.pretrain[config.pretrain.method]
  encoder = state_lib.encoder_from_config(config.model)
  out = {}

  def jit_pair(step):
    jit = lambda f: jax.jit(f, donate_argnums=0, out_shardings=sharding.replicated(mesh))
    return jit(step.__wrapped__), jit(step)

  # pretraining: the first stage's step at its first view size
  model = method.build_model(encoder, mcfg)
  tx, lr = optim.make_optimizer(config.pretrain.optimizer, stage.steps, stage.batch_size)
  schedules = {name: curriculum.make_schedule(stage[name], stage.steps, name)
               for name in ('strength', 'temperature', 'ema_momentum')
               if not (name == 'ema_momentum' and stage[name].kind == 'method')}
  schedules.update(progress=lambda t: t / stage.steps, lr=lr)
  res = int(pretraining.image_sizes(stage.image_size, stage.steps, 'image_size')[0])

  def pretrain_state():
    v = state_lib.init_variables(model, state_lib.init_key(0), 1)
    return sharding.replicate(loop.TrainState(
        step=jnp.zeros((), jnp.int32), params=v['params'], batch_stats=v['batch_stats'],
        opt_state=tx.init(v['params']),
        extra=method.init_extra(v['params'], v['batch_stats'], mcfg), rng=loop.fresh_rng(0)),
        mesh)
  images = rng.integers(0, 256, (stage.batch_size, size, size, 1), dtype=np.uint8)
  out[f'pretrain {stage.batch_size}x{res}px'] = (
      *jit_pair(pretraining.make_step(model, method, mcfg, tx, schedules, res)),
      pretrain_state, sharding.to_global({'image': images}, mesh))

  # fine-tuning: the classifier's step
  ft = config.finetune
  classifier = heads.ClassifierModel(encoder=encoder, num_classes=4)
  ftx, _ = optim.make_optimizer(ft.optimizer, ft.steps, ft.batch_size)

  def finetune_state():
    v = state_lib.init_variables(classifier, state_lib.init_key(0), 1)
    return sharding.replicate(loop.TrainState(
        step=jnp.zeros((), jnp.int32), params=v['params'], batch_stats=v['batch_stats'],
        opt_state=ftx.init(v['params']), extra={}, rng=loop.fresh_rng(0)), mesh)
  batch = {'image': rng.integers(0, 256, (ft.batch_size, size, size, 1), dtype=np.uint8),
           'label': rng.integers(0, 4, (ft.batch_size,)).astype(np.int32)}
  out[f'finetune {ft.batch_size}x{ft.image_size}px'] = (
      *jit_pair(finetuning.make_step(classifier, ftx, ft.image_size, ft.strength)),
      finetune_state, sharding.to_global(batch, mesh))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/default.py')
  p.add_argument('--rounds', type=int, default=7, help='timed blocks per contender')
  p.add_argument('--block', type=int, default=10, help='steps per block (log_every)')
  a = p.parse_args(argv)
  cxr_platform.setup()
  import jax
  from benchmarks import common

  common.print_facts(common.machine_facts())
  print(f'# args: {vars(a)}')
  programs = build(_config(a.config))
  contenders = {}
  for name, (unchecked, checked, fresh, batch) in programs.items():
    for label, step in (('unchecked', unchecked), ('checked', checked)):
      state = [fresh()]

      def block(step=step, state=state, batch=batch, label=label):
        t0, c0 = time.perf_counter(), time.process_time()
        pending = []
        for _ in range(a.block):
          state[0], metrics = step(state[0], batch)
          if label == 'checked':
            pending.append((metrics.pop('finite'), metrics['loss']))
        if pending:
          assert all(bool(f) for f, _ in jax.device_get(pending))
        jax.device_get(metrics)
        return ((time.perf_counter() - t0) / a.block, (time.process_time() - c0) / a.block)
      t0 = time.perf_counter()
      block()  # compiles, warms up
      print(f'# {name} {label}: compile + first block {time.perf_counter() - t0:.1f} s')
      contenders[f'{name} {label}'] = block
  load_before = common.load_average()
  times = common.ab_rounds(contenders, a.rounds)
  print(f'# load before/after timing: {load_before} / {common.load_average()}')
  wall = {k: [w for w, _ in v] for k, v in times.items()}
  cpu = {k: [c for _, c in v] for k, v in times.items()}
  print(f'{"contender":<32}{"wall s/step":>12}{"min":>9}{"CPU s/step":>12}{"min":>9}')
  for name in times:
    print(f'{name:<32}{common.median(wall[name]):>12.4f}{min(wall[name]):>9.4f}'
          f'{common.median(cpu[name]):>12.4f}{min(cpu[name]):>9.4f}')
  check = jax.jit(lambda s: loop_all_finite(s.params, s.batch_stats, s.opt_state))
  for name, (_, _, fresh, _) in programs.items():
    ratio = lambda t: common.median(t[f'{name} checked']) / common.median(t[f'{name} unchecked'])
    state = fresh()
    check(state).block_until_ready()
    alone = common.median([common.time_call(lambda: check(state), lambda r: r.block_until_ready())
                           for _ in range(50)])
    print(f'# {name}: checked / unchecked = {ratio(wall):.3f} (median wall), '
          f'{ratio(cpu):.3f} (median CPU); the check alone {1e3 * alone:.2f} ms = '
          f'{alone / common.median(wall[f"{name} unchecked"]):.2%} of the step')
  return times


def loop_all_finite(*trees):
  from cxr_jax.train import loop
  return loop.all_finite(*trees)


if __name__ == '__main__':
  main()
