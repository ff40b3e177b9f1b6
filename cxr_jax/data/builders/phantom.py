"""Synthetic chest-radiograph phantoms: a numpy renderer and the `phantom` TFDS builder.

No real chest X-ray can be fetched at run time, so the demo and most tests train on these
procedural images. Each one is a frontal (PA) radiograph-like picture with exact lung
masks, a study-level class carried only by opacities inside the lungs, and an optional
burned-in marker outside the lungs that the training split may correlate with the label
(a confounder, so that a model that reads the marker instead of the lungs is caught by
its lung-attention share and by its drop on the unconfounded test split).

Classes, in the spirit of SIIM-FISABIO-RSNA COVID-19 (see `CLASS_NAMES`):
  negative       no opacity
  typical        bilateral, peripheral, multifocal ground-glass (soft, faint) opacities
  indeterminate  unilateral, central (perihilar) opacities, often subtle
  atypical       one dense lobar consolidation in a lower zone, or a pleural effusion

Multi-label findings (option `findings=True`, off by default): `targets` float32 [4] in
`FINDINGS` order, drawn independently of each other from a separate random stream (the
default phantom's images and labels do not change):
  opacity       1 for any non-negative class (the class's opacities above)
  effusion      fluid filling the base of one lung (prevalence FINDING_PREVALENCE)
  cardiomegaly  an enlarged heart shadow overlapping the medial lower lungs
  device        a bright line (a tube or catheter) running down from the neck

Build it (no TensorFlow needed; writes ArrayRecord):

  b = Phantom(config=make_config(size=64), data_dir=d, file_format='array_record')
  b.download_and_prepare()
  b.as_data_source()['train'][0]   # dict of numpy arrays, Text as bytes

Contact sheet of examples with mask (cyan) and lesion (red) outlines:

  python -m cxr_jax.data.builders.phantom --contact_sheet=docs/phantom.png
  python -m cxr_jax.data.builders.phantom --benchmark   # images per second, one core
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.schema import UNLABELED, core_features

CLASS_NAMES = ('negative', 'typical', 'indeterminate', 'atypical')
NEGATIVE, TYPICAL, INDETERMINATE, ATYPICAL = range(4)

FINDINGS = ('opacity', 'effusion', 'cardiomegaly', 'device')
FINDING_PREVALENCE = 0.3  # of effusion, cardiomegaly and device, each on its own
_FINDINGS_STREAM = 1  # appended to an example's seed: the findings' own random stream

# Split order fixes the per-split random streams: changing it would change every image.
SPLITS = ('unlabeled', 'train', 'val', 'test')
_CONFOUNDED_SPLITS = ('train', 'val')

NO_MARKER = -1
NUM_MARKERS = 4  # marker value v is burned in at corner v: 0 TL, 1 TR, 2 BL, 3 BR

# 5x5 letter-like glyphs for the marker; which one is drawn is random and carries no
# information (only the corner does).
_GLYPHS = np.array([
    [[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]],  # L
    [[1, 1, 1, 1, 0], [1, 0, 0, 0, 1], [1, 1, 1, 1, 0], [1, 0, 0, 1, 0], [1, 0, 0, 0, 1]],  # R
    [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]],  # box
    [[1, 0, 0, 0, 1], [1, 1, 0, 1, 1], [1, 0, 1, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1]],  # M
], dtype=bool)


# ----------------------------------------------------------------------------- renderer


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
  """Gaussian blur of a [S, S] float32 image, sigma in pixels (edges replicated).

  Written as shifted adds, not a matmul with a blur matrix: on a machine shared by many
  processes, multithreaded BLAS made a 128x128 matmul ~80x slower than this.
  """
  if sigma_px < 0.3:  # below a third of a pixel the kernel is ~identity
    return img
  r = int(np.ceil(3.0 * sigma_px))
  w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2).astype(img.dtype)
  w /= w.sum()
  s = img.shape[0]
  p = np.pad(img, ((r, r), (0, 0)), mode='edge')
  out = sum(w[k] * p[k:k + s] for k in range(2 * r + 1))
  p = np.pad(out, ((0, 0), (r, r)), mode='edge')
  return sum(w[k] * p[:, k:k + s] for k in range(2 * r + 1))


def _segment_distance(x, y, p0, p1):
  """Distance from points (x [1,S], y [S,1]) to the segment p0-p1, shape [S, S]."""
  (x0, y0), (x1, y1) = p0, p1
  dx, dy = x1 - x0, y1 - y0
  t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
  return np.hypot(x - x0 - t * dx, y - y0 - t * dy)


def _lung_coords(lung: np.ndarray, x: np.ndarray, y: np.ndarray, side: int):
  """Normalised positions of one lung's pixels, for placing findings.

  Args:
    lung: [S, S] bool mask of one lung.
    x, y: [1, S] and [S, 1] normalised pixel-centre coordinates.
    side: -1 for the lung on the image's left (the patient's right), +1 otherwise.

  Returns:
    (rows, cols, lateral, height): index arrays [N] of the lung pixels, and per pixel
    `lateral` in [0, 1] (0 = medial edge of the lung's bounding box, 1 = lateral edge)
    and `height` in [0, 1] (0 = apex, 1 = base).
  """
  rows, cols = np.nonzero(lung)
  xs, ys = x[0, cols] * side, y[rows, 0]
  lateral = (xs - xs.min()) / max(np.ptp(xs), 1e-6)
  height = (ys - ys.min()) / max(np.ptp(ys), 1e-6)
  return rows, cols, lateral, height


def _pick(rng, rows, cols, ok) -> tuple[int, int]:
  """A random lung pixel among those where `ok` holds (any lung pixel if none does)."""
  idx = np.flatnonzero(ok)
  if idx.size == 0:  # tiny images can leave a zone empty; stay inside the lung anyway
    idx = np.arange(rows.size)
  k = idx[rng.integers(idx.size)]
  return int(rows[k]), int(cols[k])


def _blob(x, y, centre, sigma, flat=False):
  """[S, S] opacity profile in [0, 1] peaking (=1) at pixel `centre` = (row, col).

  Ground glass is Gaussian (soft edges); consolidation (`flat`) is a super-Gaussian,
  flat-topped with a sharper margin, as a lobe filled with fluid looks.
  """
  r, c = centre
  d2 = ((x - x[0, c]) ** 2 + (y - y[r, 0]) ** 2) / (2.0 * sigma * sigma)
  return np.exp(-(d2 * d2) if flat else -d2)


def render(rng: np.random.Generator, label: int, size: int = 64,
           confounder: int = NO_MARKER,
           followup: np.random.Generator | None = None) -> dict[str, Any]:
  """Renders one phantom chest radiograph.

  Everything random is drawn from `rng`, so the image is a pure function of its state.
  Intensities follow a radiograph's convention: dense tissue (bone, heart, fluid) is
  bright, air (lungs, outside the body) is dark.

  Args:
    rng: the random generator (consumed).
    label: class index into `CLASS_NAMES`.
    size: image side S in pixels (>= 16).
    confounder: -1 for no marker, or 0..3: a bright glyph burned in at that corner
      (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right), never on the lungs.
    followup: a second generator for a follow-up image of the same patient: the
      patient's position and size in the field, the exposure (window, contrast, gamma),
      detector blur and noise are drawn from it, everything else (anatomy, findings,
      marker) from `rng` as for the first image. `rng` is consumed the same way either
      way, so None gives exactly the image of before this option.

  Returns:
    A dict with
      image    [S, S, 1] uint8, the radiograph
      mask     [S, S, 1] uint8, 1 inside the lungs (exact: the geometry that was drawn)
      lesion   [S, S, 1] uint8, 1 where an opacity is (a subset of `mask`)
      marker   [S, S, 1] uint8, 1 on the burned-in marker's pixels
      severity float in [0, 1] (0 for negatives): how conspicuous the findings are
  """
  if label not in range(len(CLASS_NAMES)):
    raise ValueError(f'label must be in 0..{len(CLASS_NAMES) - 1}, got {label}')
  if confounder not in range(NO_MARKER, NUM_MARKERS):
    raise ValueError(f'confounder must be in -1..{NUM_MARKERS - 1}, got {confounder}')
  if size < 16:
    raise ValueError(f'size must be at least 16 px, got {size}')
  f32 = np.float32
  u = rng.uniform

  def vary(value, low, high):  # a follow-up redraws it (rng's draw is kept: same stream)
    return value if followup is None else float(followup.uniform(low, high))
  # Pixel-centre coordinates in [-1, 1]; kept 1-D ([1,S] and [S,1]) and broadcast.
  grid = ((np.arange(size, dtype=f32) + 0.5) / size * 2.0 - 1.0)
  # Patient position and size vary: everything below is drawn in patient coordinates.
  scale = vary(u(0.88, 1.0), 0.88, 1.0)
  x = ((grid - vary(u(-0.05, 0.05), -0.05, 0.05)) / scale)[None, :].astype(f32)
  y = ((grid - vary(u(-0.04, 0.04), -0.04, 0.04)) / scale)[:, None].astype(f32)
  ax = np.abs(x)

  # Body: a neck widening into the shoulders, then a chest wall widest at the bases.
  chest_w = u(0.86, 0.98)
  half_w = 0.22 + (chest_w - 0.22) / (1.0 + np.exp(-(y + 0.7) / 0.07))  # [S,1]
  half_w = half_w * (0.92 + 0.08 * np.clip((y + 0.5) / 1.0, 0.0, 1.0))
  body = (ax < half_w).astype(f32)
  # Soft tissue is thickest mid-body; the profile fades out to the skin line.
  thick = np.sqrt(np.clip(1.0 - (x / half_w) ** 2, 0.0, 1.0))

  # Mediastinum (wider low down) with the trachea's air column, the heart shadow (to the
  # patient's left, i.e. the image's right; about half the chest wide) and aortic knob.
  med_w = u(0.09, 0.12) + 0.03 * (y + 1.0)
  med = ax < med_w
  trachea = (ax < 0.035) & (y < u(-0.2, -0.1))
  # The heart is an ellipse tilted so its apex points down and to the image's right.
  hx, hy, tilt = u(0.1, 0.16), u(0.2, 0.26), u(0.35, 0.6)
  ha = (x - hx) * np.cos(tilt) + (y - hy) * np.sin(tilt)
  hb = (y - hy) * np.cos(tilt) - (x - hx) * np.sin(tilt)
  heart = (ha / u(0.34, 0.4)) ** 2 + (hb / u(0.22, 0.27)) ** 2 < 1.0
  knob = (x - u(0.1, 0.14)) ** 2 + (y + u(0.32, 0.4)) ** 2 < u(0.06, 0.08) ** 2

  # Lungs: egg-shaped fields (narrow apex, wide base) cut by the mediastinum, heart and
  # the diaphragm domes. The masks are exactly these boolean regions.
  lungs, domes, lung_cy, cage = [], [], [], 0.0
  for side in (-1, 1):
    cx, cy = side * u(0.38, 0.44), u(-0.1, 0.0)
    rx, ry = u(0.26, 0.31), u(0.55, 0.64)
    t = (y - cy) / ry
    field = ((x - cx) / (rx * (0.82 + 0.18 * t))) ** 2 + t * t < 1.0
    # The right hemidiaphragm (image left) sits a little higher, over the liver.
    base = cy + ry * u(0.86, 0.95) - (0.03 if side < 0 else 0.0)
    dome = base - u(0.12, 0.2) * np.clip(1.0 - ((x - cx) / (1.1 * rx)) ** 2, 0.0, 1.0)
    lung = field & (y < dome) & (side * x > med_w) & ~heart & ~knob
    lungs.append(lung)
    domes.append(dome)
    lung_cy.append(cy)
    # The rib cage hugs the lung field, a little larger.
    cage = cage + ((((x - cx) / (rx + 0.08)) ** 2 + ((y - cy + 0.03) / (ry + 0.1)) ** 2 < 1.0)
                   & (side * x > 0))
  lung = lungs[0] | lungs[1]
  dome = np.where(x < 0, domes[0], domes[1])  # [1, S]
  abdomen = (y > dome).astype(f32) * body

  # Bones: posterior ribs (leaving the spine level, then falling laterally), fainter
  # anterior ribs (falling medially), clavicles and the spine. Ribs are stripes of a
  # periodic function of a curved coordinate, so all of them cost one cos().
  period, phase = u(0.13, 0.16), u(0.0, 1.0)
  post = y + 0.25 * ax - u(0.6, 0.8) * x * x
  ant = y + 0.55 * ax
  ribs = (np.clip(np.cos(2 * np.pi * (post / period + phase)), 0, None) ** 6 * u(0.06, 0.1)
          + np.clip(np.cos(2 * np.pi * (ant / (1.3 * period) + phase)), 0, None) ** 6 * 0.03)
  ribs = ribs * cage * (y < dome + 0.05) * (ax > 0.5 * med_w)
  clav_y, clav_w = u(-0.72, -0.62), u(0.025, 0.035)
  clavicles = sum(np.clip(1.0 - _segment_distance(
      x, y, (s * 0.08, clav_y), (s * u(0.55, 0.65), clav_y - u(0.08, 0.14))) / clav_w, 0, 1)
                  for s in (-1, 1))
  spine = np.clip(1.0 - ax / 0.06, 0.0, 0.5) * (0.08 + 0.03 * np.cos(2 * np.pi * y / 0.11))

  # Lungs hold air: they subtract density; vessels fan out from the hila, plus a
  # low-frequency texture of smaller vessels.
  air = u(0.34, 0.42)
  lung_f = lung.astype(f32)
  hila = sum(np.exp(-((x - s * 0.2) ** 2 + (y - cy) ** 2) / (2 * 0.12 ** 2))
             for s, cy in zip((-1, 1), lung_cy))
  vessels = _blur(rng.standard_normal((size, size)).astype(f32), size * 0.015)
  vessels *= 0.03 / (vessels.std() + 1e-6)
  lung_density = lung_f * (-air + 0.08 * hila + vessels)

  # Heart and liver are both water-dense: take the larger, so the heart's lower border
  # merges into the left dome as on a radiograph instead of adding up into a blob.
  water = np.maximum(0.32 * (med | heart | knob) * (y < dome + 0.1), 0.3 * abdomen)
  density = (body * (0.3 + 0.25 * thick + water - 0.12 * trachea)
             + ribs + 0.2 * clavicles * body + spine * body + lung_density)
  if u() < 0.6:  # gastric bubble just under the apex of the left dome
    gas = ((x - u(0.3, 0.45)) / 0.1) ** 2 + ((y - domes[1].min() - 0.1) / 0.06) ** 2 < 1.0
    density = density - 0.2 * gas * abdomen

  # Findings: opacity profiles in [0,1]; `lesion` is where the profile is marked.
  opacity = np.zeros((size, size), f32)
  lesion = np.zeros((size, size), bool)
  severity = 0.0 if label == NEGATIVE else float(u(0.0, 1.0))
  per_lung = [_lung_coords(lungs[i], x, y, side) for i, side in enumerate((-1, 1))]
  if label == TYPICAL:
    # Bilateral, peripheral, multifocal, ground glass: faint, soft, several per lung.
    for rows, cols, lat, hgt in per_lung:
      for _ in range(rng.integers(2, 5)):
        c = _pick(rng, rows, cols, (lat > 0.6) & (hgt > 0.25))
        prof = _blob(x, y, c, u(0.07, 0.12) * (0.7 + 0.5 * severity))
        opacity += (0.07 + 0.15 * severity) * prof
        lesion |= prof > 0.3
  elif label == INDETERMINATE:
    # One lung, central (perihilar) zone, one or two smaller foci; subtle when mild.
    rows, cols, lat, hgt = per_lung[rng.integers(2)]
    for _ in range(rng.integers(1, 3)):
      c = _pick(rng, rows, cols, (lat < 0.45) & (hgt > 0.25) & (hgt < 0.75))
      prof = _blob(x, y, c, u(0.05, 0.1) * (0.8 + 0.4 * severity))
      opacity += (0.06 + 0.14 * severity) * prof
      lesion |= prof > 0.3
  elif label == ATYPICAL:
    side = rng.integers(2)
    rows, cols, lat, hgt = per_lung[side]
    if u() < 0.6:
      # Lobar consolidation: one large, dense, sharply marginated lower-zone blob.
      c = _pick(rng, rows, cols, (hgt > 0.55) & (lat > 0.2) & (lat < 0.8))
      prof = _blob(x, y, c, u(0.12, 0.18) * (0.8 + 0.4 * severity), flat=True)
      opacity += (0.3 + 0.25 * severity) * prof
      lesion |= prof > 0.3
    else:
      # Pleural effusion: the base fills with fluid, its meniscus climbing laterally. The
      # level is a quantile of the lung's own pixels, so the fill is never empty.
      lung_lat = np.zeros((size, size), f32)
      lung_lat[rows, cols] = lat
      score = y - 0.15 * lung_lat
      level = np.quantile(score[rows, cols], 1.0 - (0.1 + 0.25 * severity))
      fill = lungs[side] & (score >= level)
      opacity += (0.35 + 0.2 * severity) * fill * (
          0.7 + 0.3 * np.clip((score - level) / 0.1, 0.0, 1.0))
      lesion |= fill
  # Findings live in the lungs only: clip both the drawn density and the marked pixels.
  density = density + opacity * lung_f
  lesion &= lung

  # Exposure: window, contrast and gamma vary between studies; then detector blur and
  # quantum noise.
  lo, hi = vary(u(-0.06, 0.04), -0.06, 0.04), vary(u(0.95, 1.15), 0.95, 1.15)
  img = np.clip((density - lo) / (hi - lo), 0.0, 1.0) ** vary(u(0.8, 1.25), 0.8, 1.25)
  img = _blur(img.astype(f32), vary(u(0.4, 1.0), 0.4, 1.0) * size / 128.0)
  noise = rng.standard_normal((size, size)).astype(f32)
  noise_sd = u(0.01, 0.03)
  if followup is not None:
    noise = followup.standard_normal((size, size)).astype(f32)
    noise_sd = followup.uniform(0.01, 0.03)
  img = img + noise * noise_sd

  # Burned-in marker: a bright glyph in one corner; corners lie far from the lungs, and
  # the mask subtraction makes the "never on the lungs" promise unconditional.
  marker = np.zeros((size, size), bool)
  if confounder != NO_MARKER:
    m = max(3, int(round(0.09 * size)))
    idx = np.arange(m) * 5 // m  # nearest-neighbour resize of the 5x5 glyph to m x m
    glyph = _GLYPHS[rng.integers(len(_GLYPHS))][idx][:, idx]
    jitter = rng.integers(0, max(1, int(0.03 * size)) + 1, size=2)
    off = max(1, int(round(0.03 * size)))
    r0 = off + jitter[0] if confounder in (0, 1) else size - off - m - jitter[0]
    c0 = off + jitter[1] if confounder in (0, 2) else size - off - m - jitter[1]
    marker[r0:r0 + m, c0:c0 + m] = glyph
    marker &= ~lung
    img = np.where(marker, u(0.85, 1.0), img)

  image = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
  as_u8 = lambda a: a.astype(np.uint8)[..., None]
  return dict(image=image[..., None], mask=as_u8(lung), lesion=as_u8(lesion),
              marker=as_u8(marker), severity=severity)


def add_findings(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
                 label: int) -> tuple[np.ndarray, np.ndarray]:
  """Draws the independent multi-label findings onto a rendered phantom.

  Args:
    rng: the findings' generator (consumed).
    image: [S, S, 1] uint8 from `render`.
    mask: [S, S, 1] uint8 lung mask from `render`.
    label: the image's class (opacity = label != negative).

  Returns:
    (image [S, S, 1] uint8 with the findings drawn, targets [4] float32 in FINDINGS order).
  """
  size = image.shape[0]
  img = image[..., 0].astype(np.float32) / 255.0
  lung = mask[..., 0] > 0
  grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
  x, y = grid[None, :], grid[:, None]
  present = rng.uniform(size=3) < FINDING_PREVALENCE
  effusion, cardiomegaly, device = (bool(v) for v in present)
  if effusion:  # one lung's base fills with fluid: its lowest 25-40% of rows
    half = lung & ((x < 0) if rng.integers(2) else (x >= 0))
    rows = np.nonzero(half.any(axis=1))[0]
    if rows.size:
      level = rows.max() - rng.uniform(0.25, 0.4) * (rows.max() - rows.min())
      fill = half & (np.arange(size)[:, None] >= level)
      img = np.where(fill, np.maximum(img, rng.uniform(0.6, 0.75)), img)
  if cardiomegaly:  # the heart shadow widens into both lower lungs
    heart = (((x - rng.uniform(0.05, 0.1)) / rng.uniform(0.42, 0.5)) ** 2 +
             ((y - rng.uniform(0.25, 0.32)) / rng.uniform(0.28, 0.33)) ** 2) < 1.0
    img = np.where(heart & lung, np.maximum(img, rng.uniform(0.55, 0.7)), img)
  if device:  # a tube from the neck into the chest, gently curved
    t = np.linspace(0.0, 1.0, 4 * size)
    x0, x1 = rng.uniform(-0.15, 0.15), rng.uniform(-0.35, 0.35)
    px = x0 + (x1 - x0) * t + rng.uniform(-0.1, 0.1) * np.sin(np.pi * t)
    py = -0.95 + rng.uniform(1.0, 1.5) * t
    cols = np.clip(((px + 1) / 2 * size).astype(int), 0, size - 1)
    rows = np.clip(((py + 1) / 2 * size).astype(int), 0, size - 1)
    line = np.zeros((size, size), bool)
    width = max(1, size // 64)
    for dr in range(width):
      line[np.clip(rows + dr, 0, size - 1), cols] = True
    img = np.where(line, rng.uniform(0.85, 1.0), img)
  targets = np.array([label != NEGATIVE, effusion, cardiomegaly, device], np.float32)
  return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None], targets


# ----------------------------------------------------------------------------- labels


def split_labels(n: int, class_probs, rng: np.random.Generator) -> np.ndarray:
  """[n] int64 class labels in proportion to `class_probs`, shuffled.

  Counts are fixed by largest-remainder rounding (n * p, then the leftover to the
  largest fractions) rather than sampled, so a 100-image labeled split with uniform
  probabilities holds exactly 25 of each class.
  """
  p = np.asarray(class_probs, np.float64)
  exact = n * p / p.sum()
  counts = np.floor(exact).astype(int)
  counts[np.argsort(-(exact - counts), kind='stable')[:n - counts.sum()]] += 1
  return rng.permutation(np.repeat(np.arange(len(p)), counts)).astype(np.int64)


def example_marker(rng: np.random.Generator, split: str, label: int,
                   strength: float) -> int:
  """The marker of one example: equal to its label with probability `strength` in the
  confounded splits (train, val); otherwise uniform over {-1 (none), 0, 1, 2, 3}."""
  if split in _CONFOUNDED_SPLITS and rng.uniform() < strength:
    return int(label)
  return int(rng.integers(NO_MARKER, NUM_MARKERS))


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of example `index` of `split`: independent of generation order, and
  disjoint between splits (the split's position in `SPLITS` is part of the seed)."""
  return np.random.default_rng([seed, SPLITS.index(split), index])


def followup_rng(seed: int, split: str, patient: int, visit: int) -> np.random.Generator:
  """The generator of a patient's follow-up image `visit` (>= 1): a stream apart from
  every `example_rng`, so follow-ups leave the first images unchanged."""
  return np.random.default_rng([seed, SPLITS.index(split), patient, visit, 1])


# ----------------------------------------------------------------------------- builder


@dataclasses.dataclass(eq=False)
class PhantomConfig(tfds.core.BuilderConfig):
  """Options of the phantom dataset (see `make_config`).

  Attributes:
    size: storage side in pixels (images are [size, size, 1]).
    num_unlabeled: images in the `unlabeled` split (pretraining pool).
    num_train: images in the small labeled `train` split.
    num_val: images in `val` (same distribution as train, confounder included).
    num_test: images in `test` (marker independent of the label).
    seed: base seed; every example's generator derives from (seed, split, index).
    confounder_strength: probability in [0, 1] that a train/val example's marker
      equals its label; otherwise the marker is uniform over none/0/1/2/3.
    class_probs: class proportions, in `CLASS_NAMES` order (normalised).
    findings: add the multi-label `targets` (FINDINGS) and draw them (`add_findings`).
    images_per_patient: images of each patient in every split (consecutive examples):
      the first as with 1, the others follow-ups (same anatomy, findings, class and
      marker; another position, size and exposure: `render`'s `followup`) sharing its
      `patient_id`. 1 (default) gives exactly the dataset of before this option.
  """
  size: int = 64
  num_unlabeled: int = 2000
  num_train: int = 100
  num_val: int = 200
  num_test: int = 400
  seed: int = 0
  confounder_strength: float = 0.0
  class_probs: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
  findings: bool = False
  images_per_patient: int = 1

  def __post_init__(self):
    # Fail at construction, naming the option, rather than deep inside generation.
    if not isinstance(self.size, (int, np.integer)) or self.size < 16:
      raise ValueError(f'phantom: size must be an int >= 16, got {self.size!r}')
    for split in SPLITS:
      n = getattr(self, f'num_{split}')
      if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f'phantom: num_{split} must be an int >= 1, got {n!r}')
    if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
      raise ValueError(f'phantom: seed must be an int >= 0, got {self.seed!r}')
    if not 0.0 <= self.confounder_strength <= 1.0:
      raise ValueError('phantom: confounder_strength must be in [0, 1], got '
                       f'{self.confounder_strength!r}')
    if (not isinstance(self.images_per_patient, (int, np.integer))
        or self.images_per_patient < 1):
      raise ValueError('phantom: images_per_patient must be an int >= 1, got '
                       f'{self.images_per_patient!r}')
    p = np.asarray(self.class_probs, np.float64)
    if p.shape != (len(CLASS_NAMES),) or (p < 0).any() or p.sum() <= 0:
      raise ValueError(f'phantom: class_probs must be {len(CLASS_NAMES)} non-negative '
                       f'numbers ({CLASS_NAMES}) with a positive sum, got '
                       f'{self.class_probs!r}')
    if not isinstance(self.findings, (bool, np.bool_)):
      raise ValueError(f'phantom: findings must be True or False, got {self.findings!r}')
    self.class_probs = tuple(float(v) for v in p / p.sum())


