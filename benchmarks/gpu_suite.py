"""The GPU check: one call, at most `--budget` seconds (default 470: under 8 minutes),
and a table whatever happens.

    bash benchmarks/gpu_suite.sh [--small] [OUTDIR]      (the entry: installs wheels first)
    python -m benchmarks.gpu_suite [--small] [--budget=S] [--out=DIR]

Parts, most valuable first, each in its own process with its own time limit (sized from
the first H200 run: our R50 step compiles in 24-27 s and runs 42 ms; torch eager 66 ms;
torch.compile did not finish compiling in 120-150 s; 1,024 phantoms at 256 px took 23 s
to prepare):

  ours_r50_simclr      our SimCLR step, ResNet-50, 224 px, bf16, batch 128 (scope model:
                       views given, as benchmarks.pretrain_step --scope=model)
  matmul               the card's bf16 matmul rate (the MFU denominator)
  train_r50            the real pretraining job (benchmarks.train_throughput): views/s,
                       loader wait, compile and checkpoint time, 512 phantoms at 256 px
  torch_eager_r50      the PyTorch reference (benchmarks/torch_reference.py), eager,
                       channels_last + bf16 autocast, same model, loss and optimiser
  r18_simclr           ours and torch eager, ResNet-18, batch 256
  r50_byol             ours and torch eager, BYOL, ResNet-50, batch 128
  torch_compile_r50    torch.compile of the reference, compiled in its own phase; a row
                       that says "did not compile in N s" is a result

Each row goes to OUT/rows.jsonl the moment it is measured (written and synced by the
process that measured it, then printed), so a part killed by its limit keeps what it
had; the parent adds a row for every contender a part did not reach, saying why, and
writes OUT/table.md from the rows at the end. FLOPs are counted from the layer shapes
(benchmarks/flops.py; the same count serves the torch rows of the same model), MFU is
against the matmul rate of the same run.

--small: the whole suite on the CPU in well under a minute (ResNet-18 width 0.125,
32 px, a few steps; the torch parts report "skipped" where torch is absent), run by
tests/test_gpu_suite.py so that it cannot rot.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks import common  # standard library only: the parent stays light

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Part:
  name: str
  kind: str                    # 'step' | 'matmul' | 'train'
  contenders: tuple[str, ...]  # 'ours', 'torch eager', 'torch.compile', ...
  cap_s: float                 # its time limit (less when the budget runs short)
  expect_s: float              # what it should take, from the facts above
  model: str = 'resnet50'
  method: str = 'simclr'
  batch: int = 128


TORCH = ('torch eager', 'torch.compile')

GPU_PARTS = (
    Part('ours_r50_simclr', 'step', ('ours',), 90, 50),
    Part('matmul', 'matmul', ('matmul',), 40, 15),
    Part('train_r50', 'train', ('train loop',), 170, 100),
    Part('torch_eager_r50', 'step', ('torch eager',), 60, 25),
    Part('r18_simclr', 'step', ('ours', 'torch eager'), 75, 45, model='resnet18', batch=256),
    Part('r50_byol', 'step', ('ours', 'torch eager'), 90, 55, method='byol'),
    Part('torch_compile_r50', 'step', ('torch.compile',), 240, 200),
)

# the same parts on the CPU, tiny: every code path in well under a minute
SMALL_PARTS = tuple(dataclasses.replace(p, model='resnet18', batch=16 if p.kind == 'train' else 8,
                                        cap_s=20 if 'torch.compile' in p.contenders else 60,
                                        expect_s=5)
                    for p in GPU_PARTS)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What the parts run at: the GPU figures, or --small's tiny CPU ones."""
  width: float
  res: int
  dtype: str
  steps: int          # timed steps per round
  rounds: int
  warmup: int
  matmul_n: tuple[int, ...]
  train: tuple[str, ...]  # benchmarks.train_throughput's size arguments


GPU = Sizes(1.0, 224, 'bfloat16', 10, 3, 3, (8192, 16384),
            ('--res=224', '--store=256', '--num=512', '--steps=60', '--skip=10'))
SMALL = Sizes(0.125, 32, 'float32', 2, 2, 1, (256,),
              ('--width=0.125', '--res=32', '--store=40', '--num=64', '--steps=6',
               '--skip=2'))


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--small', action='store_true', help='the whole suite, tiny, on the CPU')
  p.add_argument('--out', default='/tmp/gpu_suite')
  p.add_argument('--budget', type=float, default=0,
                 help='total seconds from --started (default 470, --small 150)')
  p.add_argument('--started', type=float, default=0,
                 help='epoch seconds the run started (the shell entry passes its own)')
  p.add_argument('--parts', default='', help='comma-separated part names (default: all)')
  p.add_argument('--cap', action='append', default=[],
                 help='NAME=SECONDS: another time limit for one part')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  return p.parse_args(argv)


