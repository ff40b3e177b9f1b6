"""The one training loop, shared by every pretraining stage and every fine-tuning job.

A `Job` says what to train (initial state, jit-compiled step, data, number of steps,
optional periodic evaluation); `run_job` trains it with Orbax checkpoints under the job's
folder, resuming from the latest one (state, RNG and the Grain iterator together), so a
killed run continues where it stopped. It saves on a step interval, on SIGTERM and at
the end.

What it guarantees when things go wrong:
  * no non-finite state is checkpointed: every step reports `metrics['finite']` (its loss
    and new params, batch_stats, opt_state all finite; `checked` adds it inside the jit),
    and the loop checks every step's flag before each log, evaluation and save (no extra
    host sync). At the first non-finite step n it stops with `NonFiniteError` naming n and
    the last finite checkpoint; the checkpoint of step n-1, the state that diverged, is
    moved aside (resuming from it would replay the same data into the same divergence).
    The error gives the flags that resume with a lower learning rate (`Job.advice`).
  * an unreadable or non-finite checkpoint (a truncated file, an empty _METADATA) is moved
    aside (`<step>.corrupt-<time>`, `<step>.nonfinite-<time>`) with a warning and the job
    resumes from the one before; with none left it starts afresh. A checkpoint that does
    not fit the job's state (another model) is an error: nothing is moved.
  * a full disk stops the job with `workdir.DiskFullError`: one line naming the folder and
    its free space; the next run resumes from the last complete checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
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
from cxr_jax.train import timing
from cxr_jax.train import workdir as workdir_lib

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


class NonFiniteError(workdir_lib.RunError, FloatingPointError):
  """Training diverged: a step's loss or new state was not finite (nothing of it saved)."""


