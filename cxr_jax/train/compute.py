"""What pretraining costs: FLOPs of a step from XLA's cost analysis, per stage and regime.

    step_flops(fn, *args)          FLOPs of one call of a step function at the shapes of args
    note_lowered(key, size, lowered)  a count taken from a step's own lowering (no extra trace)
    job_flops(job, sizes)          a pretraining Job's FLOPs per step at each view size
    StageFlops                     per-stage FLOPs per step (memoised), stage totals
    stage_record(...)              what <workdir>/<folder>/<stage>/compute.json holds

FLOPs are XLA's HLO cost analysis of the step's program (forward, backward, optimizer
update, augmentation on the device) as lowered for the CPU backend, whatever the backend
that runs it: on GPU, XLA's analysis does not count the convolutions it hands to cuDNN
(it reported 1e11 FLOP for a ResNet-50 step of ~6e12), while the CPU lowering keeps every
convolution and dot. Nothing is compiled: the unoptimised module is analysed (a trace and a
lowering, charged to 'compile' in the time account). On the CPU backend the step's own
lowering is that module: `pretraining.ResizingStep` hands it to `note_lowered` before
compiling it, so a run on CPU counts its steps without tracing them a second time.
XLA counts the multiply-adds that touch real pixels: a 'SAME'-padded convolution counts a
little less than the textbook 2·H_out·W_out·K·K·C_in·C_out per image, which counts the
padding too. The count is deterministic for a given program and JAX version (the model's
own choices by backend, e.g. `models/resnet.py`'s CPU batch norm as dots, change it by
well under 1%).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from cxr_jax.train import workdir as workdir_lib

FILE = 'compute.json'
SOURCE = 'XLA cost analysis of the step lowered for the CPU backend (cxr_jax/train/compute.py)'


def _cpu_spec(x) -> jax.ShapeDtypeStruct:
  cpu = jax.local_devices(backend='cpu')[0]  # this process's: lowering needs no other
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                              sharding=jax.sharding.SingleDeviceSharding(cpu))


def step_flops(fn: Callable, *args) -> float:
  """FLOPs of one call `fn(*args)`: XLA's cost analysis of its program lowered for the CPU
  backend at the shapes and dtypes of `args` (arrays, ShapeDtypeStructs or pytrees of
  them; the global shapes: the count is for the whole batch). A jitted `fn` is analysed
  through the function it wraps (a step's finite check, `loop.checked`, is counted: it is
  part of the program that runs)."""
  if hasattr(fn, 'lower'):  # jax.jit's wrapper
    fn = fn.__wrapped__
  specs = jax.tree_util.tree_map(_cpu_spec, args)
  return lowered_flops(jax.jit(fn).lower(*specs), getattr(fn, '__name__', fn))


def lowered_flops(lowered, name='the step') -> float:
  """FLOPs of a `jax.stages.Lowered` program: XLA's cost analysis of its unoptimised
  module (compiled only where that analysis is unavailable)."""
  cost = None
  try:
    cost = lowered.cost_analysis()  # the unoptimised module: no compilation
  except NotImplementedError:
    pass
  if not cost:
    cost = lowered.compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # one dict per program in some JAX versions
    cost = cost[0]
  flops = float(cost.get('flops', -1.0)) if cost else -1.0
  if not flops > 0:
    raise ValueError(f'XLA\'s cost analysis gave no FLOP count for {name}: {cost}')
  return flops


def job_flops(job, sizes) -> dict[int, float]:
  """{view size: FLOPs of one step} of a pretraining `loop.Job` whose train_step has
  `make_sized_step(size)` (the unjitted step at a view size) and `input_spec` (a global
  batch of images as ShapeDtypeStructs): `pretraining.ResizingStep`. The state's shapes
  come from the job's init_state without running it (`jax.eval_shape`)."""
  state = jax.eval_shape(job.init_state)
  step = job.train_step
  return {int(s): step_flops(step.make_sized_step(int(s)), state, step.input_spec)
          for s in np.unique(np.asarray(sizes))}


