"""The run's report, regenerable from the workdir alone:

    python -m cxr_jax.cli.report --workdir=W [--n_boot=1000] [--seed=0]

(or `python -m cxr_jax.report ...`, `cxr-report ...` once installed; library:
`write_report(W)`).

Reads, under W (nothing else):
  config.json                                   the run's config (confounder detection)
  metrics.jsonl                                 pretraining losses and monitors
  <folder>/<init>/<fraction>/seed<k>/result.json  one per job; its 'protocol' key (else
                                                the protocol whose folder it is in,
                                                `cxr_jax.vocab.PROTOCOL_FOLDERS`)
  <job>/test_predictions.npz                    probs [N, K], labels [N], patient_id [N]
  <folder>/<stage>/compute.json                 a pretraining stage's images, FLOPs, wall time
  timing.json                                   seconds by job and phase (`report.accounting`)
  <job>/attention.npz                           optional: what
                                                `cxr_jax.explain.analysis.attention_analysis`
                                                returns, saved with np.savez_compressed
and writes W/report.md, W/report.html and PNG figures in W/figures/.

Statistics (the choices, and why; the engine is `cxr_jax.eval.bootstrap`):
  * A regime's number at one label fraction is the mean over its seeds of the metric on
    the whole test set (± the std over seeds: training variability).
  * Its 95% CI is a percentile cluster bootstrap over test *patients* of that seed-mean:
    each resample draws patients with replacement (all their images come along) and
    re-evaluates every seed's predictions on it. The interval is the test-set sampling
    uncertainty of the regime's average model. We neither pool probabilities across seeds
    (that scores an ensemble, a different and better model than any one seed) nor average
    per-seed interval bounds (an average of percentiles has no coverage guarantee).
  * Paired comparisons use the same resamples for both regimes (same test patients), so
    the correlation of their errors is kept: the difference of seed-mean macro AUROC, its
    percentile CI and the two-sided bootstrap p-value (`bootstrap.paired_comparison`).
    Holm's step-down adjustment over all comparisons in the report is given beside the
    raw p-values.
  * Every bootstrap uses the same seed, hence the same patient resamples for every
    regime evaluated on the same test set. Resamples where a metric is undefined (a class
    not drawn) are skipped and counted.
  * The resampled metrics are computed with per-example weights (a patient drawn m times
    weighs m), vectorised over resamples; they equal `cxr_jax.eval.metrics.
    classification_metrics` on the repeated examples (tested), at a fraction of the cost.

Modules: `loading` (the files), `attention` (attention summaries), `figures` (PNGs),
`sections` (one function per section of report.md).
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import markdown

from cxr_jax.report import accounting
from cxr_jax.report import sections
from cxr_jax.report.loading import group_results, load_results, summarize

__all__ = ['write_report', 'load_results', 'group_results', 'summarize', 'render_html']

_STYLE = ('body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}'
          'table{border-collapse:collapse;margin:1em 0;font-size:0.9em}'
          'td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}'
          'th{background:#f3f3f3}code{background:#f3f3f3;padding:0 3px}img{max-width:100%}')


def anchor(title: str) -> str:
  """A heading's link target as GitHub makes it (lower case, punctuation but '-' and '_'
  dropped, each space a '-'); report.html gives its headings the same ids."""
  return re.sub(r'[^\w\- ]', '', title.strip().lower()).replace(' ', '-')


def contents(lines: list[str]) -> list[str]:
  """The table of contents of report.md: one line linking every '## ' section."""
  titles = list(dict.fromkeys(l[3:].strip() for l in lines if l.startswith('## ')))
  if not titles:
    return []
  text = lambda t: t.replace('[', '\\[').replace(']', '\\]')  # brackets in a title
  return ['Contents: ' + ' · '.join(f'[{text(t)}](#{anchor(t)})' for t in titles), '']


def render_html(text: str, title: str) -> str:
  """A standalone HTML page of Markdown `text` (Python-Markdown with pipe tables; headings
  get `anchor` ids, so the contents' links work in both)."""
  body = markdown.markdown(text, extensions=['tables', 'toc'], extension_configs={
      'toc': {'slugify': lambda value, separator: anchor(value)}})
  return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
          f'</title><style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n')


def _write(workdir: Path, lines: list[str]) -> Path:
  text = '\n'.join(lines) + '\n'
  path = workdir / 'report.md'
  path.write_text(text)
  (workdir / 'report.html').write_text(render_html(text, f'Report: {workdir.name}'))
  return path


def write_report(workdir, n_boot: int = 1000, seed: int = 0) -> Path:
  """Writes <workdir>/report.md (+ report.html, figures/*.png) from the workdir alone.

  Args:
    workdir: the run's folder.
    n_boot: bootstrap resamples for every CI and paired test (0: none).
    seed: bootstrap seed (the same resamples for every regime on the same test set).

  Returns:
    The path of report.md.
  """
  workdir = Path(workdir)
  groups = group_results(load_results(workdir))
  lines = sections.header(workdir)
  if not groups:
    return _write(workdir, lines + sections.no_results() + [''] + accounting.timing_lines(workdir))
  run = sections.prepare(workdir, groups, n_boot, seed)
  for section in sections.SECTIONS:
    lines += section(run)
  top = lines.index('') + 3  # after '# Report', the workdir line
  return _write(workdir, lines[:top] + contents(lines) + lines[top:])