def all_finite(*trees) -> jax.Array:
  """Whether every floating-point leaf of `trees` is finite: a bool scalar, one reduction
  over the leaves that XLA fuses; meant for inside a jit-compiled step."""
  leaves = [x for x in jax.tree_util.tree_leaves(trees)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def checked(step):
  """`step` (state, batch) -> (state, metrics) with metrics['finite']: its loss and its new
  params, batch_stats and opt_state are all finite (what run_job checks before saving)."""
  @functools.wraps(step)
  def with_flag(state, batch):
    state, metrics = step(state, batch)
    flag = all_finite(metrics['loss'], state.params, state.batch_stats, state.opt_state)
    return state, dict(metrics, finite=flag)
  return with_flag


_state_finite = jax.jit(lambda s: all_finite(s.params, s.batch_stats, s.opt_state))


def lower_lr_advice(key: str, lr: float) -> str:
  """What a NonFiniteError advises for a job whose learning rate is config.<key>."""
  return (f'To continue with a lower learning rate, re-run the same command with '
          f'--config.{key}={lr / 10:g} --config.allow_changes={key}')


class MetricWriter:
  """Appends `{"step", "job", "split/metric": value}` lines to metrics.jsonl and writes the
  same scalars as TensorBoard events. Only process 0 writes. The file is opened for each
  line (a metrics.jsonl removed or rotated during the run is created anew), and a line
  torn by a killed run is ended before the next one."""

  def __init__(self, workdir: Path):
    self._active = jax.process_index() == 0
    if self._active:
      from tensorboardX import SummaryWriter  # heavy: only where a writer is made
      self._path = Path(workdir) / 'metrics.jsonl'
      if self._path.exists() and self._path.stat().st_size:
        with open(self._path, 'rb+') as f:
          f.seek(-1, os.SEEK_END)
          if f.read(1) != b'\n':
            f.write(b'\n')
      self._tb = SummaryWriter(str(Path(workdir) / 'tensorboard'))

  def write(self, job: str, step: int, metrics: dict[str, float]):
    if not self._active:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    try:
      with open(self._path, 'a') as f:
        f.write(json.dumps({'step': int(step), 'job': job, **scalars}) + '\n')
    except OSError as e:
      if not workdir_lib.no_space(e):
        raise
      raise workdir_lib.disk_full(job, f'a line of {self._path}', self._path) from None
    for k, v in scalars.items():
      self._tb.add_scalar(f'{job}/{k}', v, int(step))

  def close(self):
    if self._active:
      try:
        self._tb.close()
      except OSError as e:  # never in place of the error that stopped the run
        log.log(logging.INFO if workdir_lib.no_space(e) else logging.WARNING,
                'the TensorBoard events could not be written: %s', e)


@dataclasses.dataclass
class Job:
  name: str                                   # e.g. 'pretrain/cxr' (also the metrics tag)
  directory: Path                             # checkpoints go to <directory>/ckpt
  num_steps: int
  init_state: Callable[[], TrainState]        # a fresh, replicated state
  train_step: Callable                        # (state, global batch) -> (state, metrics with
                                              # 'loss' and 'finite': see `checked`)
  loader: Iterable                           # infinite, per-host batches (Grain)
  mesh: Any
  checkpoint_every: int = 500
  log_every: int = 20
  eval_every: int = 0                         # 0: no periodic evaluation
  evaluate: Callable | None = None            # (state) -> (state, metrics dict)
  keep_checkpoints: int = 2
  advice: str = ''                            # how to go on after a divergence (lower_lr_advice)


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


def checkpoint_dir(directory: Path) -> Path:
  return Path(directory).absolute() / 'ckpt'


def checkpoint_manager(directory: Path, keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      checkpoint_dir(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=('state', 'data'))


def saved_steps(directory: Path) -> list[int]:
  """The steps of the complete checkpoints under <directory>/ckpt, ascending (what Orbax
  is still writing, or failed to, sits in a temporary folder of another name)."""
  ckpt = checkpoint_dir(directory)
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _abstract(state):
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # only in a multi-process run
    multihost_utils.sync_global_devices(name)


def _move_aside(directory: Path, steps: list[int], why: str) -> dict[int, Path]:
  """Renames the checkpoints of `steps` to <step>.<why>-<time> (process 0; every process
  waits for it): kept for inspection, invisible to Orbax."""
  ckpt = checkpoint_dir(directory)
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  moved = {step: ckpt / f'{step}.{why}-{stamp}' for step in steps}
  if jax.process_index() == 0:
    for step, target in moved.items():
      os.rename(ckpt / str(step), target)
  _sync(f'move_aside_{directory}_{steps}')
  return moved


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:300] if text else ""}'


# Orbax's messages when a checkpoint is read into a state of another structure or shape
_MISMATCH = ('tree structures do not match', 'is not compatible with the stored shape')


def _restore(job: Job):
  """(manager, state, iterator): the latest checkpoint that reads back finite, or a
  fresh start; the unusable ones after it are moved aside with a warning."""
  mgr = checkpoint_manager(job.directory, job.keep_checkpoints)
  fresh = job.init_state()
  bad = {}  # step -> 'corrupt' | 'nonfinite'
  for step in reversed(mgr.all_steps()):
    with timing.phase('data'):
      iterator = iter(job.loader)
    try:
      with timing.phase('checkpoint'):
        state = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(fresh)),
            data=grain.checkpoint.CheckpointRestore(iterator)))['state']
    except Exception as e:  # pylint: disable=broad-except
      if any(m in str(e) for m in _MISMATCH):
        mgr.close()
        raise workdir_lib.RunError(
            f'{job.name}: the checkpoint of step {step} under {checkpoint_dir(job.directory)} '
            f'does not fit this job\'s state ({_first_line(e)}): it was written for another '
            'model or optimizer. Resume with the config that wrote it, or use another '
            '--workdir.') from e
      log.warning('%s: the checkpoint of step %d cannot be read (%s)', job.name, step,
                  _first_line(e))
      bad[step] = 'corrupt'
      continue
    if not bool(_state_finite(state)):
      log.warning('%s: the checkpoint of step %d holds non-finite values', job.name, step)
      bad[step] = 'nonfinite'
      continue
    break
  else:
    with timing.phase('data'):
      state, iterator = fresh, iter(job.loader)
  if bad:
    mgr.close()
    for why in ('corrupt', 'nonfinite'):
      for step, target in _move_aside(job.directory,
                                      [s for s, w in bad.items() if w == why], why).items():
        log.warning('%s: moved the checkpoint of step %d aside to %s', job.name, step, target)
    mgr = checkpoint_manager(job.directory, job.keep_checkpoints)
  start = int(state.step)
  if start:  # after moving checkpoints aside, a warning: the run went back further
    log.log(logging.WARNING if bad else logging.INFO,
            '%s: resumed from the checkpoint at step %d', job.name, start)
  elif bad:
    log.warning('%s: no usable checkpoint left: starting this job afresh', job.name)
  return mgr, state, iterator


