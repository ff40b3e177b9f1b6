"""Training throughput of the real pretraining job, not just its step.

    python -m benchmarks.train_throughput [--model=resnet50] [--res=224] [--store=256] \
        [--batch=128] [--dtype=bfloat16] [--steps=60] [--num=512] [--method=simclr] \
        [--data_dir=DIR] [--workdir=DIR] [--jsonl=rows.jsonl]

Runs what `launch.py` runs for one pretraining stage: `pretraining.pretrain_job` (the
phantom dataset prepared through TFDS at `--store` px, the split's image cache, the
Grain loader, views cut on the device, the optimiser of configs/paper.py's real-data
path: LARS lr 0.3) driven by `train.loop.run_job` (metrics, finite checks, Orbax
checkpoint at the end), for `--steps` steps. Measured from outside the loop, by wrapping
the job's loader, step and checkpoint manager:

  prepare_s     preparing (or opening) the dataset; job_s: building the job (the image
                cache is written here on first use)
  first_step_s  the first step: tracing, compiling and running it (the compile time)
  views_per_s   steady state: 2 x batch x steps / wall time from the end of step
                `--skip` to the end of the last step (the device synchronised at both
                ends), loader, host-to-device copies and the loop's checks included
  loader_wait   the share of that wall time spent blocked in the loader's next(): an
                upper bound on the time the device waited for input (JAX's asynchronous
                dispatch lets the device run the previous step meanwhile)
  ckpt_save_s   the final checkpoint: Orbax's blocking part (save) + the rest (wait)

One JSON row is written to --jsonl (flushed at once) after preparing the data and one
when the run is measured, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock


from benchmarks import common, flops
from cxr_jax import platform as cxr_platform


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='resnet50')
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--res', type=int, default=224, help='view side in pixels')
  p.add_argument('--store', type=int, default=256, help='stored phantom side in pixels')
  p.add_argument('--num', type=int, default=512, help='phantom images to prepare')
  p.add_argument('--batch', type=int, default=128, help='images per step (2 views each)')
  p.add_argument('--method', default='simclr')
  p.add_argument('--dtype', default='bfloat16', choices=('float32', 'bfloat16'))
  p.add_argument('--steps', type=int, default=60)
  p.add_argument('--skip', type=int, default=5,
                 help='steps left out of the steady-state window (compile, warm-up)')
  p.add_argument('--worker_count', type=int, default=0, help='Grain worker processes')
  p.add_argument('--data_dir', default='', help='TFDS data_dir (default: a temporary one)')
  p.add_argument('--workdir', default='', help='checkpoints (default: a temporary one)')
  p.add_argument('--jsonl', default='', help='append the result rows here')
  p.add_argument('--part', default='train', help='the rows\' part name')
  return p.parse_args(argv)


def config_for(a):
  """configs/default.py reduced to one pretraining stage of the asked size, with the
  model and optimiser of configs/paper.py's real-data path."""
  from configs import common as cfg
  from configs import default
  from cxr_jax import ssl
  c = default.get_config()
  c.phantom = f'size={a.store},num_unlabeled={a.num},num_train=16,num_val=16,num_test=16,seed=0'
  c.model.update(dict(name=a.model, width=a.width, stem='imagenet', dtype=a.dtype))
  c.pretrain.method = a.method
  c.pretrain[a.method] = ssl.get_method(a.method).DEFAULTS.copy_and_resolve_references()
  c.pretrain.monitor_every = 0
  c.pretrain.optimizer = cfg.optimizer_config('lars', lr=0.3, base_batch_size=256,
                                              lr_scaling='linear', warmup_steps=0,
                                              weight_decay=1e-6)
  c.pretrain.stages = [cfg.stage('throughput', cfg.data('phantom', 'unlabeled', c.phantom),
                                 steps=a.steps, batch_size=a.batch, image_size=a.res,
                                 strength=1.0, temperature=0.2)]
  c.checkpoint_every = a.steps  # one save, at the end: timed on its own
  c.log_every = 10
  c.worker_count = a.worker_count
  return c


class _TimedIterator:
  """The loader's iterator, with the seconds spent in each next() recorded; its position
  (get_state/set_state/start_prefetch, as the checkpoint reads and restores it) is the
  wrapped iterator's."""

  def __init__(self, parent, waits: list):
    self._parent, self._waits = parent, waits

  def __iter__(self):
    return self

  def __next__(self):
    t0 = time.perf_counter()
    batch = next(self._parent)
    self._waits.append(time.perf_counter() - t0)
    return batch

  def __getattr__(self, name):  # get_state, set_state, start_prefetch, ...
    return getattr(self._parent, name)


class _TimedLoader:
  def __init__(self, loader, waits: list):
    self._loader, self._waits = loader, waits

  def __iter__(self):
    return _TimedIterator(iter(self._loader), self._waits)


