"""A grid of config overrides, each point its own run, and one table of their results.

    python -m cxr_jax.sweep --config=configs/default.py --workdir=runs/sweep \
        --grid='pretrain.method=byol,moco;pretrain.optimizer.lr=1e-3,3e-3' \
        [--config.finetune.num_seeds=5 ...]

`--grid`: axes separated by ';', each `key=value,value,...` (keys as after `--config.`,
e.g. `pretrain.stages[1].strength`; shorthands as in launch.py); the points are every
combination. Each point is a run of `launch.py` in `<workdir>/<point>/` (its name: the
point's `key=value` pairs joined by '+'), in a process of its own, with the other
`--config.` flags given here applied to every point. Like any run, a point resumes from
its checkpoints and skips finished jobs, so the same command finishes an interrupted
sweep, and a grid with more values runs only the new points.

Scratch fine-tuning does not depend on pretraining: when every grid key is under
`pretrain.` or `curriculum.`, a point copies the finished scratch cells (result.json,
predictions, selected weights; not the checkpoints) of an earlier point instead of
training them again.

`<workdir>/sweep.md` tabulates, per point, protocol, label fraction and regime, the mean
test macro AUROC over seeds and, for every regime but scratch, the paired difference
from scratch with its 95% patient-bootstrap CI and p (the report's statistics,
`cxr_jax.eval.bootstrap`); each point's own report.md has the rest.
`python -m cxr_jax.sweep --workdir=W --table_only` rewrites the table from what is there.

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
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cxr_jax import vocab
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


def _launch_path() -> Path:
  path = Path(__file__).resolve().parents[1] / 'launch.py'
  if not path.exists():
    raise SystemExit(f'cxr_jax.sweep runs launch.py from the repository; not found at {path}')
  return path


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


def run_sweep(config: str, workdir: Path, axes, extra: list[str]) -> list[dict]:
  """Runs every point (resuming, skipping finished jobs); returns [{name, point, seconds,
  rc}] and writes <workdir>/sweep.json with them."""
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
    args = [sys.executable, str(_launch_path()), f'--config={config}', f'--workdir={target}',
            *[f'--config.{k}={v}' for k, v in point.items()], *extra]
    print(f'[sweep] {name}', flush=True)
    start = time.time()
    rc = subprocess.call(args)
    runs.append(dict(name=name, point=point, seconds=round(time.time() - start, 1), rc=rc))
    workdir_lib.write_text(workdir / 'sweep.json',
                           json.dumps(dict(config=config, extra=extra, runs=runs), indent=2))
    if rc != 0:
      print(f'[sweep] {name} failed (exit {rc}); the others go on', file=sys.stderr, flush=True)
    else:
      done.append(name)
  return runs


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
  fmt = lambda x: '–' if x is None else f'{x:.3f}'
  for point in points:
    for r in point_rows(point, n_boot, seed):
      delta = '–' if r['diff'] is None else f'{r["diff"]:+.3f}'
      ci = '–' if r['lo'] is None else f'[{r["lo"]:+.3f}, {r["hi"]:+.3f}]'
      wall = f'{seconds[point.name] / 60:.1f} min' if point.name in seconds else '–'
      lines.append(f'| {point.name} | {r["protocol"]} | {r["fraction"]:g} | {r["init"]} | '
                   f'{r["seeds"]} | {fmt(r["auroc"])} | {delta} | {ci} | {fmt(r["p_value"])} | '
                   f'{wall} |')
  lines += ['', f'Δ: paired difference of seed-mean test macro AUROC from scratch on the same '
            f'test patients; CI and p from {n_boot} patient-bootstrap resamples '
            '(`cxr_jax.eval.bootstrap.paired_comparison`, not adjusted for the number of '
            'rows). Point wall time: the whole run of the point (scratch cells copied '
            'from an earlier point take none).', '']
  path = workdir / 'sweep.md'
  workdir_lib.write_text(path, '\n'.join(lines))
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', help='config file[:arg], as for launch.py')
  parser.add_argument('--workdir', required=True, help='parent folder of the points')
  parser.add_argument('--grid', default='', help="'key=v1,v2;key2=v3,v4'")
  parser.add_argument('--table_only', action='store_true',
                      help='only (re)write <workdir>/sweep.md from the points there')
  parser.add_argument('--n_boot', type=int, default=1000, help='bootstrap resamples')
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
    run_sweep(args.config, workdir, axes, extra)
  print(write_table(workdir, args.n_boot).read_text())


if __name__ == '__main__':
  main()