# ----------------------------------------------------------------------------- the parts
# (run in a child process: `--child --parts=...`; every row is written as it is measured.
# jax, torch and the project are imported inside the parts: the parent stays light, and
# torch is optional)

def _time_steps(run_one, sync, s: Sizes) -> list[float]:
  """Seconds per step: `rounds` runs of `steps` back-to-back steps, synchronised once
  at the end of each (what training does), after `warmup` steps."""
  for _ in range(s.warmup):
    sync(run_one())
  per_step = []
  for _ in range(s.rounds):
    t0 = time.perf_counter()
    out = None
    for _ in range(s.steps):
      out = run_one()
    sync(out)
    per_step.append((time.perf_counter() - t0) / s.steps)
  return per_step


def _step_row(base: dict, per_step: list[float], batch: int, **extra) -> dict:
  med = statistics.median(per_step)
  return dict(base, status='ok', step_ms=1e3 * med, min_step_ms=1e3 * min(per_step),
              views_per_s=2 * batch / med, **extra)


def _ours(part: Part, s: Sizes, base: dict, jsonl: str):
  """Our step (benchmarks.pretrain_step's build, scope 'model')."""
  import jax
  from benchmarks import pretrain_step
  a = pretrain_step.parse_args([f'--model={part.model}', f'--width={s.width}',
                                f'--res={s.res}', f'--batch={part.batch}',
                                f'--method={part.method}', f'--dtype={s.dtype}',
                                '--optimizer=lars', '--scope=model'])
  compiled, fresh_state, inputs, facts = pretrain_step.build_jax(a)
  c, f = compiled['model'], facts['model']
  state = [fresh_state()]

  def run_one():
    state[0], metrics = c(state[0], inputs['model'])
    return metrics['loss']
  per_step = _time_steps(run_one, jax.block_until_ready, s)
  extra = {'device_peak_gib': common.device_memory_gib()} if jax.default_backend() != 'cpu' else {}
  common.write_row(jsonl, _step_row(base, per_step, part.batch, compile_s=f['compile_s'],
                                    flops_per_step=f['flops'], xla_flops=f['xla_flops'],
                                    **extra))


def _torch(part: Part, s: Sizes, base: dict, jsonl: str, compile: bool):
  """The PyTorch reference, eager or torch.compile'd (compiled by its first call)."""
  import torch
  from benchmarks import torch_reference
  gpu = torch.cuda.is_available()
  t0 = time.perf_counter()
  ts = torch_reference.Step(part.model, s.width, part.method, s.res, part.batch, 'lars',
                            'model', 'cuda' if gpu else 'cpu',
                            amp=gpu and s.dtype == 'bfloat16', channels_last=gpu,
                            compile=compile)
  x = ts.inputs()
  ts.sync(ts(x))
  compile_s = time.perf_counter() - t0
  if compile:  # the compile phase is over: say so before timing
    common.write_row(jsonl, dict(base, status='partial', compile_s=compile_s,
                                 note=f'compiled in {compile_s:.0f} s'))
  per_step = _time_steps(lambda: ts(x), lambda r: ts.sync(r.item()), s)
  extra = {}
  if gpu:
    extra['device_peak_gib'] = torch.cuda.max_memory_allocated() / 2**30
  common.write_row(jsonl, _step_row(base, per_step, part.batch, compile_s=compile_s,
                                    amp=gpu and s.dtype == 'bfloat16', channels_last=gpu,
                                    **extra))


def _matmul(part: Part, s: Sizes, base: dict, jsonl: str):
  import jax
  dtype = 'bfloat16' if jax.default_backend() != 'cpu' else 'float32'
  rates = {n: common.matmul_rate(dtype, n=n, repeats=10) for n in s.matmul_n}
  n = max(rates, key=rates.get)
  common.write_row(jsonl, dict(base, status='ok', dtype=dtype, n=n,
                               matmul_flops_per_s=rates[n],
                               note=', '.join(f'n={k}: {v / 1e12:.1f} TFLOP/s'
                                              for k, v in rates.items())))


