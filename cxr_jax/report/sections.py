"""The sections of report.md, in report order (`SECTIONS`), one function each: `Run` ->
Markdown lines. By topic: `tables.py` (results per protocol, multi-label findings, paired
comparisons), `attention_tables.py` (attention shares, sanity, confounder study),
`accounting.py` (compute per regime, time by phase); here the header, the figures and the
notes. `prepare` (`run.py`) loads and computes once what several sections share.
"""
from __future__ import annotations

from pathlib import Path

from cxr_jax import vocab
from cxr_jax.report import accounting, figures, fmt, loading
from cxr_jax.report.attention_tables import attention_sanity, attention_shares, confounder_study
from cxr_jax.report.run import NAN2, Run, prepare, table_head  # noqa: F401  (prepare: re-exported)
from cxr_jax.report.tables import (  # noqa: F401  (comparisons: re-exported for the sweep)
    all_results, comparisons, headline_metrics, paired_comparisons)

_fmt = fmt.number  # every number of a table goes through it


def header(workdir: Path) -> list[str]:
  """Title, workdir and the final loss of each pretraining stage."""
  lines = ['# Report', '', f'Workdir: `{workdir.name}`', '']
  pre, methods = [], loading.stage_methods(workdir)
  for job, row in loading.pretrain_jobs(workdir).items():
    extras = ''.join(f', {k} {_fmt(row[k])}' for k in sorted(row) if k.startswith('monitor/'))
    method = methods.get(job.split('/')[-1])  # losses of different methods do not compare
    pre.append(f'- `{job}`' + (f' ({method})' if method else '') +
               f': {row["step"]} steps, final loss {_fmt(row["train/loss"], 4)}{extras}')
  return lines + (['## Pretraining', ''] + pre + [''] if pre else [])


def no_results() -> list[str]:
  return ['## Fine-tuning: test metrics (mean ± std over seeds)', '',
          'No fine-tuning results yet.']


def curve_rows(run: Run) -> list[dict]:
  """The points of `figures.figure_auroc_vs_fraction`: seed-mean macro AUROC and its CI."""
  rows = []
  for protocol in run.protocols:
    keys = run.keys(protocol)
    if 'auroc' not in headline_metrics(run, keys):
      continue
    for key in keys:
      mean, std = loading.mean_std([r['test'].get('auroc') for r in run.groups[key]])
      lo, hi = run.cis.get(key, {}).get('auroc', NAN2)
      rows.append(dict(protocol=protocol, init=key[1], fraction=key[2], mean=mean, std=std,
                       lo=lo, hi=hi))
  return rows


def attention_rows(run: Run) -> list[dict]:
  """The bars of `figures.figure_attention`: lung share (pred / true) of each group."""
  return [dict(protocol=key[0], init=key[1], fraction=key[2],
               pred=run.summaries[key].get('lung_share_pred'),
               true=run.summaries[key].get('lung_share_true')) for key in run.atts]


def _overlay_figures(run: Run, folder: Path) -> list[str]:
  """One overlay figure per (protocol, fraction) with attention: its Markdown lines."""
  lines = []
  for protocol, fraction in sorted({(k[0], k[2]) for k in run.atts},
                                   key=lambda k: (vocab.protocol_order(k[0]), k[1])):
    keys = sorted((k for k in run.atts if (k[0], k[2]) == (protocol, fraction)),
                  key=lambda k: vocab.regime_order(k[1]))
    first = run.groups[keys[0]][0]  # findings: the explained finding's absent / present
    class_names = first.get('attention_class_names') or first.get('class_names', [])
    name = f'overlays_{protocol}_{fraction:g}.png'
    if figures.figure_overlays(folder / name, {k[1]: run.atts[k] for k in keys}, class_names):
      lines.append(f'![Overlays, {protocol}, label fraction {fraction:g}](figures/{name})')
  return lines


def _umap_figure(run: Run, folder: Path) -> list[str]:
  """The UMAP of the regimes' test embeddings (<workdir>/embeddings/, config.explain.umap):
  the figure, or one sentence when umap-learn is not installed; nothing without them."""
  embeddings = loading.load_embeddings(run.workdir)
  if not embeddings:
    return []
  if not figures.umap_available():
    return [f'UMAP of the test embeddings ({", ".join(embeddings)}): not drawn, '
            'umap-learn is not installed (`pip install umap-learn`, the `umap` extra).', '']
  if not figures.figure_umap(folder / 'umap.png', embeddings):
    return []
  return ['![UMAP of the test embeddings per regime](figures/umap.png)', '',
          'UMAP: the test images\' pooled features by each regime\'s encoder before '
          'fine-tuning (scratch: random weights of seed 0), one point per image, coloured by '
          'class.', '']


def figure_section(run: Run) -> list[str]:
  """Writes the PNGs under <workdir>/figures and links them."""
  folder = run.workdir / 'figures'
  links = []
  if figures.figure_auroc_vs_fraction(folder / 'auroc_vs_fraction.png', curve_rows(run)):
    links.append('![AUROC vs label fraction](figures/auroc_vs_fraction.png)')
  if figures.figure_attention(folder / 'attention_share.png', attention_rows(run)):
    links.append('![Grad-CAM lung share per regime](figures/attention_share.png)')
  overlays = _overlay_figures(run, folder)
  links += overlays
  umap_lines = _umap_figure(run, folder)
  if not links and not umap_lines:
    return []
  lines = ['## Figures', ''] + [line for link in links for line in (link, '')] + umap_lines
  if overlays:
    lines += ['Overlays: the same test images (the first of each class) explained by each '
              'regime: Grad-CAM of the predicted class (each map scaled to its own range), '
              'lung mask outline in cyan.', '']
  return lines


def statistics_note(run: Run) -> list[str]:
  return ['## Note on statistics', '',
          'Each number is the mean over seeds of the metric on the whole test set; ± is the '
          'std over seeds (training variability). The 95% CI is a percentile cluster '
          'bootstrap over test patients of that seed-mean: each resample draws patients '
          'with replacement and re-scores every seed on it, so it measures test-set '
          'sampling uncertainty of the regime\'s average model. Probabilities are not '
          'pooled over seeds (that would score an ensemble), and per-seed CI bounds are not '
          'averaged. Every bootstrap uses the same resamples for all regimes.', '']


def per_seed(run: Run) -> list[str]:
  lines = ['## Per seed', '']
  lines += table_head(['fraction', 'seed', 'best step', 'val score', 'test auroc'],
                 first='protocol | init')
  for key, rs in run.groups.items():
    for r in rs:
      lines.append(f'| {key[0]} | {key[1]} | {key[2]:g} | {r["seed"]} | '
                   f'{r.get("best_step", "–")} | {_fmt(r.get("val_score"))} | '
                   f'{_fmt(r["test"].get("auroc"))} |')
  return lines


# the sections after the header, in report order
SECTIONS = (all_results, paired_comparisons, accounting.compute_section, attention_shares,
            attention_sanity, confounder_study,
            figure_section, statistics_note, per_seed, accounting.timing_section)
