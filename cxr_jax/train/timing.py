"""Where a run's wall time goes: an account by job and phase, kept in <workdir>/timing.json.

Phases (`PHASES`):
  data        preparing datasets (TFDS prepare), image caches, building loaders, reading
              the labeled splits
  compile     JAX tracing, lowering to StableHLO and XLA compilation (or reading the
              persistent compilation cache), from JAX's own monitoring events
  train       the step loop, less the compilation, evaluation and checkpoints inside it
              (it includes waiting for the input pipeline and for the device at the
              loop's existing sync points)
  eval        pretraining monitors, validation during fine-tuning, probes, test scoring,
              Grad-CAM analyses
  checkpoint  Orbax saves (the synchronous part, and the wait for the background writes
              at the end of a job) and restores
  report      writing report.md
  other       the rest (config checks, building meshes and programs, host bookkeeping)

The account is exclusive: at any moment exactly one (job, phase) pair is charged, the one
at the top of a stack of `phase(...)` contexts, and a compilation event moves its duration
from the phase it happened in to 'compile' of the same job. So the phases of one process
start add up to its wall time, by construction. Compilation is measured by JAX's events
(`COMPILE_EVENTS`) as time spans whose overlaps are merged (a nested jit's tracing happens
inside its caller's), counted only on the thread that owns the account (the one that runs
the plan; no phase is charged for work done concurrently in other threads).

Cheap by design: nothing here touches the device; `phase` costs two `perf_counter` calls,
and the step loop runs inside one phase (no per-step bookkeeping).

timing.json holds one entry per process start ('sessions', appended; a resumed run adds
one) and their sum ('total'); it is rewritten after every job, so a killed run keeps the
account of its finished jobs.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import threading
import time
import uuid
from pathlib import Path

from jax import monitoring

from cxr_jax.train import workdir as workdir_lib

log = logging.getLogger('cxr_jax')

PHASES = ('data', 'compile', 'train', 'eval', 'checkpoint', 'report', 'other')
# JAX's duration events of a compilation (jax/_src/dispatch.py): tracing to a jaxpr,
# lowering to a StableHLO module, the XLA compilation (a persistent-cache read included)
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')
FILE = 'timing.json'
RUN = ''  # the job name of time spent outside any job (data checks, programs, the report)


class _Spans:
  """The union of time spans seen so far: `add` returns how much of a new span is not
  already covered (a nested trace reported before its enclosing one counts once)."""

  def __init__(self):
    self._spans: list[list[float]] = []  # disjoint, sorted by start

  def add(self, start: float, end: float) -> float:
    if end <= start:
      return 0.0
    covered, kept, merged = 0.0, [], [start, end]
    for s, e in self._spans:
      if e < start or s > end:
        kept.append([s, e])
      else:
        covered += min(e, end) - max(s, start)
        merged = [min(merged[0], s), max(merged[1], e)]
    kept.append(merged)
    kept.sort()
    self._spans = kept[-64:]  # spans end in order: old ones cannot overlap new events
    return (end - start) - covered


class Account:
  """Seconds per (job, phase) of one process start; see the module docstring."""

  def __init__(self):
    self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    self.id = uuid.uuid4().hex
    self.seconds: dict[str, dict[str, float]] = {}
    self._stack = [(RUN, 'other')]
    self._t0 = self._mark = time.perf_counter()
    self._owner = threading.get_ident()
    self._spans = _Spans()
    self._lock = threading.Lock()

  def _charge(self, job: str, phase: str, seconds: float):
    per_job = self.seconds.setdefault(job, {})
    per_job[phase] = per_job.get(phase, 0.0) + seconds

  def _close_interval(self):
    now = time.perf_counter()
    self._charge(*self._stack[-1], now - self._mark)
    self._mark = now

  def push(self, phase: str, job: str | None):
    with self._lock:
      self._close_interval()
      self._stack.append((self._stack[-1][0] if job is None else job, phase))

  def pop(self):
    with self._lock:
      self._close_interval()
      self._stack.pop()

  def compiled(self, start: float, end: float):
    """A compilation span (time.time() seconds) reported by JAX on the owner thread."""
    if threading.get_ident() != self._owner:
      return
    with self._lock:
      seconds = self._spans.add(start, end)
      job, phase = self._stack[-1]
      self._charge(job, phase, -seconds)
      self._charge(job, 'compile', seconds)

  def snapshot(self) -> dict:
    """{'started', 'wall_s', 'jobs': {job: {phase: s}}, 'phases': {phase: s}} so far."""
    with self._lock:
      self._close_interval()
      wall = self._mark - self._t0
      jobs = {job: {p: max(0.0, s) for p, s in phases.items()}  # max: float rounding
              for job, phases in self.seconds.items()}
    return {'id': self.id, 'started': self.started, 'wall_s': wall, 'jobs': jobs,
            'phases': _sum_phases(jobs.values())}


def _sum_phases(tables) -> dict[str, float]:
  out = {p: 0.0 for p in PHASES}
  for table in tables:
    for p, s in table.items():
      out[p] = out.get(p, 0.0) + s
  return out


_account = Account()  # the default: run_job outside a run (tests, tools) charges it
_listening = False


def _on_span(event: str, start: float, end: float, **kwargs):
  del kwargs
  if event in COMPILE_EVENTS:
    _account.compiled(start, end)


def _listen():
  global _listening
  if not _listening:  # once per process: listeners cannot be unregistered by older JAX
    monitoring.register_event_time_span_listener(_on_span)
    _listening = True


def start() -> Account:
  """Starts the account of this process start and returns it."""
  global _account
  _listen()
  _account = Account()
  return _account


@contextlib.contextmanager
def phase(name: str, job: str | None = None):
  """Charges the time inside to `name` of `job` (None: the enclosing phase's job)."""
  if name not in PHASES:
    raise ValueError(f'unknown phase {name!r}; one of {PHASES}')
  _listen()
  account = _account
  account.push(name, job)
  try:
    yield
  finally:
    account.pop()


def job_seconds(job: str) -> dict[str, float]:
  """This process start's seconds per phase of `job` so far."""
  return dict(_account.snapshot()['jobs'].get(job, {}))


def describe(phases: dict[str, float]) -> str:
  """'12.3 s: compile 5.1, train 6.0, ...' (phases with a tenth of a second or more)."""
  total = sum(phases.values())
  parts = [f'{p} {phases[p]:.1f}' for p in PHASES if phases.get(p, 0.0) >= 0.05]
  return f'{total:.1f} s' + (f' ({", ".join(parts)})' if parts else '')


def write(workdir: Path, account: Account | None = None) -> dict:
  """Writes this process start's account into <workdir>/timing.json (replacing its earlier
  entry, keeping those of earlier process starts) with their sum; returns the file's
  content."""
  account = account or _account
  path = Path(workdir) / FILE
  sessions = []
  if path.exists():
    try:
      sessions = json.loads(path.read_text()).get('sessions', [])
    except (ValueError, AttributeError):
      log.warning('%s cannot be read; starting its account afresh', path)
  now = account.snapshot()
  sessions = [s for s in sessions if s.get('id') != account.id] + [now]
  jobs: dict[str, dict[str, float]] = {}
  for s in sessions:
    for job, phases in s.get('jobs', {}).items():
      for p, sec in phases.items():
        jobs.setdefault(job, {})
        jobs[job][p] = jobs[job].get(p, 0.0) + sec
  content = {
      'phases_meaning': 'seconds of wall time by job and phase; each process start appends '
                        'an entry to sessions, total sums them (cxr_jax/train/timing.py)',
      'sessions': sessions,
      'total': {'wall_s': sum(s.get('wall_s', 0.0) for s in sessions), 'jobs': jobs,
                'phases': _sum_phases(jobs.values()), 'sessions': len(sessions)}}
  workdir_lib.write_text(path, json.dumps(content, indent=1))
  return content


def log_summary(content: dict):
  """Logs this process start's and the total's time by phase."""
  session, total = content['sessions'][-1], content['total']
  log.info('time by phase, this process: %.1f s wall; %s', session['wall_s'],
           describe(session['phases']))
  if total['sessions'] > 1:
    log.info('time by phase, all %d process starts: %.1f s wall; %s', total['sessions'],
             total['wall_s'], describe(total['phases']))
