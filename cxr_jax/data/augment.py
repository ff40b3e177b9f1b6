"""Batched, jit-able view augmentations for SSL, keyed per example.

One `strength` knob in [0, 1] scales every operation, so a curriculum can
schedule augmentation from none (strength 0: exactly the eval-time `resize`)
to full. `strength` may be a traced scalar: changing it between steps does not
recompile (pass it as the same kind of value every step, e.g. always a
float32 array). The output size is static.

Semantics (the contract a host-side numpy/OpenCV path must reproduce; all
amplitudes are from `AugmentParams`, `s` is the strength, U(a, b) uniform, and
every draw is independent per example and per view), in the order applied:

  1. Random resized crop. Area fraction a = 1 - (1 - min_scale) * s * U(0, 1),
     log aspect ratio r = s * max_log_ratio * U(-1, 1) (so the ratio is
     log-uniform in [3/4, 4/3]^s). The crop covers a fraction
     fw = clip(sqrt(a * e^r), a, 1) of the width and fh = a / fw of the
     height (so its area fraction is exactly a; the aspect ratio fw / fh is
     e^r unless the box would leave the image, and is relative to the
     image's own aspect; stored radiographs are square), at a uniform random
     position inside the image (y0 = U(0, 1) * (H - h), likewise x0).
     It is resampled to out_size x out_size with a linear (triangle) kernel,
     antialiased when shrinking (`jax.image.scale_and_translate`); pixel
     centres sit at half-integers, and weights falling outside the image are
     dropped and the rest renormalised.
  2. Horizontal flip with probability flip_prob * s.
  3. Brightness: x *= 1 + brightness * s * U(-1, 1).
  4. Contrast: x = m + (1 + contrast * s * U(-1, 1)) * (x - m), m the mean of
     the image (all pixels and channels). Then clip to [0, 1].
  5. Gamma: x = x ** exp(gamma * s * U(-1, 1)).
  6. Gaussian blur with probability blur_prob * s: sigma =
     blur_sigma * s * U(0.1, 1) output pixels, separable, kernel truncated at
     radius ceil(3 * blur_sigma) (at most out_size - 1), border
     reflect-101 (OpenCV's default, numpy's 'reflect').
  7. Additive Gaussian noise with std noise_std * s * U(0, 1).
  8. Clip to [0, 1].

At s = 0 every step above is skipped or exactly the identity, so the result
is bit-identical to `resize(images, out_size)`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

_DEFAULT_MAX_LOG_RATIO = math.log(4 / 3)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Amplitudes of each augmentation at strength 1 (see the module docstring).

  Frozen, hence hashable: pass it as a static argument under `jax.jit`.

  Attributes:
    min_scale: smallest crop area fraction (0.2 suits radiographs, where
      findings can be small; SimCLR's 0.08 would crop them out).
    max_log_ratio: largest |log aspect ratio| of the crop (log(4/3)).
    flip_prob: probability of a horizontal flip.
    brightness: largest relative brightness change.
    contrast: largest relative contrast change.
    gamma: largest |log gamma|.
    blur_prob: probability of a Gaussian blur.
    blur_sigma: largest blur sigma in output pixels.
    noise_std: largest std of the additive Gaussian noise.
  """
  min_scale: float = 0.2
  max_log_ratio: float = _DEFAULT_MAX_LOG_RATIO
  flip_prob: float = 0.5
  brightness: float = 0.4
  contrast: float = 0.4
  gamma: float = 0.4
  blur_prob: float = 0.5
  blur_sigma: float = 1.5
  noise_std: float = 0.05

  def blur_radius(self, out_size: int) -> int:
    """Static radius of the blur kernel (2 * radius + 1 taps)."""
    return max(0, min(math.ceil(3 * self.blur_sigma), out_size - 1))


