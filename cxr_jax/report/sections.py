"""The sections of report.md, one function each: `Run` -> Markdown lines.

`prepare` loads and computes once what several sections share (stacked predictions, their
CIs, the attention files and summaries); every section then only formats. A bootstrap is
seeded per call, so no section's numbers depend on the order they are computed in.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cxr_jax import vocab
from cxr_jax.eval import bootstrap
from cxr_jax.eval import metrics as M
from cxr_jax.explain import sanity
from cxr_jax.report import accounting, attention, figures, fmt, loading

NAN2 = (float('nan'), float('nan'))


@dataclasses.dataclass
class Run:
  """What the sections read.

  Attributes:
    workdir: the run's folder.
    groups: {(protocol, init, fraction): results}, `loading.group_results`.
    n_boot, seed: bootstrap resamples and seed.
    stacks: {key: `loading.Stack` or None}; why: {key: why it is None}.
    cis: {key: {metric: (lo, hi)}} for the stacked groups (none when n_boot is 0).
    atts: {key: `loading.load_attention` dict}, the groups with attention files only.
    summaries: {key: `attention.attention_summary`} of those.
    class_cis: {key: {'auroc' | 'map' | 'ece': [(lo, hi)] per finding}}, multi-label
      groups only.
  """
  workdir: Path
  groups: dict
  n_boot: int
  seed: int
  stacks: dict
  why: dict
  cis: dict
  atts: dict
  summaries: dict
  class_cis: dict = dataclasses.field(default_factory=dict)

  @property
  def protocols(self) -> list[str]:
    return sorted({k[0] for k in self.groups}, key=vocab.protocol_order)

  def keys(self, protocol: str) -> list[tuple]:
    return [k for k in self.groups if k[0] == protocol]


def prepare(workdir: Path, groups: dict, n_boot: int, seed: int) -> Run:
  """Stacks each group's predictions and attention files and bootstraps their CIs."""
  stacks, why, cis = {}, {}, {}
  for key, rs in groups.items():
    stacks[key], why[key] = loading.stack_predictions(rs)
    if stacks[key] is not None and n_boot > 0:
      s = stacks[key]
      cis[key] = bootstrap.seed_mean_cis(s.labels, s.probs, s.groups, n_boot, seed)
  class_cis = {key: {m: bootstrap.seed_mean_class_cis(s.labels, s.probs, s.groups, n_boot,
                                                      seed, metric=m)
                     for m in ('auroc', 'map', 'ece')}
               for key, s in stacks.items() if s is not None and s.multilabel and n_boot > 0}
  atts = {key: loading.load_attention(rs, stacks[key].groups if stacks[key] is not None
                                      else None) for key, rs in groups.items()}
  atts = {k: v for k, v in atts.items() if v is not None}
  summaries = {k: attention.attention_summary(a, n_boot, seed) for k, a in atts.items()}
  return Run(workdir, groups, n_boot, seed, stacks, why, cis, atts, summaries, class_cis)


# ----------------------------------------------------------------------------- formatting

_fmt, _fmt_p = fmt.number, fmt.p_value  # every number of a table goes through these


def _mean_std_cell(values) -> str:
  mean, std = loading.mean_std(values)
  return f'{_fmt(mean)} ± {_fmt(std)}' if np.isfinite(mean) else '–'


def _head(columns: list[str], first: str = 'init | label fraction | seeds') -> list[str]:
  """A table's header and rule lines."""
  return [f'| {first} | ' + ' | '.join(columns) + ' |',
          '|---' * (len(first.split(' | ')) + len(columns)) + '|']


def _group_row(key, rs, cells: list[str]) -> str:
  return f'| {key[1]} | {key[2]:g} | {len(rs)} | ' + ' | '.join(cells) + ' |'


# ----------------------------------------------------------------------------- sections

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


def _metrics(run: Run, keys) -> list[str]:
  """The HEADLINE metrics that any result of these groups has."""
  return [m for m in M.HEADLINE if any(m in r['test'] for k in keys for r in run.groups[k])]


