"""The share of a run's wall time spent compiling, and which programs compiled.

    python -m benchmarks.compile_share [--programs] -- --config=configs/default.py \
        --workdir=W --compilation_cache_dir=

Runs launch.py in this process with a `jax.monitoring` listener on JAX's compile events
and prints, at exit: the wall time, the seconds of XLA backend compilation and of
tracing + lowering, their share of the wall time, and (with --programs) each compiled
program's name, count and seconds. Pass `--compilation_cache_dir=` (empty: no persistent
cache) to measure a cold run; with a warm cache, backend compilation is replaced by
cache loads (still counted under the same event, much shorter).
"""
from __future__ import annotations

import atexit
import collections
import os
import runpy
import sys
import time

from jax import monitoring

BACKEND = '/jax/core/compile/backend_compile_duration'
TRACE = ('/jax/core/compile/jaxpr_trace_duration',
         '/jax/core/compile/jaxpr_to_mlir_module_duration')


def main():
  args = sys.argv[1:]
  programs = '--programs' in args
  args = [a for a in args if a not in ('--programs', '--')]
  totals = collections.Counter()
  per_program = collections.defaultdict(list)
  start = time.time()

  def on_duration(event, seconds, **kwargs):
    totals[event] += seconds
    if event == BACKEND:
      name = kwargs.get('fun_name', '?')
      per_program[name].append(seconds)
      if programs:  # as it happens, to see which part of the run compiles what
        print(f'[compile] {time.time() - start:7.1f}s {seconds:6.2f}s {name}', file=sys.stderr)

  monitoring.register_event_duration_secs_listener(on_duration)

  def report():
    wall = time.time() - start
    backend = totals[BACKEND]
    trace = sum(totals[e] for e in TRACE)
    print(f'WALL {wall:.1f}s backend_compile {backend:.1f}s trace+lower {trace:.1f}s '
          f'share {(backend + trace) / wall:.3f} programs '
          f'{sum(len(v) for v in per_program.values())}', file=sys.stderr)
    if programs:
      for name, secs in sorted(per_program.items(), key=lambda kv: -sum(kv[1])):
        print(f'  {sum(secs):7.2f}s  x{len(secs):<3d} {name}', file=sys.stderr)

  atexit.register(report)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, root)
  sys.argv = [os.path.join(root, 'launch.py')] + args
  runpy.run_path(sys.argv[0], run_name='__main__')


if __name__ == '__main__':
  main()