def to_float(images: jax.Array) -> jax.Array:
  """Integer images (uint8/uint16 storage) to float32 in [0, 1]."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / jnp.iinfo(images.dtype).max
  return images.astype(jnp.float32)


def _crop_resize(image: jax.Array, y0: jax.Array, x0: jax.Array,
                 h: jax.Array, w: jax.Array, out_size: int) -> jax.Array:
  """Resamples the box [y0, y0 + h] x [x0, x0 + w] of one image.

  Args:
    image: [H, W, C] float32.
    y0, x0, h, w: float32 scalars, the box in input pixels (continuous
      coordinates: pixel i covers [i, i + 1]).
    out_size: static output side.

  Returns:
    [out_size, out_size, C].
  """
  scale = jnp.stack([out_size / h, out_size / w])
  # scale_and_translate maps input coordinate u to u * scale + translation;
  # the box's top-left corner must land on 0.
  translation = jnp.stack([-y0 * scale[0], -x0 * scale[1]])
  return jax.image.scale_and_translate(
      image, (out_size, out_size, image.shape[-1]), (0, 1), scale,
      translation, method='linear', antialias=True)


def _full_box(image: jax.Array):
  """The whole image as a crop box (y0, x0, h, w), float32 scalars."""
  zero = jnp.zeros((), jnp.float32)
  return (zero, zero, jnp.float32(image.shape[0]),
          jnp.float32(image.shape[1]))


def resize(images: jax.Array, out_size: int) -> jax.Array:
  """The eval-time view: each whole image resized, no randomness.

  Args:
    images: [B, H, W, C], float in [0, 1] (or uint8/uint16, scaled to [0, 1]).
    out_size: static output side.

  Returns:
    [B, out_size, out_size, C] float32 in [0, 1].
  """
  images = to_float(images)

  def one(image):
    return _crop_resize(image, *_full_box(image), out_size)

  return jnp.clip(jax.vmap(one)(images), 0.0, 1.0)


def _gaussian_blur(image: jax.Array, sigma: jax.Array,
                   radius: int) -> jax.Array:
  """Separable Gaussian blur of [H, W, C] with a traced sigma (> 0)."""
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * (taps / sigma)**2)
  kernel = kernel / jnp.sum(kernel)
  h, w, _ = image.shape
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode='reflect')
  image = sum(kernel[t] * padded[t:t + h] for t in range(2 * radius + 1))
  padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode='reflect')
  return sum(kernel[t] * padded[:, t:t + w] for t in range(2 * radius + 1))


def _augment_one(key: jax.Array, image: jax.Array, strength: jax.Array,
                 out_size: int, params: AugmentParams) -> jax.Array:
  """One view of one image [H, W, C] -> [out_size, out_size, C]."""
  p, s = params, strength
  keys = jax.random.split(key, 12)
  u = lambda i: jax.random.uniform(keys[i], (), jnp.float32)
  sym = lambda i: jax.random.uniform(keys[i], (), jnp.float32, -1.0, 1.0)
  height, width = image.shape[0], image.shape[1]

  # 1. Random resized crop. Each factor is exactly 1 (and each offset 0) at
  # s = 0, so the box is then the whole image, as in `resize`.
  area = 1.0 - (1.0 - p.min_scale) * s * u(0)
  ratio = jnp.exp(p.max_log_ratio * s * sym(1))
  # Keep the area exact and give up aspect where the box would leave the
  # image: fw in [area, 1] makes fh = area / fw lie in [area, 1] too.
  fw = jnp.clip(jnp.sqrt(area * ratio), area, 1.0)
  fh = area / fw
  h, w = fh * height, fw * width
  y0, x0 = u(2) * (height - h), u(3) * (width - w)
  x = _crop_resize(image, y0, x0, h, w, out_size)
  x = jnp.clip(x, 0.0, 1.0)

  # 2. Flip: u < 0 never holds, so s = 0 never flips.
  x = jnp.where(u(4) < p.flip_prob * s, x[:, ::-1], x)

  # 3-5. Photometric jitter, each written so that a zero amplitude is an
  # exact identity (x * 1, x + 0 * ..., a select) rather than a rounding.
  x = x * (1.0 + p.brightness * s * sym(5))
  x = x + p.contrast * s * sym(6) * (x - jnp.mean(x))
  x = jnp.clip(x, 0.0, 1.0)
  gamma = jnp.exp(p.gamma * s * sym(7))
  x = jnp.where(gamma == 1.0, x, jnp.power(x, gamma))

  # 6. Blur, computed for every example (vmap evaluates both branches of a
  # select anyway) and kept where drawn. The sigma floor only avoids 0/0;
  # such a tiny sigma is a delta kernel.
  radius = p.blur_radius(out_size)
  if radius > 0 and p.blur_prob > 0:
    sigma = jnp.maximum(p.blur_sigma * s * (0.1 + 0.9 * u(8)), 1e-3)
    x = jnp.where(u(9) < p.blur_prob * s, _gaussian_blur(x, sigma, radius), x)

  # 7. Noise.
  std = p.noise_std * s * u(10)
  x = x + std * jax.random.normal(keys[11], x.shape, jnp.float32)
  return jnp.clip(x, 0.0, 1.0)


def augment(key: jax.Array, images: jax.Array, strength: jax.Array | float,
            out_size: int,
            params: AugmentParams = AugmentParams()) -> jax.Array:
  """One random view of each image, keyed per example.

  Args:
    key: a PRNG key; example b uses `jax.random.split(key, B)[b]`.
    images: [B, H, W, C], float in [0, 1] (or uint8/uint16, scaled to [0, 1]).
    strength: scalar in [0, 1] (clipped), may be traced.
    out_size: static output side.
    params: amplitudes at strength 1 (static).

  Returns:
    [B, out_size, out_size, C] float32 in [0, 1]; at strength 0 exactly
    `resize(images, out_size)`.
  """
  images = to_float(images)
  strength = jnp.clip(jnp.asarray(strength, jnp.float32), 0.0, 1.0)
  keys = jax.random.split(key, images.shape[0])
  one = functools.partial(_augment_one, out_size=out_size, params=params)
  views = jax.vmap(one, in_axes=(0, 0, None))(keys, images, strength)
  # At s = 0 the crop box above is the whole image and every other step is
  # an exact identity, so `views` equals `resize` up to rounding; but XLA
  # constant-folds resize's fixed box and computes the traced one at run
  # time, which can differ in the last bit. Selecting the resize itself
  # makes the contract exact (its cost is one more matmul pair per image).
  return jnp.where(strength > 0, views, resize(images, out_size))


def two_views(key: jax.Array, images: jax.Array, strength: jax.Array | float,
              out_size: int, params: AugmentParams = AugmentParams(),
              second: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Two independent views of each image (for SimCLR/BYOL-style losses).

  Args and returns as in `augment`, with the two views drawn from independent
  keys: ([B, out, out, C], [B, out, out, C]). `second`: images of the same shape that
  view 2 is cut from instead (patient-aware positives: another image of the same
  patient); the keys are the same either way.
  """
  key1, key2 = jax.random.split(key)
  return (augment(key1, images, strength, out_size, params),
          augment(key2, images if second is None else second, strength, out_size, params))