def _train(part: Part, s: Sizes, base: dict, jsonl: str):
  from benchmarks import train_throughput
  train_throughput.main([f'--model={part.model}', f'--batch={part.batch}',
                         f'--method={part.method}', f'--dtype={s.dtype}', *s.train,
                         f'--jsonl={jsonl}', f'--part={part.name}'])


def run_parts(parts: list[Part], s: Sizes, jsonl: str):
  """The child: runs `parts` in order, each contender's row written when measured."""
  if any(c not in TORCH for p in parts for c in p.contenders):  # torch alone: no jax here
    from cxr_jax import platform as cxr_platform
    cxr_platform.setup()
    facts = common.machine_facts()
    common.write_row(jsonl, dict(part='facts', contender='facts', status='ok', **{
        k: facts[k] for k in ('date', 'cpu', 'cores', 'python', 'jax', 'backend', 'device',
                              'device_count', 'load', 'torch') if k in facts}))
  has_torch = importlib.util.find_spec('torch') is not None
  for part in parts:
    for contender in part.contenders:
      if contender in TORCH and not has_torch:  # the parent wrote its 'skipped' row
        continue
      base = dict(part=part.name, contender=contender, model=part.model, width=s.width,
                  method=part.method, res=s.res, batch=part.batch, dtype=s.dtype)
      if part.kind == 'train':
        base['res'] = int(next(a for a in s.train if a.startswith('--res=')).split('=')[1])
      common.write_row(jsonl, dict(base, status='started', started_at=time.time()))
      print(f'== {part.name} / {contender}', flush=True)
      try:
        if contender == 'ours':
          _ours(part, s, base, jsonl)
        elif contender in TORCH:
          _torch(part, s, base, jsonl, compile=contender == 'torch.compile')
        elif part.kind == 'matmul':
          _matmul(part, s, base, jsonl)
        else:
          _train(part, s, base, jsonl)
      except Exception as e:  # pylint: disable=broad-except
        # one contender's failure is its row; the others still run
        traceback.print_exc()
        common.write_row(jsonl, dict(base, status='error',
                                     note=f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
                                     if str(e) else type(e).__name__))


# ----------------------------------------------------------------------------- the parent

def read_rows(path: Path) -> list[dict]:
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut by a kill
      continue
  return rows


def _write_row(path: Path, row: dict):
  common.write_row(str(path), row)


def _fill_missing(path: Path, parts: list[Part], why: str, limit: float, ended: float):
  """A row for every contender of `parts` without a final row: what stopped it."""
  rows = read_rows(path)
  for part in parts:
    for contender in part.contenders:
      mine = [r for r in rows if r.get('part') == part.name and r.get('contender') == contender]
      if any(r['status'] in ('ok', 'error', 'skipped') for r in mine):
        continue
      started = [r for r in mine if r['status'] == 'started']
      compiled = [r for r in mine if 'compile_s' in r]
      base = {k: v for k, v in (started or [{}])[-1].items() if k not in ('status', 'started_at')}
      base.update(part=part.name, contender=contender)
      if not started:
        note = f'not reached: {why} ({limit:.0f} s)'
        status = {'limit': 'timeout', 'no time left': 'skipped'}.get(why, 'error')
      elif why != 'limit':
        note, status = f'the process ended ({why}) before this row', 'error'
      elif contender == 'torch.compile' and not compiled:
        note = f'did not compile in {ended - started[-1]["started_at"]:.0f} s'
        status = 'timeout'
      elif compiled:
        note = (f'compiled in {compiled[-1]["compile_s"]:.0f} s; timing did not finish '
                f'in {ended - started[-1]["started_at"]:.0f} s')
        status = 'timeout'
      else:
        note = f'did not finish in {ended - started[-1]["started_at"]:.0f} s'
        status = 'timeout'
      _write_row(path, dict(base, status=status, note=note))


def _run_group(parts: list[Part], small: bool, out: Path, jsonl: Path, limit: float) -> str:
  """Runs `parts` in one child process for at most `limit` s; returns 'ok', 'limit' or
  the exit status."""
  name = parts[0].name if len(parts) == 1 else 'parts'
  cmd = [sys.executable, '-m', 'benchmarks.gpu_suite', '--child', f'--out={out}',
         f'--parts={",".join(p.name for p in parts)}'] + (['--small'] if small else [])
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # torch shares the card
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if small:
    env['JAX_PLATFORMS'] = 'cpu'
    env['CUDA_VISIBLE_DEVICES'] = ''
    # tiny parts repeat programs (ResNet-18 stands in for ResNet-50): compile each once.
    # Not on the GPU, whose compile times are among the results.
    env.setdefault('JAX_COMPILATION_CACHE_DIR', str(out / 'jax_cache'))
    env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  with open(out / f'{name}.log', 'ab') as log:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=None, stderr=log,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
      for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
          os.killpg(proc.pid, sig)
        except ProcessLookupError:
          break
        try:
          proc.wait(timeout=grace)
          break
        except subprocess.TimeoutExpired:
          continue
      return 'limit'
  return 'ok' if rc == 0 else f'exit {rc}'


