"""The one training loop, shared by every pretraining stage and every fine-tuning job.

A `Job` says what to train (initial state, jit-compiled step, data, number of steps,
optional periodic evaluation); `run_job` trains it with Orbax checkpoints under the job's
folder, resuming from the latest one (state, RNG and the Grain iterator together), so a
killed run continues where it stopped. It saves on a step interval, on SIGTERM and at
the end; a non-finite loss stops the job with an error naming the job and step, and keeps
the last good checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import flax
import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from tqdm import tqdm

from cxr_jax.train import sharding

log = logging.getLogger('cxr_jax')


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `extra` holds method state (target network,
  queue, best fine-tuned weights...); `rng` is a raw uint32 key, folded with `step`."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extra: Any
  rng: jax.Array


class MetricWriter:
  """Appends `{"step", "job", "split/metric": value}` lines to metrics.jsonl and writes the
  same scalars as TensorBoard events. Only process 0 writes."""

  def __init__(self, workdir: Path):
    self._active = jax.process_index() == 0
    if self._active:
      from tensorboardX import SummaryWriter
      self._jsonl = open(Path(workdir) / 'metrics.jsonl', 'a')
      self._tb = SummaryWriter(str(Path(workdir) / 'tensorboard'))

  def write(self, job: str, step: int, metrics: dict[str, float]):
    if not self._active:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({'step': int(step), 'job': job, **scalars}) + '\n')
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(f'{job}/{k}', v, int(step))

  def close(self):
    if self._active:
      self._jsonl.close()
      self._tb.close()


@dataclasses.dataclass
class Job:
  name: str                                   # e.g. 'pretrain/cxr' (also the metrics tag)
  directory: Path                             # checkpoints go to <directory>/ckpt
  num_steps: int
  init_state: Callable[[], TrainState]        # a fresh, replicated state
  train_step: Callable                        # (state, global batch) -> (state, metrics)
  loader: Iterable                           # infinite, per-host batches (Grain)
  mesh: Any
  checkpoint_every: int = 500
  log_every: int = 20
  eval_every: int = 0                         # 0: no periodic evaluation
  evaluate: Callable | None = None            # (state) -> (state, metrics dict)
  keep_checkpoints: int = 2


class _Interrupt:
  """Turns SIGTERM into a flag, so the loop saves a checkpoint before exiting."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def checkpoint_manager(directory: Path, keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      Path(directory).absolute() / 'ckpt',
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=('state', 'data'))


def _abstract(state):
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)


def run_job(job: Job, writer: MetricWriter) -> TrainState:
  """Trains `job` to `job.num_steps`, resuming from its latest checkpoint if any."""
  mgr = checkpoint_manager(job.directory, job.keep_checkpoints)
  state = job.init_state()
  iterator = iter(job.loader)
  latest = mgr.latest_step()
  if latest is not None:
    restored = mgr.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state)),
        data=grain.checkpoint.CheckpointRestore(iterator)))
    state = restored['state']
    log.info('%s: resumed from the checkpoint at step %d', job.name, latest)
  start = int(state.step)
  if start >= job.num_steps:
    mgr.close()
    return state

  def save(step):
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           data=grain.checkpoint.CheckpointSave(iterator)),
             force=True)

  bar = tqdm(total=job.num_steps, initial=start, desc=job.name, unit='step',
             disable=jax.process_index() != 0, dynamic_ncols=True, leave=False,
             file=sys.stderr, mininterval=1.0)
  last_time, last_step = time.perf_counter(), start
  with _Interrupt() as interrupt:
    for step in range(start, job.num_steps):
      batch = sharding.to_global(next(iterator), job.mesh)
      state, metrics = job.train_step(state, batch)
      done = step + 1
      bar.update(1)
      if done % job.log_every == 0 or done == job.num_steps:
        metrics = jax.device_get(metrics)
        loss = float(metrics['loss'])
        if not math.isfinite(loss):
          mgr.close()
          raise FloatingPointError(
              f'{job.name}: the loss became {loss} at step {done}; the last good checkpoint '
              f'(step {mgr.latest_step()}) is kept under {job.directory}. Lower the learning '
              f'rate or the augmentation strength and re-run the same command to resume.')
        now = time.perf_counter()
        metrics['steps_per_sec'] = (done - last_step) / max(now - last_time, 1e-9)
        last_time, last_step = now, done
        writer.write(job.name, done, {f'train/{k}': v for k, v in metrics.items()})
        bar.set_postfix(loss=f'{loss:.4f}', refresh=False)
      if job.evaluate is not None and job.eval_every and (
          done % job.eval_every == 0 or done == job.num_steps):
        state, eval_metrics = job.evaluate(state)
        writer.write(job.name, done, eval_metrics)
      if done % job.checkpoint_every == 0 or done == job.num_steps or interrupt.requested:
        save(done)
      if interrupt.requested:
        mgr.wait_until_finished()
        mgr.close()
        bar.close()
        log.warning('%s: stopped by SIGTERM at step %d after saving a checkpoint', job.name, done)
        raise SystemExit(143)
  bar.close()
  mgr.wait_until_finished()
  mgr.close()
  return state


def fresh_rng(seed: int) -> jax.Array:
  return jnp.asarray(jax.random.key_data(jax.random.key(seed)))
