"""The attention sections of report.md: the lung (and marker) share of Grad-CAM per regime
with its difference from scratch, the randomisation (sanity) test, and the phantom's
confounder study (val against test AUROC, attention inside the lungs). `Run` -> Markdown.
"""
from __future__ import annotations

import numpy as np

from cxr_jax.explain import sanity
from cxr_jax.report import attention, fmt, loading
from cxr_jax.report.run import Run, table_head

_fmt, _fmt_p = fmt.number, fmt.p_value  # every number of a table goes through these


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
  lines += table_head(['lung share (pred)', 'lung share (true)'] +
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
  lines += table_head([f'ρ(trained, {k} randomised)' for k in kinds] +
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
  lines += table_head(['val AUROC (selected)', 'test AUROC', 'drop (val − test)',
                  'lung share (pred)', 'marker share (pred)'],
                 first='protocol | init | label fraction | seeds')
  lines += [_confounder_row(run, key) for key in run.groups]
  return lines + [
      '', 'val AUROC is the best val macro AUROC over the evaluations, the one used '
      'for model selection (so slightly optimistic); test AUROC is that model on the '
      'unconfounded test split. Means ± std over seeds.', '']