@contextlib.contextmanager
def _disk_full_as_one_line(job: Job):
  """Turns a checkpoint write that failed for want of space into DiskFullError."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not workdir_lib.no_space(e):
      raise
    ckpt = checkpoint_dir(job.directory)
    steps = saved_steps(job.directory)
    raise workdir_lib.disk_full(job.name, f'a checkpoint under {ckpt}', ckpt,
                                f' from step {steps[-1]}' if steps else '') from None


class _QuietOrbaxErrors(logging.Filter):
  """Drops the tracebacks Orbax logs when a background save fails: the same exception
  reaches run_job at the next save or wait, which reports it (in one line when the disk
  is full) or re-raises it with its traceback."""

  def filter(self, record):
    return not (record.exc_info and record.levelno >= logging.ERROR and
                f'{os.sep}orbax{os.sep}' in record.pathname)


def _drop_closed_loop_callbacks(previous):
  """An unraisable-exception hook that drops `RuntimeError: Event loop is closed`: after a
  failed save, TensorStore's writes still in flight call back into the event loop Orbax
  has closed, and Python would print a traceback for each (hundreds on a full disk)."""
  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == 'Event loop is closed'):
      previous(unraisable)
  hook.drops_closed_loop_callbacks = True
  return hook


@contextlib.contextmanager
def _quiet_orbax_errors():
  if not getattr(sys.unraisablehook, 'drops_closed_loop_callbacks', False):
    # for the rest of the process: the callbacks can come after the error is reported
    sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
  quiet = _QuietOrbaxErrors()
  logger = logging.getLogger('absl')
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def _close(mgr):
  with contextlib.suppress(Exception):  # after an error: the error is what gets reported
    mgr.close()


def _diverged(job: Job, mgr, step: int, loss: float) -> NonFiniteError:
  """The error for a first non-finite step; moves aside the checkpoint it started from."""
  with _disk_full_as_one_line(job):
    mgr.wait_until_finished()
  mgr.close()
  ckpt = checkpoint_dir(job.directory)
  what = (f'the loss was {loss}' if not math.isfinite(loss) else
          f'its update made the weights or optimizer state non-finite (loss {loss:.6g})')
  text = f'{job.name}: training diverged at step {step}: {what}.'
  if step - 1 in saved_steps(job.directory):
    target = _move_aside(job.directory, [step - 1], 'nonfinite')[step - 1]
    text += (f' The checkpoint of step {step - 1}, from which step {step} diverged, was moved '
             f'aside to {target}.')
  steps = saved_steps(job.directory)
  text += (f' The last finite checkpoint, step {steps[-1]}, is kept under {ckpt}; nothing '
           'non-finite was saved.' if steps else
           ' No checkpoint is left: the job starts afresh when re-run.')
  text += (f' {job.advice}.' if job.advice else ' Lower the learning rate to continue.')
  text += ' Re-running the same command unchanged replays the same data and diverges again.'
  return NonFiniteError(text)


def run_job(job: Job, writer: MetricWriter) -> TrainState:
  """Trains `job` to `job.num_steps`, resuming from its latest usable checkpoint if any.

  Its wall time is charged to job.name in the run's time account (`timing`): restores and
  saves to 'checkpoint', evaluation to 'eval', the step loop to 'train', compilation to
  'compile'; the job's account of this process is logged when it ends."""
  before = sum(timing.job_seconds(job.name).values())
  with _quiet_orbax_errors(), timing.phase('other', job=job.name):
    state = _run_job(job, writer)
  phases = timing.job_seconds(job.name)
  if sum(phases.values()) - before >= 0.05:  # not for a job that was already done
    log.info('%s: time %s', job.name, timing.describe(phases))
  return state


