"""Overlay figures: the same test images explained by each initialisation regime.

One row per image; the first column is the image (with the mask outline), then one column
per regime with its attention map as a heat map over the image.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

import matplotlib
matplotlib.use('Agg')  # files only; never opens a window
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

MASK_COLOR = '#00e5ff'  # cyan stays visible over both gray images and the heat colormap


def _unit(x: np.ndarray) -> np.ndarray:
  """Scales one map to [0, 1] for display (a constant map becomes 0)."""
  lo, hi = float(np.min(x)), float(np.max(x))
  return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _squeeze(x, name, n=None) -> np.ndarray:
  x = np.asarray(x, dtype=np.float32)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 3 or (n is not None and x.shape[0] != n):
    raise ValueError(f'{name} must be [N, H, W]{"" if n is None else f" with N={n}"}, '
                     f'got {x.shape}')
  return x


def overlay_grid(path: str, images, cams: Mapping[str, np.ndarray], masks=None,
                 titles: Sequence[str] | None = None, cell_inches: float = 2.0,
                 dpi: int = 100, alpha: float = 0.5, cmap: str = 'jet') -> str:
  """Writes a PNG grid of attention maps over images, side by side across regimes.

  Each heat map is scaled to its own [0, 1] range for display (Grad-CAM magnitudes are
  not comparable between models); compare shapes, not colours, across columns. The figure
  is exactly (1 + len(cams)) * cell_inches * dpi pixels wide and N * cell_inches * dpi
  pixels high (margins for the column headers and row labels included).

  Args:
    path: output .png path; parent folders are created.
    images: [N, H, W] (or [N, H, W, 1]) gray images, any range (each shown min-max scaled).
    cams: regime name -> [N, H, W] attention maps at the image resolution.
    masks: optional [N, H, W] binary masks, drawn as an outline on every panel.
    titles: optional N row labels (e.g. 'patient 12 · typical').
    cell_inches: side of one panel in inches.
    dpi: pixels per inch of the PNG.
    alpha: opacity of the heat map.
    cmap: matplotlib colormap of the heat map.

  Returns:
    `path`.
  """
  images = _squeeze(images, 'images')
  n = images.shape[0]
  maps = {name: _squeeze(c, f'cams[{name!r}]', n) for name, c in cams.items()}
  if masks is not None:
    masks = _squeeze(masks, 'masks', n) > 0
  if titles is not None and len(titles) != n:
    raise ValueError(f'titles has {len(titles)} entries for {n} images')
  cols = 1 + len(maps)
  fig, axes = plt.subplots(n, cols, figsize=(cols * cell_inches, n * cell_inches), dpi=dpi,
                           squeeze=False)
  # small fixed margins so every panel keeps the same size (no bbox_inches='tight', which
  # would change the pixel size of the file)
  width, height = cols * cell_inches, n * cell_inches
  fig.subplots_adjust(left=(0.25 if titles is not None else 0.02) / width,
                      right=1 - 0.02 / width, bottom=0.02 / height, top=1 - 0.3 / height,
                      wspace=0.03, hspace=0.03)
  headers = ['image'] + list(maps)
  for r in range(n):
    img = _unit(images[r])
    for c in range(cols):
      ax = axes[r, c]
      ax.imshow(img, cmap='gray', vmin=0, vmax=1, interpolation='nearest')
      if c > 0:
        heat = _unit(maps[headers[c]][r])
        ax.imshow(heat, cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation='bilinear')
      if masks is not None and masks[r].any():
        ax.contour(masks[r].astype(np.float32), levels=[0.5], colors=MASK_COLOR,
                   linewidths=0.8)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(headers[c], fontsize=9)
      if c == 0 and titles is not None:
        ax.set_ylabel(titles[r], fontsize=8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path