OPTIONS = tuple(f.name for f in dataclasses.fields(PhantomConfig)
                if f.name not in {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)})


def _fmt(v: float) -> str:
  return f'{v:g}'


def make_config(**overrides) -> PhantomConfig:
  """A `PhantomConfig` with `overrides` applied, named after its values.

  The name (e.g. 's64_u2000_t100_v200_te400_seed0_conf0.8') is a function of the
  values, so two different option sets never share a TFDS folder, and the same options
  always find the data already built.

  Raises:
    ValueError: for an unknown option (the message lists the known ones) or a bad value.
  """
  unknown = sorted(set(overrides) - set(OPTIONS))
  if unknown:
    raise ValueError(f'phantom: unknown option(s) {unknown}; known options: {list(OPTIONS)}')
  values = {f.name: f.default for f in dataclasses.fields(PhantomConfig)
            if f.name in OPTIONS}
  values.update(overrides)
  cfg = PhantomConfig(name='tmp', **values)  # validates and normalises class_probs
  name = (f's{cfg.size}_u{cfg.num_unlabeled}_t{cfg.num_train}_v{cfg.num_val}'
          f'_te{cfg.num_test}_seed{cfg.seed}_conf{_fmt(cfg.confounder_strength)}')
  if not np.allclose(cfg.class_probs, 1.0 / len(CLASS_NAMES)):
    name += '_p' + '-'.join(_fmt(round(p, 4)) for p in cfg.class_probs)
  if cfg.findings:
    name += '_findings'
  if cfg.images_per_patient != 1:
    name += f'_ipp{cfg.images_per_patient}'
  cfg.name = name
  cfg.description = f'Phantom chest radiographs, options {values}.'
  return cfg