def _metric_cell(run: Run, key, m: str) -> str:
  cell = _mean_std_cell([r['test'].get(m) for r in run.groups[key]])
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
  lines += _head([m.split('/', 1)[1] for m in per_class])
  for key in keys:
    cells = [_mean_std_cell([r['test'].get(m) for r in run.groups[key]]) for m in per_class]
    lines.append(_group_row(key, run.groups[key], cells))
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
  lines += _head(list(names))
  for key in keys:
    cis = run.class_cis.get(key, {}).get('map' if metric == 'ap' else metric, [])
    cells = []
    for f, name in enumerate(names):
      cell = _mean_std_cell([r['test'].get(f'{metric}/{name}') for r in run.groups[key]])
      lo, hi = cis[f] if f < len(cis) else NAN2
      cells.append(cell + (f' [{_fmt(lo)}, {_fmt(hi)}]' if np.isfinite(lo) else ''))
    lines.append(_group_row(key, run.groups[key], cells))
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
  metrics = _metrics(run, keys)
  findings = _findings(run, keys)
  lines = [f'## {title}: test metrics (mean ± std over seeds [95% CI])', '']
  lines += _head(metrics)
  lines += [_group_row(k, run.groups[k], [_metric_cell(run, k, m) for m in metrics])
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
  lines += _head(['regime A', 'regime B', 'seeds', 'Δ AUROC (A − B)', '95% CI', 'p',
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


# why a cell of the attention table is a dash, said under the table when one is
DASH_REASONS = {
    'no mask': 'a share where no explained image of the group had that region\'s mask (a '
               'dataset without lung masks: config.explain.data names a masked set, or '
               "config.explain.masks='segmenter:<folder>')",
    'zero maps': 'a share where every map of the group is zero (Grad-CAM keeps positive '
                 'evidence only; a model trained a few steps may have none for its class)',
    'rho': 'ρ where fewer than 3 images have both shares defined, or either is constant',
    'other images': 'Δ vs scratch where the regime was explained on other images than '
                    'scratch, or scratch has no attention file',
    'no diff': 'Δ vs scratch where the lung share (pred) is undefined in either regime',
}


def _undefined_share(att: dict, name: str) -> str:
  """The DASH_REASONS key of a share `name` without a value: no mask, or zero maps."""
  region = 'lung' if name == 'occlusion_lung_share' else name.rsplit('_share_', 1)[0]
  areas = [a[f'{region}_area'] for a in att['arrays'] if f'{region}_area' in a]
  has_mask = any(np.nan_to_num(np.asarray(x, np.float64)).max(initial=0) > 0 for x in areas)
  return 'zero maps' if has_mask else 'no mask'


def _vs_scratch(run: Run, key, why: set) -> str:
  """'Δ lung share vs scratch (p)' of a group, '–' for scratch, another test set or an
  undefined difference (adding its reason to `why`)."""
  att, ref = run.atts[key], (key[0], 'scratch', key[2])
  if key[1] == 'scratch':
    return '–'
  if ref not in run.atts or not (
      np.array_equal(run.atts[ref]['labels'], att['labels']) and
      np.array_equal(run.atts[ref]['groups'], att['groups'])):
    why.add('other images')
    return '–'
  d = attention.paired_share(att, run.atts[ref], 'lung_share_pred', run.n_boot, run.seed)
  if not fmt.defined(d['diff']):
    why.add('no diff')
    return '–'
  return f'{_fmt(d["diff"], 2, sign=True)} (p {_fmt_p(d["p_value"])})'


def _attention_row(run: Run, key, extra: list[str], why: set) -> str:
  s = run.summaries[key]

  def cell(name):
    if name not in s or not fmt.defined(s[name][0]):
      why.add(_undefined_share(run.atts[key], name))
      return '–'
    return f'{_fmt(s[name][0], 2)} [{_fmt(s[name][1], 2)}, {_fmt(s[name][2], 2)}]'

  rho = s.get('gradcam_occlusion_spearman')
  if not rho:
    why.add('rho')
  return (f'| {key[0]} | {key[1]} | {key[2]:g} | {len(run.atts[key]["seeds"])} | '
          f'{cell("lung_share_pred")} | {cell("lung_share_true")} | ' +
          ''.join(f'{cell(r + "_share_pred")} | ' for r in extra) +
          f'{cell("occlusion_lung_share")} | '
          f'{_fmt(rho[0], 2) + f" (n={rho[3]})" if rho else "–"} | '
          f'{_vs_scratch(run, key, why)} |')


def _cam_resolutions(run: Run) -> tuple[list[str], list[str]]:
  """('HxW' of every Grad-CAM resolution, of those coarser than 4), sorted."""
  every, coarse = set(), set()
  for att in run.atts.values():
    res = att['arrays'][0].get('cam_resolution')
    if res is not None:
      every.add(f'{int(res[0])}x{int(res[1])}')
      if min(res) < 4:
        coarse.add(f'{int(res[0])}x{int(res[1])}')
  return sorted(every), sorted(coarse)


def attention_shares(run: Run) -> list[str]:
  """Grad-CAM (and occlusion) shares inside the lungs and other regions, per group."""
  if not run.atts:
    if loading.explain_enabled(run.workdir):
      return ['## Attention: Grad-CAM share inside the lungs', '',
              'No lung masks were available for the explained images (a dataset without '
              "masks, config.explain.masks='dataset'), so no attention was measured; use "
              'config.explain.data (a masked set) or config.explain.masks='
              "'segmenter:<folder>' (python -m cxr_jax.cli.segment).", '']
    return []
  regions = sorted({k.rsplit('_share_pred', 1)[0] for a in run.atts.values()
                    for k in attention.share_keys(a)}, key=lambda r: (r != 'lung', r))
  extra = [r for r in regions if r != 'lung']
  lines = ['## Attention: Grad-CAM share inside the lungs', '']
  lines += _head(['lung share (pred)', 'lung share (true)'] +
                 [f'{r} share (pred)' for r in extra] +
                 ['occlusion lung share', 'Grad-CAM vs occlusion ρ',
                  'Δ lung share vs scratch (p)'], first='protocol | init | label fraction | seeds')
  why = set()
  lines += [_attention_row(run, key, extra, why) for key in run.atts]
  dashes = ['', '–: no value: ' + '; '.join(DASH_REASONS[k] for k in DASH_REASONS
                                              if k in why) + '.'] if why else []
  return lines + dashes + _attention_notes(*_cam_resolutions(run)) + _mask_sources(run)


def _mask_sources(run: Run) -> list[str]:
  """Which images were explained and where their lung masks came from."""
  seen = sorted({(str(a.get('explain_data', '')), str(a.get('mask_source', 'dataset')))
                 for att in run.atts.values() for a in att['arrays']})
  if not seen or seen == [('', 'dataset')]:
    return []
  return ['Explained images and lung masks: ' + '; '.join(
      f'{d or "the test split"} with masks from '
      f'{"the dataset" if m == "dataset" else m}' for d, m in seen) + '.', '']


def attention_sanity(run: Run) -> list[str]:
  """The Grad-CAM randomisation test (Adebayo et al. 2018) and map-level Grad-CAM vs
  occlusion agreement, per group."""
  kinds = [k for k in sanity.RANDOMISATIONS
           if any(f'randomised_{k}_spearman' in s for s in run.summaries.values())]
  has_maps = any('gradcam_occlusion_map_spearman' in s for s in run.summaries.values())
  if not kinds and not has_maps:
    return []
  limit = sanity.MAX_RANDOMISED_SPEARMAN
  lines = ['## Attention sanity: randomisation test and Grad-CAM vs occlusion', '']
  lines += _head([f'ρ(trained, {k} randomised)' for k in kinds] +
                 ['ρ(Grad-CAM, occlusion map)', 'randomisation test'],
                 first='protocol | init | label fraction | seeds')
  failed = []
  for key, s in run.summaries.items():
    cell = lambda name: (f'{_fmt(s[name][0], 2)} [{_fmt(s[name][1], 2)}, '
                         f'{_fmt(s[name][2], 2)}] (n={s[name][3]})' if name in s else '–')
    # passes when every randomisation's CI lies below the limit; NaN bounds fail too
    checks = [s[f'randomised_{k}_spearman'] for k in kinds if f'randomised_{k}_spearman' in s]
    ok = bool(checks) and all(np.isfinite(c[2]) and c[2] < limit for c in checks)
    verdict = '–' if not checks else ('passes' if ok else '**FAILS**')
    if checks and not ok:
      failed.append(f'{key[1]} {key[2]:g}')
    lines.append(f'| {key[0]} | {key[1]} | {key[2]:g} | {len(run.atts[key]["seeds"])} | ' +
                 ''.join(f'{cell(f"randomised_{k}_spearman")} | ' for k in kinds) +
                 f'{cell("gradcam_occlusion_map_spearman")} | {verdict} |')
  lines += ['', 'ρ: per-image Spearman rank correlation of two maps of the same image '
            '(mean over images of the seed-mean, 95% patient-bootstrap CI, n images with '
            'both maps non-constant). Randomisation test (Adebayo et al., NeurIPS 2018): '
            'Grad-CAM of the predicted class by the trained model against the same class by '
            "the model with its head ('head') or all its weights ('full') re-initialised; it "
            f'passes when every CI lies below {limit:g}, i.e. the maps depend on what the '
            'model learned. Grad-CAM vs occlusion: the two maps of the first test images.',
            '']
  if failed:
    lines += [f'**Warning**: the Grad-CAM maps of {", ".join(failed)} barely change when '
              'the weights are randomised: their lung shares describe the image and the '
              'architecture more than the trained model.', '']
  return lines


def _attention_notes(resolutions: list[str], coarse: list[str]) -> list[str]:
  """What a share means, and a warning for Grad-CAM maps too coarse to mean anything."""
  lines = ['', 'Share = (fraction of Grad-CAM energy inside the region) / (region area '
           'fraction): 1.0 for a uniform map, > 1 when attention concentrates in the '
           'region, 0 when all of it is outside. Grad-CAM on the last convolutional stage '
           '(or config.explain.stage), here on '
           f'{" / ".join(resolutions) or "?"} feature maps, '
           'for the predicted (pred) and the true class; per image averaged over seeds, '
           'then over images, with a 95% patient-bootstrap CI. Occlusion: the same share '
           'for occlusion-sensitivity maps (gradient-free) on the first test images, with '
           'ρ its Spearman correlation with the Grad-CAM share on those images. Δ vs '
           'scratch: paired bootstrap of the mean lung share difference.', '']
  if coarse:
    lines += [f'Warning: Grad-CAM was computed on {" / ".join(coarse)} feature '
              'maps here; a 1x1 map gives a uniform CAM (share 1.0 whatever the model '
              'looks at) and 2x2 is nearly as coarse. Use a larger input or a smaller stem '
              '(config.finetune.image_size, config.model.stem) for attention that means '
              'something; the occlusion share does not have this limit.', '']
  return lines


def _confounder_row(run: Run, key) -> str:
  rs = run.groups[key]
  val = [r.get('val_score') for r in rs]
  test = [r['test'].get('auroc') for r in rs]
  drop = [v - t for v, t in zip(val, test)
          if v is not None and t is not None and np.isfinite(v) and np.isfinite(t)]
  cell = lambda vs: '{} ± {}'.format(*map(_fmt, loading.mean_std(vs)))
  s = run.summaries.get(key, {})
  share = lambda k: _fmt(s[k][0], 2) if k in s else '–'
  return (f'| {key[0]} | {key[1]} | {key[2]:g} | {len(rs)} | {cell(val)} | '
          f'{cell(test)} | {cell(drop)} | {share("lung_share_pred")} | '
          f'{share("marker_share_pred")} |')


def confounder_study(run: Run) -> list[str]:
  """Val (confounded) against test (not) AUROC of a phantom with a burned-in marker."""
  strength = loading.phantom_confounding(run.workdir)
  if strength <= 0:
    return []
  lines = ['## Confounder study (phantom)', '',
           f'Train and val carry a burned-in marker that equals the label with probability '
           f'{strength:g}; test does not. A model that reads the marker scores well on val '
           'and drops on test, and puts less attention inside the lungs.', '']
  lines += _head(['val AUROC (selected)', 'test AUROC', 'drop (val − test)',
                  'lung share (pred)', 'marker share (pred)'],
                 first='protocol | init | label fraction | seeds')
  lines += [_confounder_row(run, key) for key in run.groups]
  return lines + [
      '', 'val AUROC is the best val macro AUROC over the evaluations, the one used '
      'for model selection (so slightly optimistic); test AUROC is that model on the '
      'unconfounded test split. Means ± std over seeds.', '']


def curve_rows(run: Run) -> list[dict]:
  """The points of `figures.figure_auroc_vs_fraction`: seed-mean macro AUROC and its CI."""
  rows = []
  for protocol in run.protocols:
    keys = run.keys(protocol)
    if 'auroc' not in _metrics(run, keys):
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
  lines += _head(['fraction', 'seed', 'best step', 'val score', 'test auroc'],
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
