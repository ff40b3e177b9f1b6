"""Attention summaries of one group (a regime at one label fraction) over its seeds.

An attention dict is what `loading.load_attention` returns: the seeds' attention.npz arrays
(`cxr_jax.explain.analysis.attention_analysis`), their patient ids and labels. A per-image
value is first averaged over seeds, then over images, with a patient-bootstrap CI.
"""
from __future__ import annotations

import numpy as np

from cxr_jax.eval import bootstrap
from cxr_jax.eval.metrics import nanmean_rows


def seed_mean_per_image(arrays: list[np.ndarray]) -> np.ndarray:
  """[N] nan-mean over seeds of per-image values (NaN where no seed has a value)."""
  return nanmean_rows(np.stack(arrays, axis=1).astype(np.float64))


def share_keys(att: dict) -> list[str]:
  """'<region>_share_pred' keys, lung first."""
  keys = [k for k in att['arrays'][0] if k.endswith('_share_pred')]
  return sorted(keys, key=lambda k: (k != 'lung_share_pred', k))


def _mean_ci(per_image: np.ndarray, groups, n_boot: int, seed: int) -> tuple:
  """(mean, lo, hi, n_images) of per-image values over images (NaN images skipped)."""
  lo, hi = bootstrap.percentile_ci(
      bootstrap.weighted_mean_resamples(per_image, groups, n_boot, seed))
  defined = ~np.isnan(per_image)
  mean = float(np.nanmean(per_image)) if np.any(defined) else float('nan')
  return mean, lo, hi, int(np.sum(defined))


def attention_summary(att: dict, n_boot: int, seed: int = 0) -> dict[str, tuple]:
  """{key: (mean, lo, hi, n_images)} of each share over images (seed-mean per image), of
  the per-image Spearman correlations 'randomised_<kind>_spearman' and
  'gradcam_occlusion_map_spearman' where the files have them, and
  'gradcam_occlusion_spearman': (rho, nan, nan, n_images) (of the lung shares) where it
  is defined."""
  out = {}
  keys = share_keys(att) + [k.replace('_pred', '_true') for k in share_keys(att)]
  for key in keys:
    if key in att['arrays'][0]:
      per_image = seed_mean_per_image([a[key] for a in att['arrays']])
      out[key] = _mean_ci(per_image, att['groups'], n_boot, seed)
  # randomisation sanity test and map-level Grad-CAM vs occlusion agreement: per-image
  # Spearman correlations, seed-mean per image, then mean over images with a patient CI
  for key in sorted({k for a in att['arrays'] for k in a
                     if k.startswith('randomised_') and k.endswith('_spearman')}):
    if all(key in a for a in att['arrays']):
      out[key] = _mean_ci(seed_mean_per_image([a[key] for a in att['arrays']]),
                          att['groups'], n_boot, seed)
  maps = [a['gradcam_occlusion_map_spearman'] for a in att['arrays']
          if a.get('gradcam_occlusion_map_spearman') is not None and
          a['gradcam_occlusion_map_spearman'].size]
  if maps:
    o = min(len(x) for x in maps)
    out['gradcam_occlusion_map_spearman'] = _mean_ci(
        seed_mean_per_image([x[:o] for x in maps]), att['groups'][:o], n_boot, seed)
  occ = [a['occlusion_lung_share'] for a in att['arrays'] if 'occlusion_lung_share' in a and
         a['occlusion_lung_share'].size]
  if occ:
    o = min(len(x) for x in occ)
    occ_img = seed_mean_per_image([x[:o] for x in occ])
    out['occlusion_lung_share'] = _mean_ci(occ_img, att['groups'][:o], n_boot, seed)
    grad = seed_mean_per_image([a['lung_share_pred'][:o] for a in att['arrays']])
    ok = ~np.isnan(grad) & ~np.isnan(occ_img)
    # a constant input (e.g. a uniform 1x1 Grad-CAM) leaves the correlation undefined
    if ok.sum() >= 3 and np.ptp(grad[ok]) > 0 and np.ptp(occ_img[ok]) > 0:
      from scipy.stats import spearmanr  # heavy: scipy, for one statistic
      rho = spearmanr(grad[ok], occ_img[ok]).statistic
      out['gradcam_occlusion_spearman'] = (float(rho), float('nan'), float('nan'),
                                           int(ok.sum()))
  return out


def paired_share(att_a: dict, att_b: dict, key: str, n_boot: int, seed: int = 0) -> dict:
  """Paired bootstrap of mean share(a) - mean share(b) over the same test patients
  (`bootstrap.paired_mean_difference`: 'diff', 'lo', 'hi', 'p_value')."""
  a = seed_mean_per_image([x[key] for x in att_a['arrays']])
  b = seed_mean_per_image([x[key] for x in att_b['arrays']])
  return bootstrap.paired_mean_difference(a, b, att_a['groups'], n_boot, seed)