def _run_job(job: Job, writer: MetricWriter) -> TrainState:
  mgr, state, iterator = _restore(job)
  start = int(state.step)
  if start >= job.num_steps:
    mgr.close()
    return state
  pending = []  # (step, finite flag, loss) of the steps not yet checked, on the device

  def check():
    """Raises at the first non-finite step since the last check (one host transfer)."""
    flags = jax.device_get([(finite, loss) for _, finite, loss in pending])
    for (step, _, _), (finite, loss) in zip(pending, flags):
      if not (finite and math.isfinite(loss)):
        raise _diverged(job, mgr, step, float(loss))
    pending.clear()

  def save(step):
    check()  # never a non-finite state (waiting for the steps here is training time)
    with timing.phase('checkpoint'), _disk_full_as_one_line(job):
      mgr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)),
               force=True)

  bar = tqdm(total=job.num_steps, initial=start, desc=job.name, unit='step',
             disable=jax.process_index() != 0, dynamic_ncols=True, leave=False,
             file=sys.stderr, mininterval=1.0)
  last_time, last_step = time.perf_counter(), start
  try:
    with _Interrupt() as interrupt, timing.phase('train'):
      for step in range(start, job.num_steps):
        batch = sharding.to_global(next(iterator), job.mesh)
        state, metrics = job.train_step(state, batch)
        done = step + 1
        if 'finite' not in metrics:
          raise TypeError(f'{job.name}: the train step must report metrics["finite"] '
                          '(wrap it with loop.checked)')
        pending.append((done, metrics.pop('finite'), metrics['loss']))
        bar.update(1)
        if done % job.log_every == 0 or done == job.num_steps:
          check()
          metrics = jax.device_get(metrics)
          now = time.perf_counter()
          metrics['steps_per_sec'] = (done - last_step) / max(now - last_time, 1e-9)
          last_time, last_step = now, done
          writer.write(job.name, done, {f'train/{k}': v for k, v in metrics.items()})
          bar.set_postfix(loss=f'{float(metrics["loss"]):.4f}', refresh=False)
        if job.evaluate is not None and job.eval_every and (
            done % job.eval_every == 0 or done == job.num_steps):
          check()
          with timing.phase('eval'):
            state, eval_metrics = job.evaluate(state)
          writer.write(job.name, done, eval_metrics)
        if done % job.checkpoint_every == 0 or done == job.num_steps or interrupt.requested:
          save(done)
        if interrupt.requested:
          with timing.phase('checkpoint'), _disk_full_as_one_line(job):
            mgr.wait_until_finished()
          mgr.close()
          bar.close()
          log.warning('%s: stopped by SIGTERM at step %d after saving a checkpoint', job.name,
                      done)
          raise SystemExit(143)
    with timing.phase('checkpoint'), _disk_full_as_one_line(job):
      mgr.wait_until_finished()
  except BaseException:
    _close(mgr)
    raise
  finally:
    bar.close()
  mgr.close()
  return state


def fresh_rng(seed: int) -> jax.Array:
  return jnp.asarray(jax.random.key_data(jax.random.key(seed)))