def total_flops(per_step: dict[int, float], sizes) -> float:
  """FLOPs of a stage whose step t runs at sizes[t]."""
  values, counts = np.unique(np.asarray(sizes), return_counts=True)
  return float(sum(per_step[int(v)] * int(c) for v, c in zip(values, counts)))


class StageFlops:
  """FLOPs per step of the stages of one config, counted once per (stage, view size).

  build_job(index) -> the stage's Job (its step and state shapes; never run);
  sizes_of(index, steps) -> [steps] view sizes of the stage run for `steps` steps;
  key(index) -> what the count depends on (model, method, stage settings but its length):
  stages with equal keys share counts (the ssl stage alone and in the curriculum)."""

  def __init__(self, build_job: Callable, sizes_of: Callable, key: Callable):
    self._build_job, self.sizes_of, self._key = build_job, sizes_of, key
    self._memo: dict[str, dict[int, float]] = {}
    self._jobs: dict[int, object] = {}

  def seed(self, index: int, per_step: dict[int, float]):
    """Counts known already (a compute.json of the same key)."""
    self._memo.setdefault(self._key(index), {}).update({int(k): v for k, v in per_step.items()})

  def per_step(self, index: int, sizes, trace: bool = True) -> dict[int, float] | None:
    """{size: FLOPs per step} of stage `index` at `sizes`; with trace=False, None where a
    count would need a trace of its own (not counted by this process's steps or before)."""
    key = self._key(index)
    known = self._memo.setdefault(key, {})
    missing = sorted({int(s) for s in np.asarray(sizes)} - set(known))
    if missing:  # counted by a step already, or an earlier run (tracing costs seconds)
      known.update(cached_counts(key, missing))
      missing = sorted(set(missing) - set(known))
    if missing and not trace:
      return None
    if missing:
      if index not in self._jobs:
        self._jobs[index] = self._build_job(index)
      counted = job_flops(self._jobs[index], missing)
      known.update(counted)
      store_counts(key, counted)
    return {int(s): known[int(s)] for s in np.unique(np.asarray(sizes))}

  def stage_total(self, index: int, steps: int) -> float:
    """FLOPs of stage `index` run for `steps` steps (its schedules stretched over them)."""
    sizes = self.sizes_of(index, steps)
    return total_flops(self.per_step(index, sizes), sizes)

  def key(self, index: int) -> str:
    return self._key(index)


# Counts kept beside JAX's persistent compilation cache (jax_compilation_cache_dir, per
# user; none when it is off), so a repeated run or another workdir of the same stage
# does not trace its steps again only to count them. Keyed by the stage's key (model,
# method, stage settings, JAX version, backend), the view size and a digest of this
# package's source, so a change of code counts afresh.
CACHE_FILE = 'cxr_jax_flops.json'


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
  """sha256 of the package's Python sources (what a step's program is traced from)."""
  root = Path(__file__).resolve().parents[1]
  h = hashlib.sha256()
  for path in sorted(root.rglob('*.py')):
    h.update(str(path.relative_to(root)).encode())
    h.update(path.read_bytes())
  return h.hexdigest()[:16]


def _cache_folder() -> str | None:
  return jax.config.jax_compilation_cache_dir


def _cache_path() -> Path | None:
  folder = _cache_folder()
  return Path(folder) / CACHE_FILE if folder else None


def _cache_key(key: str, size: int) -> str:
  return f'{key}/{code_digest()}/{int(size)}'


def _read_cache(path: Path) -> dict:
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError):  # absent, or torn by a crash: it is only a cache
    return {}
  return data if isinstance(data, dict) else {}


# Counts this process took from its steps' own lowerings (`note_lowered`), by _cache_key.
_lowered: dict[str, float] = {}


def counts_on_the_step() -> bool:
  """Whether a step's own lowering is the module `step_flops` analyses: on the CPU
  backend (elsewhere the step is lowered for its accelerator, and counted apart)."""
  return jax.default_backend() == 'cpu'


