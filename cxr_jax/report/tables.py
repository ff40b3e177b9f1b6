"""The results sections of report.md: test metrics per protocol (single-label: per class;
multi-label: per finding, with the findings left undefined), and the paired comparisons
between regimes (patient bootstrap, Holm). `Run` -> Markdown lines.
"""
from __future__ import annotations

import numpy as np

from cxr_jax import vocab
from cxr_jax.eval import bootstrap
from cxr_jax.eval import metrics as M
from cxr_jax.report import fmt, loading
from cxr_jax.report.run import NAN2, Run, group_row, mean_std_cell, table_head

_fmt, _fmt_p = fmt.number, fmt.p_value  # every number of a table goes through these


def headline_metrics(run: Run, keys) -> list[str]:
  """The HEADLINE metrics that any result of these groups has."""
  return [m for m in M.HEADLINE if any(m in r['test'] for k in keys for r in run.groups[k])]


def _metric_cell(run: Run, key, m: str) -> str:
  cell = mean_std_cell([r['test'].get(m) for r in run.groups[key]])
  lo, hi = run.cis.get(key, {}).get(m, NAN2)
  return cell + (f' [{_fmt(lo)}, {_fmt(hi)}]' if np.isfinite(lo) else '')


def _per_class_table(run: Run, keys, title: str) -> list[str]:
  names = next((r['class_names'] for k in keys for r in run.groups[k]
                if r.get('class_names')), [])
  per_class = sorted({m for k in keys for r in run.groups[k] for m in r['test']
                      if m.startswith('auroc/')},
                     key=lambda m: (names.index(m[6:]) if m[6:] in names else len(names), m))
  if not per_class:
    return []
  lines = ['', f'### {title}: per-class AUROC (mean ± std over seeds)', '']
  lines += table_head([m.split('/', 1)[1] for m in per_class])
  for key in keys:
    cells = [mean_std_cell([r['test'].get(m) for r in run.groups[key]]) for m in per_class]
    lines.append(group_row(key, run.groups[key], cells))
  return lines


def _findings(run: Run, keys) -> bool:
  """Whether these groups hold a multi-label findings task (result.json's 'task', or
  targets [N, F] in the predictions)."""
  return (loading.is_findings([r for k in keys for r in run.groups[k]]) or
          any(run.stacks.get(k) is not None and run.stacks[k].multilabel for k in keys))


def _per_finding_table(run: Run, keys, title: str, metric: str, label: str) -> list[str]:
  """Per-finding `metric` ('auroc', 'ap' or 'ece'): mean ± std over seeds [95% CI]."""
  names = next((r['class_names'] for k in keys for r in run.groups[k]
                if r.get('class_names')), [])
  if not names:
    return []
  lines = ['', f'### {title}: per-finding {label} (mean ± std over seeds [95% CI])', '']
  lines += table_head(list(names))
  for key in keys:
    cis = run.class_cis.get(key, {}).get('map' if metric == 'ap' else metric, [])
    cells = []
    for f, name in enumerate(names):
      cell = mean_std_cell([r['test'].get(f'{metric}/{name}') for r in run.groups[key]])
      lo, hi = cis[f] if f < len(cis) else NAN2
      cells.append(cell + (f' [{_fmt(lo)}, {_fmt(hi)}]' if np.isfinite(lo) else ''))
    lines.append(group_row(key, run.groups[key], cells))
  return lines


def _undefined_findings(run: Run, keys) -> list[str]:
  """The findings without an observed positive or negative on test (AUROC undefined)."""
  stack = next((run.stacks[k] for k in keys if run.stacks[k] is not None), None)
  names = next((r['class_names'] for k in keys for r in run.groups[k]
                if r.get('class_names')), [])
  if stack is None or not stack.multilabel or len(names) != stack.labels.shape[1]:
    return []
  observed = ~np.isnan(stack.labels)
  pos = (np.where(observed, stack.labels, 0) >= 0.5).sum(axis=0)
  neg = (observed & (stack.labels < 0.5)).sum(axis=0)
  return [f'{n} ({int(p)} positive, {int(q)} negative)'
          for n, p, q in zip(names, pos, neg) if p == 0 or q == 0]


def _findings_notes(run: Run, keys) -> list[str]:
  lines = ['', 'Multi-label findings, one sigmoid each. auroc: the mean over findings of '
           'the per-finding AUROC (the headline); map: mean per-finding average precision; '
           f'ece: mean per-finding calibration error ({M.ECE_BINS} bins of the predicted '
           'probability). Targets that are not observed (NaN, e.g. uncertain labels under '
           'U-Ignore) are left out of each finding\'s metrics. Model selection on val '
           f'(mean AUROC) only. Brackets: 95% percentile bootstrap CI over test patients '
           f'({run.n_boot} resamples) of the mean over seeds; the per-finding CIs use the '
           'same resamples.']
  undefined = _undefined_findings(run, keys)
  if undefined:
    lines += ['', 'Left out of the means (AUROC and AP undefined on this test set): '
              + '; '.join(undefined) + '.']
  no_positive = sorted({(k[1], k[2], name) for k in keys for r in run.groups[k]
                        for name, count in r.get('train_positives', {}).items() if count == 0},
                       key=lambda t: (vocab.regime_order(t[0]), t[1], t[2]))
  if no_positive:
    lines += ['', 'No positive training example (the label fraction and the train split '
              'hold none; the head learns "absent" only, so its test AUROC shows what the '
              'encoder gives without that label): '
              + '; '.join(f'{name} ({init} {fraction:g})' for init, fraction, name
                          in no_positive) + '.']
  return lines