# `python -m` runs this file as __main__ after the package import has already
# registered 'phantom'; a second registration would raise, so that copy opts out.
class Phantom(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == '__main__'):
  """Synthetic chest radiographs with exact lung and lesion masks (see module doc)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '1.1.0': '`image` stored uncompressed (fast reads); masks stay zlib.'}
  BUILDER_CONFIGS = [dataclasses.replace(make_config(), name='default',
                                         description='Default options (see PhantomConfig).')]
  DEFAULT_CONFIG_NAME = 'default'
  CLASS_NAMES = CLASS_NAMES
  SSL_SPLIT = 'unlabeled'
  EXTRA_MASKS = 'lesion,marker'

  @property
  def FINDING_NAMES(self) -> tuple[str, ...]:  # pylint: disable=invalid-name
    return FINDINGS if self.builder_config.findings else ()

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.size
    findings = ({'targets': tfds.features.Tensor(shape=(len(FINDINGS),), dtype=np.float32)}
                if self.builder_config.findings else {})
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=core_features(
            s,
            lesion=tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8, encoding='zlib'),
            confounder=tfds.features.Scalar(dtype=np.int64),
            true_label=tfds.features.Scalar(dtype=np.int64),
            severity=tfds.features.Scalar(dtype=np.float32),
            **findings,
        ),
        # Records stay in index order, so `source[i]` is example i ('phantom-<split>-<i>').
        disable_shuffling=True,
        homepage='https://github.com/cxr_jax',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    cfg = self.builder_config
    n, k = getattr(cfg, f'num_{split}'), cfg.images_per_patient
    labels = split_labels(-(-n // k), cfg.class_probs,  # one label per patient
                          np.random.default_rng([cfg.seed, SPLITS.index(split)]))
    for i in range(n):
      patient, visit = divmod(i, k)
      rng = example_rng(cfg.seed, split, patient)
      true_label = int(labels[patient])
      marker = example_marker(rng, split, true_label, cfg.confounder_strength)
      out = render(rng, true_label, cfg.size, marker, followup=followup_rng(
          cfg.seed, split, patient, visit) if visit else None)
      key = f'phantom-{split}-{i}'
      patient_id = key if k == 1 else f'phantom-{split}-patient{patient}'
      extra = {}
      if cfg.findings:  # own stream, drawn per patient (follow-ups share the findings);
        # the class, marker and anatomy above are unchanged
        out['image'], extra['targets'] = add_findings(
            np.random.default_rng([cfg.seed, SPLITS.index(split), patient, _FINDINGS_STREAM]),
            out['image'], out['mask'], true_label)
      yield i, dict(
          image=out['image'], mask=out['mask'], lesion=out['lesion'], has_mask=True,
          label=UNLABELED if split == 'unlabeled' else true_label,
          true_label=true_label, confounder=marker, severity=np.float32(out['severity']),
          patient_id=patient_id, id=key, **extra)


# ----------------------------------------------------------------------------- figures


def contact_sheet(path: str, size: int = 128, per_class: int = 4, seed: int = 0) -> None:
  """Saves a PNG grid of phantoms: one row per class, `per_class` columns.

  Lung mask outlines are drawn in cyan, lesion outlines in red, markers in yellow. The
  markers cycle through none and 0..3 along rows and columns, so every corner shows.
  """
  import matplotlib  # heavy: only for the contact sheet
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # heavy: only for the contact sheet

  fig, axes = plt.subplots(len(CLASS_NAMES), per_class, squeeze=False,
                           figsize=(1.9 * per_class + 0.4, 1.9 * len(CLASS_NAMES)))
  for k, name in enumerate(CLASS_NAMES):
    for j in range(per_class):
      marker = ((j + k) % (NUM_MARKERS + 1)) - 1
      out = render(np.random.default_rng([seed, 99, k, j]), k, size, marker)
      ax = axes[k, j]
      ax.imshow(out['image'][..., 0], cmap='gray', vmin=0, vmax=255)
      for key, colour in (('mask', 'cyan'), ('lesion', 'red'), ('marker', 'yellow')):
        if out[key].any():
          ax.contour(out[key][..., 0], levels=[0.5], colors=colour, linewidths=0.6)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f'sev {out["severity"]:.2f}, marker {marker}', fontsize=7)
      if j == 0:
        ax.set_ylabel(name, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)


def benchmark(size: int = 64, n: int = 500, seed: int = 0) -> float:
  """Images rendered per CPU-second at `size` px, cycling through classes and markers.

  Counts this process's CPU time, not wall time, so that the figure means "per core"
  even on a shared machine (the renderer is single-threaded numpy: no BLAS calls).
  """
  start = time.process_time()
  for i in range(n):
    rng = np.random.default_rng([seed, i])
    render(rng, i % len(CLASS_NAMES), size, (i % (NUM_MARKERS + 1)) - 1)
  return n / (time.process_time() - start)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--contact_sheet', help='write a contact sheet PNG to this path')
  parser.add_argument('--size', type=int, default=128, help='contact sheet image size')
  parser.add_argument('--benchmark', action='store_true', help='print images/s')
  args = parser.parse_args(argv)
  if args.contact_sheet:
    contact_sheet(args.contact_sheet, size=args.size)
    print(f'wrote {args.contact_sheet}')
  if args.benchmark:
    for s in (64, 128, 256):
      print(f'{s:4d} px: {benchmark(s, n=2000 * 64 // s):7.0f} images per CPU-second')


if __name__ == '__main__':
  main()
