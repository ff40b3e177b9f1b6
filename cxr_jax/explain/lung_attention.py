"""How much of a model's attention falls inside a region (the lungs, a tube, a marker).

For a non-negative attention map a (e.g. a Grad-CAM) and a binary mask m over the same
pixels:

  inside_fraction = sum(a * m) / sum(a)                  in [0, 1]
  attention_share = inside_fraction / mean(m)            in [0, 1 / mean(m)]

The share divides by the mask's area fraction so that a map that ignores the image
(uniform) scores 1.0 whatever the mask's size: > 1 means attention concentrates in the
region, < 1 that it avoids it, 0 that it is all outside. Both are NaN for an all-zero map
or an empty mask, where they are undefined; the bootstrap (`cxr_jax.eval.bootstrap`) and
`mean_std` skip NaN.

Negative map values (occlusion maps, where hiding a pixel raised the class probability)
are clipped to 0: only evidence for the class counts as attention.
"""
from __future__ import annotations

import numpy as np


def _check(cams, masks):
  cams = np.asarray(cams, dtype=np.float64)
  masks = np.asarray(masks)
  if cams.ndim != 3 or cams.shape != masks.shape:
    raise ValueError(f'expected cams and masks of the same shape [B, H, W], got '
                     f'{cams.shape} and {masks.shape}; resize the maps to the mask size')
  if not np.all(np.isfinite(cams)):
    raise ValueError('cams contain non-finite values')
  # masks may be bool, {0, 1} or {0, 255}: anything > 0 is inside
  return np.maximum(cams, 0.0), (masks > 0).astype(np.float64)


def inside_fraction(cams, masks) -> np.ndarray:
  """Fraction of attention energy inside the mask, per image.

  Args:
    cams: [B, H, W] attention maps (negative values count as 0).
    masks: [B, H, W] binary masks (nonzero = inside).

  Returns:
    [B] float64 in [0, 1]; NaN where a map is all zero or a mask is empty.
  """
  cams, masks = _check(cams, masks)
  total = cams.sum(axis=(1, 2))
  inside = (cams * masks).sum(axis=(1, 2))
  area = masks.sum(axis=(1, 2))
  valid = (total > 0) & (area > 0)
  return np.where(valid, inside / np.where(valid, total, 1.0), np.nan)


def attention_share(cams, masks) -> np.ndarray:
  """Inside fraction of attention divided by the mask's area fraction, per image.

  Args:
    cams: [B, H, W] attention maps (negative values count as 0).
    masks: [B, H, W] binary masks (nonzero = inside).

  Returns:
    [B] float64: 1.0 for a uniform map, 1 / area_fraction with all attention inside, 0
    with all outside; NaN where a map is all zero or a mask is empty.
  """
  frac = inside_fraction(cams, masks)
  area = (np.asarray(masks) > 0).mean(axis=(1, 2))
  return frac / np.where(area > 0, area, np.nan)