class _TimedManager:
  """An Orbax CheckpointManager whose save() and wait_until_finished() are timed."""

  def __init__(self, mgr, seconds: dict):
    self._mgr, self._seconds = mgr, seconds

  def __getattr__(self, name):
    return getattr(self._mgr, name)

  def save(self, *args, **kwargs):
    t0 = time.perf_counter()
    out = self._mgr.save(*args, **kwargs)
    self._seconds['save'] = self._seconds.get('save', 0.0) + time.perf_counter() - t0
    return out

  def wait_until_finished(self):
    t0 = time.perf_counter()
    self._mgr.wait_until_finished()
    self._seconds['wait'] = self._seconds.get('wait', 0.0) + time.perf_counter() - t0


def main(argv=None):
  a = _args(argv)
  cxr_platform.setup()
  import jax
  from configs import common as cfg
  from cxr_jax import pretraining
  from cxr_jax.data import pipeline
  from cxr_jax.train import loop, sharding

  facts = common.machine_facts()
  common.print_facts(facts)
  own_dirs = []
  data_dir = a.data_dir or tempfile.mkdtemp(prefix='cxr_throughput_tfds_')
  workdir = a.workdir or tempfile.mkdtemp(prefix='cxr_throughput_run_')
  own_dirs += [d for d, given in ((data_dir, a.data_dir), (workdir, a.workdir)) if not given]
  shutil.rmtree(Path(workdir) / 'pretrain', ignore_errors=True)  # a fresh start, not a resume
  config = config_for(a)
  base = dict(part=a.part, contender='train loop', model=a.model, width=a.width,
              method=a.method, res=a.res, batch=a.batch, dtype=a.dtype,
              backend=facts['backend'], device=facts['device'])

  t0 = time.perf_counter()
  pipeline.get_builder(cfg.data('phantom', 'unlabeled', config.phantom), Path(data_dir))
  prepare_s = time.perf_counter() - t0
  common.write_row(a.jsonl, dict(base, status='partial', prepare_s=prepare_s, images=a.num,
                                 store=a.store,
                                 note=f'prepared {a.num} phantoms at {a.store} px'))

  mesh = sharding.make_mesh()
  t0 = time.perf_counter()
  job = pretraining.pretrain_job(config, 0, None, mesh, Path(workdir), Path(data_dir))
  job_s = time.perf_counter() - t0

  waits, ckpt, marks = [], {}, {}
  step_fn = job.train_step

  def timed_step(state, batch):
    n = len(marks.get('ends', []))
    t = time.perf_counter()
    state, metrics = step_fn(state, batch)
    if n == 0 or n + 1 == a.skip or n + 1 == a.steps:  # sync only at the window's edges
      jax.block_until_ready(metrics['loss'])
    now = time.perf_counter()
    if n == 0:
      marks['first_step_s'] = now - t
      # the jitted step of this view size (ResizingStep keeps one per size)
      marks['flops'] = flops.count(step_fn._steps[a.res], state, batch)
    marks.setdefault('ends', []).append(now)
    marks.setdefault('waits_at', []).append(len(waits))
    return state, metrics

  timed = dataclasses.replace(job, train_step=timed_step, loader=_TimedLoader(job.loader, waits))
  make_manager = loop.checkpoint_manager
  writer = loop.MetricWriter(Path(workdir))
  t0 = time.perf_counter()
  with mock.patch.object(loop, 'checkpoint_manager',
                         lambda *args, **kw: _TimedManager(make_manager(*args, **kw), ckpt)):
    loop.run_job(timed, writer)
  run_s = time.perf_counter() - t0
  writer.close()

  ends = marks['ends']
  first, last = min(a.skip, len(ends) - 1) - 1, len(ends) - 1
  window_s = ends[last] - ends[first]
  # waits of the steps after `first`: next() for step k is called before step k runs
  waited = sum(waits[marks['waits_at'][first]:marks['waits_at'][last]])
  steps = last - first
  step_s = window_s / steps
  row = dict(base, status='ok', steps=steps, step_ms=1e3 * step_s,
             views_per_s=2 * a.batch / step_s, loader_wait=waited / window_s,
             compile_s=marks['first_step_s'], prepare_s=prepare_s, job_s=job_s,
             ckpt_save_s=ckpt.get('save', 0.0) + ckpt.get('wait', 0.0),
             ckpt_blocking_s=ckpt.get('save', 0.0), run_s=run_s,
             flops_per_step=marks['flops'], images=a.num, store=a.store,
             worker_count=a.worker_count,
             note=f'{steps} steps after {first + 1}; {a.num} phantoms at {a.store} px')
  mem = common.device_memory_gib()
  if mem is not None:
    row['device_peak_gib'] = mem
  common.write_row(a.jsonl, row)
  for d in own_dirs:
    shutil.rmtree(d, ignore_errors=True)
  return row


if __name__ == '__main__':
  main()
