"""The phantom's renderer: synthetic chest-radiograph-like images in numpy (no TFDS).

Each image is a frontal (PA) radiograph-like picture with exact lung masks, a study-level
class carried only by opacities inside the lungs, and an optional burned-in marker outside
the lungs (the confounder of `cxr_jax.data.builders.phantom`, the TFDS builder that draws
splits, seeds and markers and calls `render` and `add_findings`). What the classes and
findings look like: that builder's docstring and docs/phantom.md.

  out = render(np.random.default_rng(0), TYPICAL, size=64)   # image, mask, lesion, ...
  image, targets = add_findings(rng, out['image'], out['mask'], label)

`benchmark()` measures images per CPU-second (`python -m cxr_jax.cli.phantom --benchmark`).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

CLASS_NAMES = ('negative', 'typical', 'indeterminate', 'atypical')
NEGATIVE, TYPICAL, INDETERMINATE, ATYPICAL = range(4)

FINDINGS = ('opacity', 'effusion', 'cardiomegaly', 'device')
FINDING_PREVALENCE = 0.3  # of effusion, cardiomegaly and device, each on its own

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
