"""Where the pretraining step's time goes: a jax.profiler trace of one step, grouped by op.

    python -m benchmarks.profile_step --res=128 [--model=resnet18] [--width=1.0] [--batch=64]
        [--method=simclr] [--scope=model|full] [--store=0] [--optimizer=lars]
        [--top=25] [--outdir=/tmp/cxr_profile]

Compiles the same step as `benchmarks.pretrain_step --scope=S`, runs it once to
warm up, traces one more run with `jax.profiler.trace`, and prints the time per HLO op
kind (op names with their '.N' suffix dropped) and the slowest single ops with their HLO
text, from the trace's per-thunk events (XLA's CPU runtime emits one per executed op).
Needs the trace in Chrome JSON form (`*.trace.json.gz`), which jax writes when the
`xprof` package is importable (`pip install xprof`; profiling only, not a dependency).
On CPU, convolutions run through Eigen inside their thunks and are counted there.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

from cxr_jax import platform as cxr_platform


def summarise(trace_path: str, hlo_text: str, top: int = 25) -> None:
  events = json.load(gzip.open(trace_path))['traceEvents']
  ops = [e for e in events if e.get('ph') == 'X' and 'dur' in e
         and not e['name'].startswith('$') and 'Thunk' not in e['name']
         and 'Pjit' not in e['name']]
  by_kind, count, by_op = collections.Counter(), collections.Counter(), collections.Counter()
  for e in ops:
    kind = re.sub(r'\.\d+$', '', e['name'])
    by_kind[kind] += e['dur']
    count[kind] += 1
    by_op[e['name']] += e['dur']
  total = sum(by_kind.values())
  print(f'# {len(ops)} op events, {total / 1e3:.1f} ms in ops (threads summed)')
  print(f'{"ms":>9} {"share":>6} {"ops":>5}  kind')
  for kind, us in by_kind.most_common(top):
    print(f'{us / 1e3:9.1f} {us / total:6.1%} {count[kind]:5d}  {kind}')
  print('\n# slowest single ops')
  for name, us in by_op.most_common(min(top, 12)):
    m = re.search(r'%' + re.escape(name) + r' = ([^\n]{0,200})', hlo_text)
    print(f'{us / 1e3:9.1f} ms  {name}: {m.group(1) if m else "?"}')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='resnet18')
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--res', type=int, default=128)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--method', default='simclr', choices=('simclr', 'byol'))
  p.add_argument('--scope', default='model', choices=('full', 'model'),
                 help='full: views cut on the device from --store px images (the training step)')
  p.add_argument('--store', type=int, default=0)
  p.add_argument('--optimizer', default='lars', choices=('lars', 'sgd'))
  p.add_argument('--top', type=int, default=25)
  p.add_argument('--outdir', default='/tmp/cxr_profile')
  a = p.parse_args(argv)
  cxr_platform.setup()
  import jax
  from benchmarks import pretrain_step

  step_args = pretrain_step.parse_args([f'--model={a.model}', f'--width={a.width}', f'--res={a.res}',
                                   f'--batch={a.batch}', f'--method={a.method}',
                                   f'--scope={a.scope}', f'--store={a.store}',
                                   f'--optimizer={a.optimizer}'])
  compiled, fresh_state, inputs, _ = pretrain_step.build_jax(step_args)
  step, state = compiled[a.scope], fresh_state()
  state, metrics = step(state, inputs[a.scope])
  jax.block_until_ready(metrics)
  with jax.profiler.trace(a.outdir):
    state, metrics = step(state, inputs[a.scope])
    jax.block_until_ready(metrics)
  traces = sorted(glob.glob(os.path.join(a.outdir, '**', '*.trace.json.gz'), recursive=True),
                  key=os.path.getmtime)
  if not traces:
    raise SystemExit(f'no *.trace.json.gz under {a.outdir}: install xprof (pip install '
                     'xprof) so that jax.profiler writes the trace in Chrome JSON form')
  summarise(traces[-1], step.as_text(), a.top)


if __name__ == '__main__':
  main()
