"""The report's accounts: what each pretraining regime cost, where the run's time went.

Reads, under the workdir (nothing else):
  <folder>/<stage>/compute.json   one per pretraining stage (`cxr_jax.train.compute`):
                                  images, views, FLOPs and wall time of the stage
  timing.json                     seconds by job and phase (`cxr_jax.train.timing`)
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from cxr_jax import vocab

log = logging.getLogger('cxr_jax')

PHASES = ('data', 'compile', 'train', 'eval', 'checkpoint', 'report', 'other')
UNEQUAL = 0.05  # regimes whose pretraining FLOPs differ by more than this are flagged


def _read_json(path: Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    log.warning('report: %s cannot be read; left out', path)
    return None


def _stage_order(workdir: Path) -> list[str]:
  path = workdir / 'config.json'
  config = _read_json(path) if path.exists() else None
  try:  # the curriculum's stages, then the named curricula's (config.pretrain.curricula)
    lists = [config['pretrain']['stages'], *(config['pretrain'].get('curricula') or {}).values()]
    return [s['name'] for stages in lists for s in stages]
  except (TypeError, KeyError, AttributeError):
    return []


def regime_compute(workdir: Path) -> dict[str, dict]:
  """{regime: {'stages', 'steps', 'images', 'views', 'flops', 'wall_s'}}: the sums over
  its stages' compute.json (the curriculum's stages in the config's order)."""
  workdir = Path(workdir)
  order = _stage_order(workdir)
  out = {}
  folders = {vocab.regime_of_folder(p.name): p.name for p in sorted(workdir.glob('pretrain*'))
             if p.is_dir()}
  for regime, folder in sorted(folders.items(), key=lambda kv: vocab.regime_order(kv[0] or '')):
    if regime is None:
      continue
    paths = sorted((workdir / folder).glob('*/compute.json'),
                   key=lambda p: (order.index(p.parent.name) if p.parent.name in order
                                  else len(order), p.parent.name))
    records = [r for r in map(_read_json, paths) if r]
    if records:
      out[regime] = {'stages': [r['stage'] for r in records],
                     **{k: sum(r[k] for r in records)
                        for k in ('steps', 'images', 'views', 'flops', 'wall_s')}}
  return out


def format_flops(flops: float) -> str:
  for unit, scale in (('PFLOP', 1e15), ('TFLOP', 1e12), ('GFLOP', 1e9), ('MFLOP', 1e6)):
    if flops >= scale:
      return f'{flops / scale:.3g} {unit}'
  return f'{flops:.3g} FLOP'


def unequal_pairs(computes: dict[str, dict], regimes) -> list[tuple[str, str, float]]:
  """(regime A, regime B, A's FLOPs / B's >= 1) for the pairs of pretrained `regimes`
  whose pretraining FLOPs differ by more than UNEQUAL; A is the costlier one."""
  have = sorted((r for r in regimes if r in computes), key=vocab.regime_order)
  out = []
  for i, a in enumerate(have):
    for b in have[:i]:
      big, small = (a, b) if computes[a]['flops'] >= computes[b]['flops'] else (b, a)
      ratio = computes[big]['flops'] / computes[small]['flops']
      if ratio - 1 > UNEQUAL:
        out.append((big, small, ratio))
  return out


def compute_section(run) -> list[str]:
  """The regimes' pretraining compute, and the comparisons made at unequal FLOPs."""
  computes = regime_compute(run.workdir)
  if not computes:
    return []
  regimes = sorted(computes, key=vocab.regime_order)
  lines = ['## Pretraining compute per regime', '',
           '| regime | stages | steps | images | views | FLOPs | wall |', '|---' * 7 + '|']
  for r in regimes:
    c = computes[r]
    lines.append(f'| {r} | {", ".join(c["stages"])} | {c["steps"]:,} | {c["images"]:,} | '
                 f'{c["views"]:,} | {format_flops(c["flops"])} | {c["wall_s"]:.0f} s |')
  lines += ['', 'images: steps × global batch; views: the network inputs they made (two '
            'per image for the two-view methods). FLOPs: XLA\'s cost analysis of each '
            'stage\'s training step (forward, backward, update, views cut on the device) '
            'lowered for the CPU backend, per view size, times the steps at that size. '
            'wall: every process start, the stage\'s data preparation, compilation, '
            'steps, monitors and checkpoints. scratch and imagenet pretrain nothing here.']
  fine_tuned = {k[1] for k in run.groups}
  pairs = unequal_pairs(computes, fine_tuned)
  if pairs:
    lines += ['', f'**Unequal compute** (pretraining FLOPs differ by more than '
              f'{UNEQUAL:.0%}): ' + '; '.join(f'{a} used {ratio:.2f}× the FLOPs of {b}'
                                           for a, b, ratio in pairs)
              + '. Their paired comparisons above compare regimes at unequal budgets '
              '(config.pretrain.match=flops matches ssl_matched, ssl_matched:<name> and '
              'alone:<method> to their curriculum in FLOPs).']
  return lines + ['']


def timing_lines(workdir: Path) -> list[str]:
  """The time-by-phase table of timing.json: one row per job, then the run's total."""
  path = Path(workdir) / 'timing.json'
  content = _read_json(path) if path.exists() else None
  if not content or 'total' not in content:
    return []
  total = content['total']
  jobs = total.get('jobs', {})
  phases = [p for p in PHASES if any(t.get(p, 0.0) >= 0.05 for t in jobs.values())]
  lines = ['## Time by phase', '',
           '| job | ' + ' | '.join(phases) + ' | total |', '|---' * (len(phases) + 2) + '|']

  def row(name, table):
    return (f'| {name} | ' + ' | '.join(f'{table.get(p, 0.0):.1f}' for p in phases)
            + f' | {sum(table.values()):.1f} |')
  for job in sorted(jobs, key=lambda j: j == ''):  # in the order they ran; outside jobs last
    lines.append(row(f'`{job}`' if job else '(outside jobs)', jobs[job]))
  lines.append(row('**run**', total.get('phases', {})))
  wall = total.get('wall_s', 0.0)
  compile_share = total.get('phases', {}).get('compile', 0.0) / wall if wall else 0.0
  lines += ['', f'Seconds of wall time over {total.get("sessions", 1)} process start(s), '
            f'{wall:.1f} s in all; compilation {compile_share:.0%} of it. data: dataset '
            'preparation, image caches, loaders, labeled splits; compile: JAX tracing, '
            'lowering and XLA compilation (JAX\'s own events); train: the step loop less the '
            'rest; eval: monitors, validation, probes, test scoring, Grad-CAM; checkpoint: '
            'Orbax saves and restores; other: config checks, set-up. The time of writing '
            'this report is added to timing.json (and the log) after it is written.', '']
  return lines


def timing_section(run) -> list[str]:
  lines = timing_lines(run.workdir)
  return [''] + lines if lines else []
