"""Helpers shared by the benchmarks: machine facts, timing, matmul rate, memory.

Every benchmark prints the facts a figure needs to be read later (machine, versions,
date, load average), because the machines these run on are shared and noisy.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable


def load_average() -> str:
  """'1-min 5-min 15-min' load averages (other users of the machine skew timings)."""
  try:
    return ' '.join(f'{v:.2f}' for v in os.getloadavg())
  except OSError:
    return 'n/a'


def machine_facts() -> dict:
  """Machine, versions and date, for the header of every figure."""
  import jax
  facts = {
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'host': platform.node(),
      'cpu': _cpu_name(),
      'cores': os.cpu_count(),
      'python': sys.version.split()[0],
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'device': str(jax.devices()[0].device_kind),
      'device_count': jax.device_count(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'load': load_average(),
  }
  try:
    import torch
    facts['torch'] = torch.__version__
    facts['torch_threads'] = torch.get_num_threads()
  except ImportError:
    pass
  return facts


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def print_facts(facts: dict):
  print('# ' + ', '.join(f'{k}={v}' for k, v in facts.items()))


def peak_rss_gib() -> float:
  """Peak resident memory of this process so far, GiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_memory_gib() -> float | None:
  """Peak bytes in use on device 0, GiB, where the backend reports it (GPU/TPU)."""
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else peak / 2**30


def time_call(fn: Callable[[], object], sync: Callable[[object], object]) -> float:
  """Seconds for fn() including waiting for its result with sync(result)."""
  t0 = time.perf_counter()
  sync(fn())
  return time.perf_counter() - t0


def ab_rounds(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
  """Runs each contender's one-step timer in turn, `rounds` times (A B A B ...).

  Alternating in one process makes both sides see the same background load, which on a
  shared machine matters more than the number of repetitions.
  """
  times = {name: [] for name in contenders}
  for _ in range(rounds):
    for name, one in contenders.items():
      times[name].append(one())
  return times


def median(xs) -> float:
  return statistics.median(xs)


def matmul_rate(dtype: str = 'float32', n: int | None = None, repeats: int = 5) -> float:
  """The machine's measured dense matmul rate, FLOP/s: best of `repeats` n x n x n dots.

  n defaults to 2048 on CPU and 8192 on accelerators (big enough to saturate either).
  """
  import jax
  import jax.numpy as jnp
  if n is None:
    n = 2048 if jax.default_backend() == 'cpu' else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = min(time_call(lambda: dot(a, b), lambda r: r.block_until_ready())
             for _ in range(repeats))
  return 2.0 * n**3 / best


def torch_matmul_rate(dtype: str = 'float32', n: int = 2048, repeats: int = 5) -> float:
  """The same measurement through torch (its BLAS may differ from XLA's)."""
  import torch
  dev = 'cuda' if torch.cuda.is_available() else 'cpu'
  dt = getattr(torch, dtype)
  a = torch.randn(n, n, device=dev, dtype=dt)
  b = torch.randn(n, n, device=dev, dtype=dt)
  sync = (lambda r: torch.cuda.synchronize()) if dev == 'cuda' else (lambda r: r)
  sync(a @ b)
  best = min(time_call(lambda: a @ b, sync) for _ in range(repeats))
  return 2.0 * n**3 / best


def write_row(path: str | None, row: dict):
  """Appends one result row to a JSON-lines file at once (flushed and synced, so a
  process killed later keeps it) and prints it; path None or '': print only."""
  line = json.dumps(row, sort_keys=True, default=float)
  if path:
    with open(path, 'a+b') as f:
      f.seek(0, os.SEEK_END)
      if f.tell():  # a process killed mid-line must not swallow this row
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b'\n':
          f.write(b'\n')
      f.write((line + '\n').encode())
      f.flush()
      os.fsync(f.fileno())
  print('ROW ' + line, flush=True)
