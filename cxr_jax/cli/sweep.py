"""A grid of config overrides, each point its own run, and one table of their results.

    python -m cxr_jax.cli.sweep --config=configs/default.py --workdir=runs/sweep \
        --grid='pretrain.method=byol,moco;pretrain.optimizer.lr=1e-3,3e-3' \
        [--config.finetune.num_seeds=5 ...]

`--grid`: axes separated by ';', each `key=value,value,...` (keys as after `--config.`,
e.g. `pretrain.stages[1].strength`; shorthands as for the launcher); the points are every
combination. Each point is a run of `cxr_jax.cli.launch` in `<workdir>/<point>/` (its name: the
point's `key=value` pairs joined by '+'), in a process of its own, with the other
`--config.` flags given here applied to every point. Like any run, a point resumes from
its checkpoints and skips finished jobs, so the same command finishes an interrupted
sweep, and a grid with more values runs only the new points.
A point whose run fails (a bad value on its axis, a diverged run) does not stop the
others; at the end the sweep names every failed point with its one-line error (the launcher's
`error:` line; `--verbose` passes the launcher's tracebacks through) and exits with 1, after
writing the table of the points that succeeded.

Scratch fine-tuning does not depend on pretraining: when every grid key is under
`pretrain.` or `curriculum.`, a point copies the finished scratch cells (result.json,
predictions, selected weights; not the checkpoints) of an earlier point instead of
training them again.

`<workdir>/sweep.md` tabulates, per point, protocol, label fraction and regime, the mean
test macro AUROC over seeds and, for every regime but scratch, the paired difference
from scratch with its 95% patient-bootstrap CI and p (the report's statistics,
`cxr_jax.eval.bootstrap`); each point's own report.md has the rest.
`python -m cxr_jax.cli.sweep --workdir=W --table_only` rewrites the table from what is there.

Cost: a point costs its run. Demo-sized points (configs/default.py, 3 seeds) took 2.5-12
minutes each on a 2-core CPU VM shared with other jobs (jax 0.10.2, 2026-12-01; the
first point of a sweep the longest: it prepares the data and trains the scratch cells);
the demo alone takes about 4 minutes on the same VM when quiet.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cxr_jax import vocab
from cxr_jax.report import fmt
from cxr_jax.report import loading
from cxr_jax.report import sections
from cxr_jax.train import workdir as workdir_lib

# grid keys under these prefixes leave the scratch cells unchanged (see module doc)
PRETRAINING_ONLY = ('pretrain.', 'curriculum.')


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
  """'a=1,2;b.c=x' -> [('a', ['1', '2']), ('b.c', ['x'])]; ValueError naming the axis."""
  axes = []
  for axis in filter(None, (a.strip() for a in text.split(';'))):
    key, sep, values = axis.partition('=')
    key = key.strip().removeprefix('--config.').removeprefix('config.')
    values = vocab.comma_list(values)
    if not sep or not key or not values:
      raise ValueError(f'--grid: axis {axis!r} must be key=value[,value...]')
    if key in {k for k, _ in axes}:
      raise ValueError(f'--grid: key {key!r} is given twice')
    axes.append((key, values))
  if not axes:
    raise ValueError('--grid is empty; give e.g. pretrain.method=byol,moco')
  return axes


def grid_points(axes) -> list[dict[str, str]]:
  """Every combination of the axes' values, the first axis varying slowest."""
  keys = [k for k, _ in axes]
  return [dict(zip(keys, values)) for values in itertools.product(*[v for _, v in axes])]


def point_name(point: dict[str, str]) -> str:
  """The point's folder name: 'key=value' pairs joined by '+' (no '/')."""
  return '+'.join(f'{k}={v}' for k, v in point.items()).replace('/', '_')


def launch_command() -> list[str]:
  """The command that runs one point: the launcher of the installed package, in a process
  of its own (the same Python; no checkout needed)."""
  return [sys.executable, '-m', 'cxr_jax.cli.launch']


def copy_scratch(source: Path, target: Path) -> int:
  """Copies the finished scratch cells of `source` (every file but checkpoints) into
  `target` where it has none; returns the number of cells copied."""
  copied = 0
  for folder in vocab.PROTOCOL_FOLDERS.values():
    for result in sorted((source / folder / 'scratch').glob('*/seed*/result.json')):
      cell = result.parent
      dest = target / cell.relative_to(source)
      if (dest / 'result.json').exists():
        continue
      shutil.copytree(cell, dest, ignore=shutil.ignore_patterns('ckpt'), dirs_exist_ok=True)
      copied += 1
  return copied


