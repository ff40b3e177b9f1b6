"""The run's report, regenerable from the workdir alone:

    python -m cxr_jax.report --workdir=W

Reads <W>/finetune/<init>/<fraction>/seed<k>/result.json and <W>/metrics.jsonl and writes
<W>/report.md: test metrics per initialisation and label fraction, mean ± std over seeds.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

HEADLINE = ('auroc', 'map', 'balanced_accuracy', 'macro_f1', 'accuracy', 'ece')


def load_results(workdir: Path) -> list[dict]:
  return [json.loads(p.read_text()) for p in sorted(Path(workdir).glob('finetune/*/*/seed*/result.json'))]


def _mean_std(values):
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return float('nan'), float('nan')
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(results: list[dict]) -> dict:
  """{(init, fraction): {metric: (mean, std, n)}} over seeds."""
  groups = collections.defaultdict(list)
  for r in results:
    groups[(r['init'], r['label_fraction'])].append(r)
  table = {}
  for key, rs in groups.items():
    metrics = sorted({m for r in rs for m in r['test']})
    table[key] = {m: (*_mean_std([r['test'].get(m) for r in rs]), len(rs)) for m in metrics}
  return table


def _pretrain_summary(workdir: Path) -> list[str]:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  last = {}
  for line in path.read_text().splitlines():
    row = json.loads(line)
    if row['job'].startswith('pretrain/') and 'train/loss' in row:
      last[row['job']] = row
  lines = []
  for job, row in last.items():
    extras = ''.join(f', {k} {row[k]:.3f}' for k in sorted(row) if k.startswith('monitor/'))
    lines.append(f'- `{job}`: {row["step"]} steps, final loss {row["train/loss"]:.4f}{extras}')
  return lines


def write_report(workdir) -> Path:
  workdir = Path(workdir)
  results = load_results(workdir)
  table = summarize(results)
  lines = ['# Report', '', f'Workdir: `{workdir.name}`', '']
  pre = _pretrain_summary(workdir)
  if pre:
    lines += ['## Pretraining', ''] + pre + ['']
  lines += ['## Fine-tuning: test metrics (mean ± std over seeds)', '']
  if not table:
    lines.append('No fine-tuning results yet.')
  else:
    metrics = [m for m in HEADLINE if any(m in v for v in table.values())]
    per_class = sorted({m for v in table.values() for m in v if m.startswith('auroc/')})
    cols = metrics + per_class
    lines.append('| init | label fraction | seeds | ' + ' | '.join(cols) + ' |')
    lines.append('|---' * (3 + len(cols)) + '|')
    for (init, fraction), v in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
      n = max(x[2] for x in v.values())
      cells = [f'{v[m][0]:.3f} ± {v[m][1]:.3f}' if m in v and np.isfinite(v[m][0]) else '–'
               for m in cols]
      lines.append(f'| {init} | {fraction:g} | {n} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'auroc: macro one-vs-rest AUROC; map: macro average precision; '
              'ece: expected calibration error (15 bins). Model selection on val only.']
    lines += ['', '### Per seed', '', '| init | fraction | seed | best step | val score | test auroc |',
              '|---|---|---|---|---|---|']
    for r in sorted(results, key=lambda r: (r['label_fraction'], r['init'], r['seed'])):
      lines.append(f'| {r["init"]} | {r["label_fraction"]:g} | {r["seed"]} | {r["best_step"]} | '
                   f'{r["val_score"]:.3f} | {r["test"].get("auroc", float("nan")):.3f} |')
  path = workdir / 'report.md'
  path.write_text('\n'.join(lines) + '\n')
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  args = parser.parse_args()
  print(write_report(args.workdir).read_text())


if __name__ == '__main__':
  main()
