"""Host-side (numpy/OpenCV) views with the same contract as `cxr_jax.data.augment`.

On a CPU backend the views can be cheaper to cut in Grain worker processes than batched
inside the jit step (docs/benchmarks.md measures both); on GPU/TPU the device path frees
the host. Both follow the contract in augment.py's module docstring,
with the same `AugmentParams` and `strength`:

  1. random resized crop, resampled with jax.image.scale_and_translate's linear
     (triangle) kernel, antialiased when shrinking: the same separable weight matrices,
     built here in numpy, so strength 0 equals `augment.resize` to float rounding;
  2-5. flip, brightness, contrast (about the image mean, then clip), gamma;
  6. Gaussian blur, same truncated kernel, border reflect-101 (cv2.sepFilter2D when
     OpenCV is installed, numpy otherwise);
  7-8. additive Gaussian noise, clip.

Draws come from numpy's Generator, so views match the device path in distribution,
not bit for bit. Two ways to run it in Grain:

  * `make_random_map(...)` (`TwoViews` as a grain.transforms.RandomMap) in a
    DataLoader's operations, before Batch: a constant strength per loader (a stage with
    a constant strength);
  * `TwoViews.map_with_index` for `grain.MapDataset.map_with_index`: the strength of the
    step the record belongs to (index // per-host batch), and a key derived from
    (seed, index), so a resumed run repeats its views exactly.

Records come in as {'image': [H, W, C] uint8/uint16, ...}; out go 'view1', 'view2'
([out, out, C], uint8 by default: 4x less host-to-device traffic than float32, and the
step divides by 255 as it does for stored images) and any fields in `keep`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cxr_jax.data.augment import AugmentParams

try:  # OpenCV is optional: the separable blur is also written in numpy
  import cv2  # optional: opencv
  cv2.setNumThreads(1)  # Grain workers are the parallelism; nested threads only contend
except ImportError:  # pragma: no cover
  cv2 = None

_EPS32 = float(np.finfo(np.float32).eps)


def _to_float(image: np.ndarray) -> np.ndarray:
  if np.issubdtype(image.dtype, np.integer):
    return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
  return image.astype(np.float32)


def weight_matrix(in_size: int, out_size: int, start: float, length: float
                  ) -> tuple[np.ndarray, int]:
  """Triangle-kernel resampling of the input span [start, start + length] to out_size.

  The numpy twin of jax.image's compute_weight_mat (linear kernel, antialias, no edge
  padding) for scale = out_size / length and translation = -start * scale: weights of
  input pixels outside the image are dropped and the rest renormalised.

  Returns:
    (w, lo): w [out_size, n] holds the weights of input pixels lo .. lo + n - 1, the
    only ones with a nonzero weight (the band the crop and the kernel cover), so the
    matrices and products are as small as the crop, not the stored image.
  """
  scale = out_size / length
  inv_scale = 1.0 / scale
  kernel_scale = max(inv_scale, 1.0)
  sample_f = (np.arange(out_size, dtype=np.float32) + 0.5) * np.float32(inv_scale) + \
      np.float32(start - 0.5)
  lo = max(0, int(np.floor(sample_f[0] - kernel_scale)))
  hi = min(in_size, int(np.ceil(sample_f[-1] + kernel_scale)) + 1)
  x = np.abs(sample_f[:, None] - np.arange(lo, hi, dtype=np.float32)[None, :])
  w = np.maximum(np.float32(0.0), 1.0 - x / np.float32(kernel_scale))
  total = w.sum(axis=1, keepdims=True)
  w = np.where(np.abs(total) > 1000.0 * _EPS32, w / np.where(total != 0, total, 1), 0.0)
  inside = (sample_f >= -0.5) & (sample_f <= in_size - 0.5)
  return np.where(inside[:, None], w, 0.0).astype(np.float32), lo


def crop_resize(image: np.ndarray, y0: float, x0: float, h: float, w: float,
                out_size: int) -> np.ndarray:
  """The box [y0, y0+h] x [x0, x0+w] of a float [H, W, C] image -> [out, out, C]."""
  wy, r0 = weight_matrix(image.shape[0], out_size, y0, h)
  wx, c0 = weight_matrix(image.shape[1], out_size, x0, w)
  patch = image[r0:r0 + wy.shape[1], c0:c0 + wx.shape[1]]
  # per channel, two plain 2-D matmuls (BLAS); einsum's batched path is ~50x slower
  return np.stack([wy @ patch[..., c] @ wx.T for c in range(image.shape[-1])], axis=-1)


def resize(image: np.ndarray, out_size: int) -> np.ndarray:
  """The eval-time view of one image, as `augment.resize`: float32 [out, out, C]."""
  image = _to_float(image)
  return np.clip(crop_resize(image, 0.0, 0.0, image.shape[0], image.shape[1], out_size),
                 0.0, 1.0)


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
  taps = np.arange(-radius, radius + 1, dtype=np.float32)
  k = np.exp(-0.5 * (taps / np.float32(sigma))**2)
  return (k / k.sum()).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float, radius: int) -> np.ndarray:
  """Separable Gaussian blur of float32 [H, W, C], border reflect-101."""
  k = gaussian_kernel(sigma, radius)
  if cv2 is not None:
    chans = [cv2.sepFilter2D(np.ascontiguousarray(image[..., c]), cv2.CV_32F, k, k,
                             borderType=cv2.BORDER_REFLECT_101)
             for c in range(image.shape[-1])]
    return np.stack(chans, axis=-1)
  h, w, _ = image.shape
  p = np.pad(image, ((radius, radius), (0, 0), (0, 0)), mode='reflect')
  image = sum(k[t] * p[t:t + h] for t in range(2 * radius + 1))
  p = np.pad(image, ((0, 0), (radius, radius), (0, 0)), mode='reflect')
  return sum(k[t] * p[:, t:t + w] for t in range(2 * radius + 1))


def augment_one(rng: np.random.Generator, image: np.ndarray, strength: float,
                out_size: int, params: AugmentParams = AugmentParams()) -> np.ndarray:
  """One view of one image [H, W, C] (uint or float in [0, 1]) -> float32 [out, out, C].

  The steps, draws and amplitudes of `augment._augment_one` (see the module docstring
  of augment.py); at strength 0 the result is `resize(image, out_size)`.
  """
  p, s = params, float(np.clip(strength, 0.0, 1.0))
  image = _to_float(image)
  if s == 0.0:
    return resize(image, out_size)
  u = rng.random(11)  # uniform draws, one per random decision (as the device path)
  sym = 2.0 * u - 1.0
  height, width = image.shape[0], image.shape[1]

  area = 1.0 - (1.0 - p.min_scale) * s * u[0]
  ratio = np.exp(p.max_log_ratio * s * sym[1])
  fw = float(np.clip(np.sqrt(area * ratio), area, 1.0))
  fh = area / fw
  h, w = fh * height, fw * width
  y0, x0 = u[2] * (height - h), u[3] * (width - w)
  x = np.clip(crop_resize(image, y0, x0, h, w, out_size), 0.0, 1.0)

  if u[4] < p.flip_prob * s:
    x = x[:, ::-1]
  x = x * np.float32(1.0 + p.brightness * s * sym[5])
  x = x + np.float32(p.contrast * s * sym[6]) * (x - x.mean())
  x = np.clip(x, 0.0, 1.0)
  gamma = np.exp(p.gamma * s * sym[7])
  if gamma != 1.0:
    x = np.power(x, np.float32(gamma))

  radius = p.blur_radius(out_size)
  if radius > 0 and p.blur_prob > 0 and u[9] < p.blur_prob * s:
    sigma = max(p.blur_sigma * s * (0.1 + 0.9 * u[8]), 1e-3)
    x = gaussian_blur(np.ascontiguousarray(x, np.float32), sigma, radius)

  std = p.noise_std * s * u[10]
  if std > 0:
    x = x + np.float32(std) * rng.standard_normal(x.shape, dtype=np.float32)
  return np.clip(x, 0.0, 1.0).astype(np.float32)


def _quantize(x: np.ndarray, dtype) -> np.ndarray:
  if np.dtype(dtype) == np.float32:
    return x.astype(np.float32)
  top = np.iinfo(dtype).max
  return np.rint(x * top).astype(dtype)  # round to nearest: unbiased against resize


class TwoViews:
  """Two host-side views per record: {'image', ...} -> {'view1', 'view2', *keep}; a
  record with 'image2' (another image of the same patient) takes view 2 from it.

  Use as a grain.transforms.RandomMap through `make_random_map` (`random_map(element,
  rng)`, constant strength) or with `grain.MapDataset.map_with_index(views.map_with_index)`
  (scheduled strength).

  Args:
    out_size: view side, or a numpy array of it per step (progressive resizing; every
      record of one step, hence of one batch, gets the same size).
    strength: a float, a numpy array of it per step, or a function of the step (a
      schedule is used by map_with_index only; a RandomMap has no step and uses step 0).
      Past the end of an array its last value holds.
    params: amplitudes at strength 1 (the device path's AugmentParams).
    batch_size: per-host batch, to turn a record index into its step.
    seed: root of map_with_index's per-record keys.
    dtype: 'uint8' (default) or 'float32' views.
    keep: fields passed through besides the views (e.g. 'label').
  """

  def __init__(self, out_size: int, strength: float | Callable[[int], float] = 1.0,
               params: AugmentParams = AugmentParams(), batch_size: int = 1,
               seed: int = 0, dtype: str = 'uint8', keep: Sequence[str] = ()):
    self.out_size, self.strength, self.params = out_size, strength, params
    self.batch_size, self.seed, self.dtype, self.keep = batch_size, seed, dtype, tuple(keep)

  @staticmethod
  def _at(value, step: int):
    if callable(value):
      return value(step)
    if isinstance(value, np.ndarray):
      return value[min(step, len(value) - 1)]
    return value

  def _views(self, element, rng, step: int):
    image = np.asarray(element['image'])
    strength, size = float(self._at(self.strength, step)), int(self._at(self.out_size, step))
    out = {k: element[k] for k in self.keep}
    out['view1'] = _quantize(augment_one(rng, image, strength, size, self.params), self.dtype)
    # 'image2' (patient-aware positives): another image of the same patient gives view 2
    second = np.asarray(element['image2']) if 'image2' in element else image
    out['view2'] = _quantize(augment_one(rng, second, strength, size, self.params), self.dtype)
    return out

  def random_map(self, element, rng: np.random.Generator):
    if rng is None:  # Grain gives no generator when its sampler has no seed
      raise ValueError('host_augment.TwoViews as a RandomMap needs a seeded sampler '
                       '(grain.samplers.IndexSampler(..., seed=...))')
    return self._views(element, rng, 0)

  def map_with_index(self, index: int, element):
    rng = np.random.default_rng([self.seed, int(index)])
    return self._views(element, rng, int(index) // self.batch_size)


def make_random_map(*args, **kwargs):
  """`TwoViews` as a grain.transforms.RandomMap (for DataLoader operations)."""
  import grain  # grain only where the map is made

  class _TwoViewsMap(grain.transforms.RandomMap):
    def __init__(self):
      self._views = TwoViews(*args, **kwargs)

    def random_map(self, element, rng):
      return self._views.random_map(element, rng)

  return _TwoViewsMap()