def note_lowered(key: str, size: int, lowered) -> float:
  """Counts a step of stage key `key` at view size `size` from its own lowering (the
  program about to be compiled, on the CPU backend), for this process's counters and the
  cache file; returns the count."""
  flops = lowered_flops(lowered, f'the step of stage {key} at {size} px')
  _lowered[_cache_key(key, size)] = flops
  store_counts(key, {int(size): flops})
  return flops


def cached_counts(key: str, sizes) -> dict[int, float]:
  """{size: FLOPs per step} of the sizes counted already: by this process's steps
  (`note_lowered`) or by an earlier run (the cache file)."""
  found = {int(s): _lowered.get(_cache_key(key, s)) for s in sizes}
  path = _cache_path()
  if path is not None and not all(found.values()):
    data = _read_cache(path)
    found = {s: v or data.get(_cache_key(key, s)) for s, v in found.items()}
  return {s: float(v) for s, v in found.items() if isinstance(v, (int, float)) and v > 0}


def store_counts(key: str, counts: dict[int, float]):
  """Adds counts to the cache file (best effort: a failed write only costs a recount)."""
  path = _cache_path()
  if path is None or not counts:
    return
  data = _read_cache(path)
  data.update({_cache_key(key, s): float(v) for s, v in counts.items()})
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_text(path, json.dumps(data, sort_keys=True))
  except OSError:
    pass


def matched_steps_by_flops(target_flops: float, stage_total: Callable[[int], float],
                           steps: int) -> int:
  """The fewest steps n of a stage whose total FLOPs (`stage_total(n)`) reach
  `target_flops`, searched from `steps`: n = ceil(target / FLOPs per step); with a
  progressive-resizing schedule, whose mean FLOPs per step depend on n, repeated to a
  fixed point, then moved by single steps to the fewest that reach the target."""
  n = max(1, steps)
  for _ in range(20):
    m = max(1, math.ceil(target_flops / (stage_total(n) / n)))
    if m == n:
      break
    n = m
  while n > 1 and stage_total(n - 1) >= target_flops:
    n -= 1
  while stage_total(n) < target_flops:
    n += 1
  return n


def stage_record(stage: str, folder: str, steps: int, batch_size: int, views_per_image: int,
                 per_step: dict[int, float], sizes, key: str, wall_s: float) -> dict:
  """The content of a stage's compute.json: images (steps × global batch), views (each
  image's network inputs counted), FLOPs per step per view size, the stage's FLOPs and its
  wall time so far (all process starts; `timing`)."""
  values, counts = np.unique(np.asarray(sizes), return_counts=True)
  images = int(steps) * int(batch_size)
  return {'stage': stage, 'folder': folder, 'steps': int(steps), 'batch_size': int(batch_size),
          'images': images, 'views_per_image': int(views_per_image),
          'views': images * int(views_per_image),
          'flops_per_step': {str(int(s)): per_step[int(s)] for s in values},
          'steps_per_size': {str(int(s)): int(c) for s, c in zip(values, counts)},
          'flops': total_flops(per_step, sizes), 'flops_source': SOURCE, 'key': key,
          'wall_s': float(wall_s)}


def read_record(directory: Path) -> dict | None:
  path = Path(directory) / FILE
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except ValueError:
    return None


def write_record(directory: Path, record: dict):
  Path(directory).mkdir(parents=True, exist_ok=True)
  workdir_lib.write_text(Path(directory) / FILE, json.dumps(record, indent=1))


def regime_total(records: list[dict]) -> dict:
  """A regime's compute: the sums of its stages' records."""
  keys = ('steps', 'images', 'views', 'flops', 'wall_s')
  return {k: sum(r[k] for r in records) for k in keys} | {'stages': [r['stage'] for r in records]}


def format_flops(flops: float) -> str:
  for unit, scale in (('PFLOP', 1e15), ('TFLOP', 1e12), ('GFLOP', 1e9), ('MFLOP', 1e6)):
    if flops >= scale:
      return f'{flops / scale:.3g} {unit}'
  return f'{flops:.3g} FLOP'