def results(run: Run, protocol: str) -> list[str]:
  """One protocol's table of headline metrics (mean ± std [CI]), then per-class AUROC
  (multi-label findings: per-finding AUROC and AP with CIs)."""
  keys = run.keys(protocol)
  title = vocab.PROTOCOL_TITLES.get(protocol, protocol)
  metrics = headline_metrics(run, keys)
  findings = _findings(run, keys)
  lines = [f'## {title}: test metrics (mean ± std over seeds [95% CI])', '']
  lines += table_head(metrics)
  lines += [group_row(k, run.groups[k], [_metric_cell(run, k, m) for m in metrics])
            for k in keys]
  if findings:
    lines += _findings_notes(run, keys)
  else:
    lines += ['', 'auroc: macro one-vs-rest AUROC; map: macro average precision; '
              f'ece: expected calibration error ({M.ECE_BINS} bins). Model selection on val '
              f'only. Brackets: 95% percentile bootstrap CI over test patients ({run.n_boot} '
              'resamples) of the mean over seeds (see the note on statistics below).']
  missing = [f'{k[1]} {k[2]:g}: {run.why[k]}' for k in keys if run.stacks[k] is None]
  if missing:
    lines += ['', 'No CI for ' + '; '.join(missing) + '.']
  if findings:
    return (lines + _per_finding_table(run, keys, title, 'auroc', 'AUROC')
            + _per_finding_table(run, keys, title, 'ap', 'AP')
            + _per_finding_table(run, keys, title, 'ece', 'calibration error (ECE)') + [''])
  return lines + _per_class_table(run, keys, title) + ['']


def all_results(run: Run) -> list[str]:
  return [line for protocol in run.protocols for line in results(run, protocol)]


def _paired_probs(sa: loading.Stack, sb: loading.Stack) -> tuple[np.ndarray, np.ndarray]:
  """[N, S, K] probs of both regimes on their common seeds (else the first min(S_a, S_b))."""
  common = [s for s in sa.seeds if s in sb.seeds] or None
  pa = sa.seeds_subset(common) if common else sa.probs
  pb = sb.seeds_subset(common) if common else sb.probs
  if pa.shape != pb.shape:  # no common seeds and unequal counts: use the fewer
    s = min(pa.shape[1], pb.shape[1])
    pa, pb = pa[:, :s], pb[:, :s]
  return pa, pb


def comparisons(run: Run) -> list[dict]:
  """Paired macro-AUROC comparisons of every regime with every earlier one (scratch first),
  per protocol and label fraction, where both were tested on the same images."""
  out = []
  for protocol in run.protocols:
    for fraction in sorted({k[2] for k in run.keys(protocol)}):
      inits = sorted([k[1] for k in run.keys(protocol) if k[2] == fraction],
                     key=vocab.regime_order)
      for i, a in enumerate(inits):
        for b in inits[:i]:
          sa, sb = run.stacks[(protocol, a, fraction)], run.stacks[(protocol, b, fraction)]
          if sa is None or sb is None or run.n_boot <= 0 or not sa.same_test_set(sb):
            continue
          pa, pb = _paired_probs(sa, sb)
          res = bootstrap.paired_comparison(sa.labels, pa, pb, sa.groups, run.n_boot,
                                            run.seed)
          out.append(dict(protocol=protocol, fraction=fraction, a=a, b=b, seeds=pa.shape[1],
                          patients=len(np.unique(sa.groups)), **res))
  return out


def paired_comparisons(run: Run) -> list[str]:
  """The table of `comparisons`, with Holm-adjusted p-values."""
  comps = comparisons(run)
  if not comps:
    return []
  n_boot = run.n_boot
  what = 'mean AUROC over findings' if _findings(run, list(run.groups)) else 'macro AUROC'
  lines = [f'## Paired comparisons: test {what}', '']
  lines += table_head(['regime A', 'regime B', 'seeds', 'Δ AUROC (A − B)', '95% CI', 'p',
                  'p (Holm)'], first='protocol | label fraction')
  for c, p_adj in zip(comps, bootstrap.holm([c['p_value'] for c in comps])):
    lines.append(f'| {c["protocol"]} | {c["fraction"]:g} | {c["a"]} | {c["b"]} | '
                 f'{c["seeds"]} | {_fmt(c["diff"], sign=True)} | [{_fmt(c["lo"])}, {_fmt(c["hi"])}] | '
                 f'{_fmt_p(c["p_value"])} | {_fmt_p(p_adj)} |')
  return lines + [
      '', f'Paired cluster bootstrap over the {comps[0]["patients"]} test '
      f'patients ({n_boot} resamples): both regimes are scored on the same resampled '
      f'patients, the difference is of the seed-mean {what}, and p is the '
      'two-sided bootstrap p-value of no difference (the smallest p that '
      f'{n_boot} resamples can give is {2 / (n_boot + 1):.2g}). p (Holm): adjusted '
      f'for all {len(comps)} comparisons in this table.', '']