def _run_point(args: list[str]) -> tuple[int, str]:
  """Runs one point's launcher, its stdout and stderr passed through as they come
  (progress bars included); returns its exit code and its one-line error: the `error: `
  line the launcher ends with (not passed through: the sweep repeats it), else the last line
  it wrote to stderr (a traceback's), '' when it succeeded."""
  proc = subprocess.Popen(args, stderr=subprocess.PIPE)
  out = getattr(sys.stderr, 'buffer', None)
  pending, error, last = b'', b'', b''
  while True:
    chunk = proc.stderr.read1(65536)
    if not chunk:
      break
    pending += chunk
    # pass on every finished line ('\n', or a progress bar's '\r'), keep the rest
    cut = max(pending.rfind(b'\n'), pending.rfind(b'\r')) + 1
    for line in pending[:cut].splitlines(keepends=True):
      if line.startswith(b'error: '):
        error = line
        continue
      if line.strip():
        last = line
      if out is not None:
        out.write(line)
      else:
        sys.stderr.write(line.decode(errors='replace'))
    pending = pending[cut:]
    sys.stderr.flush()
  rc = proc.wait()
  if pending.startswith(b'error: '):
    error = pending
  elif pending.strip():
    last = pending
    sys.stderr.write(pending.decode(errors='replace'))
  if rc == 0:
    return rc, ''
  why = (error[len(b'error: '):] if error else last).decode(errors='replace').strip()
  return rc, why or f'exit code {rc}'


def run_sweep(config: str, workdir: Path, axes, extra: list[str]) -> list[dict]:
  """Runs every point (resuming, skipping finished jobs); returns [{name, point, seconds,
  rc, error}] and writes <workdir>/sweep.json with them (error: the failed point's
  one-line error, '' for one that succeeded)."""
  workdir.mkdir(parents=True, exist_ok=True)
  share_scratch = all(k.startswith(PRETRAINING_ONLY) for k, _ in axes) and not any(
      a.startswith(('--config.finetune.', '--config.model.', '--config.seed'))
      for a in extra)
  runs, done = [], []
  for point in grid_points(axes):
    name = point_name(point)
    target = workdir / name
    if share_scratch:
      for earlier in done:
        copy_scratch(workdir / earlier, target)
    args = [*launch_command(), f'--config={config}', f'--workdir={target}',
            *[f'--config.{k}={v}' for k, v in point.items()], *extra]
    print(f'[sweep] {name}', flush=True)
    start = time.time()
    rc, error = _run_point(args)
    runs.append(dict(name=name, point=point, seconds=round(time.time() - start, 1), rc=rc,
                     error=error))
    workdir_lib.write_text(workdir / 'sweep.json',
                           json.dumps(dict(config=config, extra=extra, runs=runs), indent=2))
    if rc != 0:
      print(f'[sweep] {name} failed (exit {rc}): {error}; the others go on', flush=True)
    else:
      done.append(name)
  return runs


def failed_points(runs: list[dict]) -> str:
  """'' when every point succeeded, else one line naming each failed point and why."""
  failed = [r for r in runs if r['rc'] != 0]
  if not failed:
    return ''
  return (f'{len(failed)} of {len(runs)} sweep point(s) failed: ' +
          '; '.join(f'{r["name"]} ({r.get("error") or "exit code " + str(r["rc"])})'
                    for r in failed))


def point_rows(point_dir: Path, n_boot: int, seed: int = 0) -> list[dict]:
  """[{protocol, fraction, init, seeds, auroc (seed mean), diff, lo, hi, p_value}] of one
  point's results; diff..p_value (paired with scratch) are None for scratch or when
  there is no scratch on the same test images."""
  groups = loading.group_results(loading.load_results(point_dir))
  if not groups:
    return []
  # single regimes' CIs are not tabulated: prepare without them, compare with n_boot
  run = dataclasses.replace(sections.prepare(point_dir, groups, 0, seed), n_boot=n_boot)
  vs_scratch = {(c['protocol'], c['fraction'], c['a']): c for c in sections.comparisons(run)
                if c['b'] == 'scratch'}
  rows = []
  for (protocol, init, fraction), rs in groups.items():
    mean, _ = loading.mean_std([r['test'].get('auroc') for r in rs])
    c = vs_scratch.get((protocol, fraction, init), {})
    rows.append(dict(protocol=protocol, fraction=fraction, init=init, seeds=len(rs),
                     auroc=mean, diff=c.get('diff'), lo=c.get('lo'), hi=c.get('hi'),
                     p_value=c.get('p_value')))
  return rows