def _needs_torch(part: Part) -> bool:
  return any(c in TORCH for c in part.contenders)


def main(argv=None):
  a = _args(argv)
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  jsonl = out / 'rows.jsonl'
  parts = SMALL_PARTS if a.small else GPU_PARTS
  sizes = SMALL if a.small else GPU
  if a.parts:
    wanted = a.parts.split(',')
    unknown = set(wanted) - {p.name for p in parts}
    if unknown:
      sys.exit(f'--parts: unknown {sorted(unknown)}; known {[p.name for p in parts]}')
    parts = tuple(p for p in parts if p.name in wanted)
  if a.child:
    return run_parts(list(parts), sizes, str(jsonl))

  if jsonl.exists():  # rows of an earlier run: kept aside, not mixed into this table
    jsonl.rename(out / f'rows.{int(jsonl.stat().st_mtime)}.jsonl')
  caps = dict(c.split('=', 1) for c in a.cap)
  parts = tuple(dataclasses.replace(p, cap_s=float(caps.get(p.name, p.cap_s))) for p in parts)
  started = a.started or time.time()
  budget = a.budget or (150 if a.small else 470)
  deadline = started + budget
  reserve = 5.0  # for the table
  has_torch = importlib.util.find_spec('torch') is not None
  _print_plan(parts, budget, time.time() - started, a.small, has_torch)
  # the GPU: one process per part (a hung part costs only itself); --small: one process
  # for all but torch.compile (an import of jax each would cost more than the parts)
  if a.small:
    groups = [[p for p in parts if 'torch.compile' not in p.contenders],
              [p for p in parts if 'torch.compile' in p.contenders]]
  else:
    groups = [[p] for p in parts]
  for group in filter(None, groups):
    runnable = group
    if not has_torch:
      for p in group:
        if _needs_torch(p):
          for c in p.contenders:
            if c in TORCH:
              _write_row(jsonl, dict(part=p.name, contender=c, model=p.model, method=p.method,
                                     batch=p.batch, res=sizes.res, status='skipped',
                                     note='torch is not installed'))
      runnable = [dataclasses.replace(p, contenders=tuple(c for c in p.contenders
                                                          if c not in TORCH))
                  for p in group]
      runnable = [p for p in runnable if p.contenders]
    if not runnable:
      continue
    left = deadline - time.time() - reserve
    limit = min(sum(p.cap_s for p in runnable), left)
    if limit < (5 if a.small else 15):
      _fill_missing(jsonl, runnable, 'no time left', max(limit, 0), time.time())
      continue
    print(f'# {", ".join(p.name for p in runnable)}: limit {limit:.0f} s '
          f'({time.time() - started:.0f} s into the run)', flush=True)
    status = _run_group(runnable, a.small, out, jsonl, limit)
    _fill_missing(jsonl, runnable, status if status != 'ok' else 'not written', limit,
                  time.time())
  table = make_table(read_rows(jsonl), budget, time.time() - started)
  (out / 'table.md').write_text(table)
  print(table, flush=True)
  return table


def _print_plan(parts, budget, spent, small, has_torch):
  print(f'# gpu_suite{" --small" if small else ""}: budget {budget:.0f} s in all '
        f'({spent:.0f} s spent before the parts); torch {"found" if has_torch else "absent"}')
  print('# plan (most valuable first; a part gets min(its limit, what is left)):')
  t = spent
  for p in parts:
    t += p.expect_s
    print(f'#   {p.name:<20} limit {p.cap_s:>4.0f} s, expected ~{p.expect_s:.0f} s '
          f'(done by ~{t:.0f} s): {", ".join(p.contenders)}')
  print(flush=True)


# ----------------------------------------------------------------------------- the table

def _fmt(v, spec):
  return '–' if v is None else format(v, spec)


