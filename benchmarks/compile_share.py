"""The share of a run's wall time spent compiling, and which programs compiled.

    python -m benchmarks.compile_share [--programs] -- --config=configs/default.py \
        --workdir=W --compilation_cache_dir=

Runs launch.py in this process with a `jax.monitoring` listener on JAX's compile events
and prints, at exit: the wall time, the seconds of XLA backend compilation and of
tracing + lowering on the main thread, their share of the wall time, the seconds compiled
ahead on other threads (overlapping the run; not in the share), and (with --programs) each
program's name, count, backend seconds and tracing + lowering seconds. Pass `--compilation_cache_dir=` (empty: no persistent
cache) to measure a cold run; with a warm cache, backend compilation is replaced by
cache loads (still counted under the same event, much shorter).
"""
from __future__ import annotations

import atexit
import collections
import os
import runpy
import sys
import threading
import time

from jax import monitoring

BACKEND = '/jax/core/compile/backend_compile_duration'
TRACE = ('/jax/core/compile/jaxpr_trace_duration',
         '/jax/core/compile/jaxpr_to_mlir_module_duration')


def main():
  args = sys.argv[1:]
  programs = '--programs' in args
  args = [a for a in args if a not in ('--programs', '--')]
  totals = collections.Counter()  # main thread
  ahead = collections.Counter()  # other threads (compiling ahead)
  per_program = collections.defaultdict(list)
  traced = collections.Counter()
  start = time.time()
  main_thread = threading.get_ident()

  def on_duration(event, seconds, **kwargs):
    on_main = threading.get_ident() == main_thread
    (totals if on_main else ahead)[event] += seconds
    name = kwargs.get('fun_name', '?')
    if event in TRACE:
      traced[name] += seconds
    if event == BACKEND:
      per_program[name].append(seconds)
      if programs:  # as it happens, to see which part of the run compiles what
        where = '' if on_main else ' (ahead)'
        print(f'[compile] {time.time() - start:7.1f}s {seconds:6.2f}s {name}{where}',
              file=sys.stderr)

  monitoring.register_event_duration_secs_listener(on_duration)

  def report():
    wall = time.time() - start
    backend = totals[BACKEND]
    trace = sum(totals[e] for e in TRACE)
    behind = ahead[BACKEND] + sum(ahead[e] for e in TRACE)
    print(f'WALL {wall:.1f}s backend_compile {backend:.1f}s trace+lower {trace:.1f}s '
          f'share {(backend + trace) / wall:.3f} programs '
          f'{sum(len(v) for v in per_program.values())} ahead {behind:.1f}s', file=sys.stderr)
    if programs:
      print('  backend  trace+lower  count  program', file=sys.stderr)
      for name, secs in sorted(per_program.items(), key=lambda kv: -sum(kv[1])):
        print(f'  {sum(secs):7.2f}s {traced[name]:7.2f}s  x{len(secs):<3d} {name}',
              file=sys.stderr)

  atexit.register(report)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, root)
  sys.argv = [os.path.join(root, 'launch.py')] + args
  runpy.run_path(sys.argv[0], run_name='__main__')


if __name__ == '__main__':
  main()