def write_table(workdir: Path, n_boot: int = 1000, seed: int = 0) -> Path:
  """<workdir>/sweep.md: one row per point x protocol x fraction x regime."""
  meta = json.loads((workdir / 'sweep.json').read_text()) if (workdir / 'sweep.json').exists() else {}
  seconds = {r['name']: r['seconds'] for r in meta.get('runs', [])}
  points = sorted(p.parent for p in workdir.glob('*/config.json'))
  lines = ['# Sweep', '']
  if meta:
    lines += [f'Config `{meta["config"]}`' + (f', for every point `{" ".join(meta["extra"])}`'
                                                if meta.get('extra') else '') + '.', '']
  lines += ['| point | protocol | label fraction | init | seeds | test AUROC (seed mean) | '
            'Δ vs scratch | 95% CI | p | point wall time |',
            '|---|---|---|---|---|---|---|---|---|---|']
  for point in points:
    for r in point_rows(point, n_boot, seed):
      delta = fmt.number(r['diff'], sign=True)
      ci = (f'[{fmt.number(r["lo"], sign=True)}, {fmt.number(r["hi"], sign=True)}]'
            if fmt.defined(r['lo']) else fmt.DASH)
      wall = (f'{fmt.number(seconds[point.name] / 60, 1)} min' if point.name in seconds
              else fmt.DASH)
      lines.append(f'| {point.name} | {r["protocol"]} | {r["fraction"]:g} | {r["init"]} | '
                   f'{r["seeds"]} | {fmt.number(r["auroc"])} | {delta} | {ci} | '
                   f'{fmt.number(r["p_value"])} | {wall} |')
  lines += ['', f'Δ: paired difference of seed-mean test macro AUROC from scratch on the same '
            f'test patients; CI and p from {n_boot} patient-bootstrap resamples '
            '(`cxr_jax.eval.bootstrap.paired_comparison`, not adjusted for the number of '
            'rows). Point wall time: the whole run of the point (scratch cells copied '
            'from an earlier point take none). –: no value: Δ, CI and p for scratch itself '
            'and for a regime not tested on the same patients as scratch; the AUROC where no '
            'seed has one.', '']
  failed = failed_points(meta.get('runs', []))
  if failed:
    lines += [f'Not in the table: {failed}.', '']
  path = workdir / 'sweep.md'
  workdir_lib.write_text(path, '\n'.join(lines))
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', help='config file[:arg], as for cxr_jax.cli.launch')
  parser.add_argument('--workdir', required=True, help='parent folder of the points')
  parser.add_argument('--grid', default='', help="'key=v1,v2;key2=v3,v4'")
  parser.add_argument('--table_only', action='store_true',
                      help='only (re)write <workdir>/sweep.md from the points there')
  parser.add_argument('--n_boot', type=int, default=1000, help='bootstrap resamples')
  parser.add_argument('--verbose', action='store_true',
                      help="each point's launcher prints its error's traceback too")
  args, extra = parser.parse_known_args(argv)
  unknown = [a for a in extra if not a.startswith('--config.')]
  if unknown:
    parser.error(f'unknown arguments {unknown} (overrides for every point: --config.x=v)')
  workdir = Path(args.workdir)
  if not args.table_only:
    if not args.config:
      parser.error('--config is required (unless --table_only)')
    try:
      axes = parse_grid(args.grid)
    except ValueError as e:
      parser.error(str(e))
    runs = run_sweep(args.config, workdir, axes, extra + ['--verbose'] * args.verbose)
  print(write_table(workdir, args.n_boot).read_text())
  failed = '' if args.table_only else failed_points(runs)
  if failed:  # the table holds the points that succeeded; the exit code says not all did
    print(f'error: {failed}; the table of the others: {workdir / "sweep.md"}',
          file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  main()