def make_table(rows: list[dict], budget: float, wall: float) -> str:
  """The markdown table of the final row of every contender, from the JSONL rows."""
  facts = next((r for r in rows if r.get('part') == 'facts'), {})
  order = {(p.name, c): (i, j) for i, p in enumerate(GPU_PARTS)
           for j, c in enumerate(p.contenders)}
  rows = sorted(rows, key=lambda r: order.get((r.get('part'), r.get('contender')), (-1, 0)))
  final = {}
  for r in rows:
    if r.get('part') == 'facts' or r.get('status') in ('started',):
      continue
    key = (r['part'], r['contender'])
    if r.get('status') != 'partial' or key not in final or final[key].get('status') == 'partial':
      final[key] = r
  matmul = next((r for r in final.values() if r.get('part') == 'matmul'), {})
  rate = matmul.get('matmul_flops_per_s')

  def same_model(r):
    return (r.get('model'), r.get('method'), r.get('res'), r.get('batch'), r.get('width'))
  flops = {same_model(r): r['flops_per_step'] for r in final.values()
           if r.get('contender') == 'ours' and r.get('flops_per_step')}
  ours = {same_model(r): r['views_per_s'] for r in final.values()
          if r.get('contender') == 'ours' and r.get('status') == 'ok'}

  lines = [f'# GPU suite: {facts.get("device", "?")} ({facts.get("backend", "?")}), '
           f'{facts.get("date", "?")}, jax {facts.get("jax", "?")}, torch {facts.get("torch", "–")}, Python '
           f'{facts.get("python", "?")}, {facts.get("cores", "?")} CPU cores; '
           f'wall {wall:.0f} s of a {budget:.0f} s budget', '',
           f'{matmul.get("dtype", "?")} matmul rate measured in this run (the MFU '
           f'denominator): {_fmt(rate and rate / 1e12, ".1f")} TFLOP/s '
           f'({matmul.get("status", "no row")}{": " + matmul["note"] if matmul.get("note") else ""})',
           '',
           '| part | contender | model | method | px | batch | dtype | views/s | step ms | '
           'compile s | TFLOP/s | MFU | ours / this | status |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for (part, contender), r in final.items():
    if part == 'matmul' or contender == 'train loop':
      continue
    f = r.get('flops_per_step') or flops.get(same_model(r))
    step = r.get('step_ms')
    tflops = f / (step / 1e3) / 1e12 if f and step else None
    mfu = tflops * 1e12 / rate if tflops and rate else None
    ratio = (ours[same_model(r)] / r['views_per_s']
             if contender != 'ours' and r.get('views_per_s') and same_model(r) in ours else None)
    status = r.get('status', '?') + (f': {r["note"]}' if r.get('note') else '')
    lines.append(
        f'| {part} | {contender} | {r.get("model", "")} | {r.get("method", "")} | '
        f'{r.get("res", "")} | {r.get("batch", "")} | {r.get("dtype", "")} | '
        f'{_fmt(r.get("views_per_s"), ",.0f")} | {_fmt(step, ".1f")} | '
        f'{_fmt(r.get("compile_s"), ".1f")} | {_fmt(tflops, ".1f" if (tflops or 0) >= 1 else ".3f")} | '
        f'{_fmt(mfu, ".1%")} | '
        f'{_fmt(ratio, ".2f")} | {status} |')
  train = [r for r in final.values() if r.get('contender') == 'train loop']
  if train:
    lines += ['', 'The real pretraining job (benchmarks/train_throughput.py: '
              'pretraining.pretrain_job + loop.run_job, Grain loader, device augmentation, '
              'Orbax checkpoint):', '',
              '| part | model | px | batch | dtype | views/s | step ms | loader wait | '
              'compile s | ckpt save s | prepare s | MFU | status |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in train:
      f, step = r.get('flops_per_step'), r.get('step_ms')
      mfu = f / (step / 1e3) / rate if f and step and rate else None
      status = r.get('status', '?') + (f': {r["note"]}' if r.get('note') else '')
      lines.append(
          f'| {r["part"]} | {r.get("model", "")} | {r.get("res", "")} | {r.get("batch", "")} | '
          f'{r.get("dtype", "")} | {_fmt(r.get("views_per_s"), ",.0f")} | {_fmt(step, ".1f")} | '
          f'{_fmt(r.get("loader_wait"), ".1%")} | {_fmt(r.get("compile_s"), ".1f")} | '
          f'{_fmt(r.get("ckpt_save_s"), ".2f")} | {_fmt(r.get("prepare_s"), ".1f")} | '
          f'{_fmt(mfu, ".1%")} | {status} |')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
