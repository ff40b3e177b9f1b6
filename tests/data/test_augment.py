"""Tests for cxr_jax.data.augment: exactness at strength 0, keys, retracing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from cxr_jax.data import augment as aug

B, SIZE, OUT = 8, 48, 32

# Compiled once per input shape and reused by every test.
augment_jit = jax.jit(aug.augment, static_argnames=('out_size', 'params'))
two_views_jit = jax.jit(aug.two_views, static_argnames=('out_size', 'params'))
resize_jit = jax.jit(aug.resize, static_argnames=('out_size',))


def _phantoms(batch=B, size=SIZE, same=False, seed=0):
  """Smooth, structured images in [0, 1]: a gradient plus Gaussian blobs."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  images = []
  for _ in range(batch):
    img = 0.3 * xx + 0.2 * yy
    for _ in range(4):
      cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(
          0.05, 0.2)
      img += 0.5 * np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * r * r))
    images.append(np.clip(img, 0, 1))
  if same:
    images = [images[0]] * batch
  return jnp.asarray(np.stack(images)[..., None], jnp.float32)


@pytest.fixture(scope='module')
def images():
  return _phantoms()


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def test_strength_zero_is_resize_exactly(images):
  resized = resize_jit(images, out_size=OUT)
  view = augment_jit(jax.random.key(0), images, _f32(0.0), out_size=OUT)
  np.testing.assert_array_equal(view, resized)
  # The real (unselected) path is continuous at 0: a tiny strength gives the
  # whole image with tiny jitter.
  view = augment_jit(jax.random.key(0), images, _f32(1e-6), out_size=OUT)
  np.testing.assert_allclose(view, resized, atol=1e-4)


def test_resize_matches_independent_linear_resample():
  # Upscaling (no antialiasing): output pixel i samples input coordinate
  # (i + 0.5) * H / out - 0.5 with linear interpolation, edge values clamped.
  img = _phantoms(batch=1, size=16)
  out = np.asarray(aug.resize(img, 40))[0, ..., 0]
  coords = (np.arange(40) + 0.5) * 16 / 40 - 0.5
  yy, xx = np.meshgrid(coords, coords, indexing='ij')
  expected = scipy.ndimage.map_coordinates(
      np.asarray(img[0, ..., 0], np.float64), [yy, xx], order=1,
      mode='nearest')
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_crop_box_matches_independent_linear_resample():
  # The crop geometry the host-side path must reproduce: the box
  # [y0, y0 + h] x [x0, x0 + w] in continuous pixel coordinates maps onto
  # the output grid. An interior box, upscaled, so no edge or antialiasing.
  img = np.asarray(_phantoms(batch=1)[0], np.float64)
  y0, x0, h, w = 10.25, 7.5, 20.0, 16.0
  out = aug._crop_resize(_f32(img), _f32(y0), _f32(x0), _f32(h), _f32(w), 32)
  ys = y0 + (np.arange(32) + 0.5) * h / 32 - 0.5
  xs = x0 + (np.arange(32) + 0.5) * w / 32 - 0.5
  yy, xx = np.meshgrid(ys, xs, indexing='ij')
  expected = scipy.ndimage.map_coordinates(img[..., 0], [yy, xx], order=1)
  np.testing.assert_allclose(np.asarray(out)[..., 0], expected, atol=1e-5)


@pytest.mark.parametrize('strength', [0.3, 1.0])
def test_crop_boxes_follow_the_documented_distribution(strength):
  # Crop only. Channels hold the continuous x and y coordinates of each
  # pixel centre divided by the image size; linear resampling (antialiased
  # or not) reproduces a linear function away from the image edges, so each
  # view's central slope and offset give back its box.
  crop_only = aug.AugmentParams(flip_prob=0.0, brightness=0.0, contrast=0.0,
                                gamma=0.0, blur_prob=0.0, noise_std=0.0)
  n = 64
  centres = (np.arange(SIZE) + 0.5) / SIZE
  yy, xx = np.meshgrid(centres, centres, indexing='ij')
  ramps = jnp.asarray(np.broadcast_to(np.stack([xx, yy], -1),
                                      (n, SIZE, SIZE, 2)), jnp.float32)
  views = np.asarray(augment_jit(jax.random.key(7), ramps, _f32(strength),
                                 out_size=OUT, params=crop_only), np.float64)
  mid = slice(OUT // 4, 3 * OUT // 4)
  # Output pixel j samples x0 + (j + 0.5) * w / OUT (in units of the image).
  fw = (views[:, OUT // 2, mid.stop, 0] - views[:, OUT // 2, mid.start, 0]
       ) / (mid.stop - mid.start) * OUT
  fh = (views[:, mid.stop, OUT // 2, 1] - views[:, mid.start, OUT // 2, 1]
       ) / (mid.stop - mid.start) * OUT
  x0 = views[:, OUT // 2, OUT // 2, 0] - (OUT // 2 + 0.5) * fw / OUT
  y0 = views[:, OUT // 2, OUT // 2, 1] - (OUT // 2 + 0.5) * fh / OUT
  area, ratio = fw * fh, fw / fh
  tol = 1e-3
  lowest = 1 - (1 - crop_only.min_scale) * strength
  assert area.min() >= lowest - tol and area.max() <= 1 + tol
  # Uniform in [lowest, 1]: the sample covers most of the interval.
  assert area.min() < lowest + 0.2 * (1 - lowest)
  assert area.max() > 1 - 0.2 * (1 - lowest)
  assert np.all(np.abs(np.log(ratio)) <= strength * np.log(4 / 3) + tol)
  assert np.abs(np.log(ratio)).max() > 0.5 * strength * np.log(4 / 3)
  # Boxes lie inside the image.
  assert np.all(x0 >= -tol) and np.all(x0 + fw <= 1 + tol)
  assert np.all(y0 >= -tol) and np.all(y0 + fh <= 1 + tol)


def test_gaussian_blur_matches_scipy():
  img = np.asarray(_phantoms(batch=1, size=20)[0], np.float64)
  sigma, radius = 1.3, 5
  out = aug._gaussian_blur(_f32(img), _f32(sigma), radius)
  # scipy's 'mirror' is reflect-101 (OpenCV's default border).
  expected = scipy.ndimage.gaussian_filter(
      img[..., 0], sigma, mode='mirror', truncate=radius / sigma)
  np.testing.assert_allclose(np.asarray(out)[..., 0], expected, atol=1e-5)


def test_shape_range_and_determinism(images):
  key = jax.random.key(1)
  view = augment_jit(key, images, _f32(1.0), out_size=OUT)
  assert view.shape == (B, OUT, OUT, 1) and view.dtype == jnp.float32
  assert float(view.min()) >= 0.0 and float(view.max()) <= 1.0
  np.testing.assert_array_equal(
      view, augment_jit(key, images, _f32(1.0), out_size=OUT))
  other = augment_jit(jax.random.key(2), images, _f32(1.0), out_size=OUT)
  assert not np.allclose(view, other)


def test_uint8_input_is_scaled(images):
  as_uint8 = jnp.asarray(np.round(np.asarray(images) * 255), jnp.uint8)
  np.testing.assert_allclose(
      aug.resize(as_uint8, OUT),
      aug.resize(jnp.asarray(as_uint8, jnp.float32) / 255, OUT), atol=1e-6)


def test_examples_in_a_batch_get_different_views():
  same = _phantoms(same=True)
  view = np.asarray(augment_jit(jax.random.key(3), same, _f32(1.0),
                                out_size=OUT))
  for i in range(B):
    for j in range(i):
      assert np.abs(view[i] - view[j]).mean() > 1e-3, (i, j)


def test_two_views_are_independent_augments(images):
  key = jax.random.key(4)
  v1, v2 = two_views_jit(key, images, _f32(1.0), out_size=OUT)
  assert not np.allclose(v1, v2)
  k1, k2 = jax.random.split(key)
  np.testing.assert_array_equal(
      v1, augment_jit(k1, images, _f32(1.0), out_size=OUT))
  np.testing.assert_array_equal(
      v2, augment_jit(k2, images, _f32(1.0), out_size=OUT))


def test_second_images_give_view_two_with_the_same_keys(images):
  key = jax.random.key(4)
  other = images[::-1]
  v1, v2 = two_views_jit(key, images, _f32(1.0), out_size=OUT, second=other)
  w1, w2 = two_views_jit(key, images, _f32(1.0), out_size=OUT)
  np.testing.assert_array_equal(v1, w1)  # view 1 is untouched
  np.testing.assert_array_equal(v2, augment_jit(jax.random.split(key)[1], other, _f32(1.0),
                                                out_size=OUT))
  same = two_views_jit(key, images, _f32(1.0), out_size=OUT, second=images)
  np.testing.assert_array_equal(same[1], w2)  # a patient's only image: today's views


def test_view_spread_grows_with_strength(images):
  def spread(strength):
    diffs = [
        np.abs(np.subtract(*two_views_jit(jax.random.key(seed), images,
                                          _f32(strength), out_size=OUT)))
        .mean() for seed in range(3)
    ]
    return float(np.mean(diffs))

  s0, s3, s10 = spread(0.0), spread(0.3), spread(1.0)
  assert s0 == 0.0
  assert s10 > s3 > s0


def test_changing_strength_does_not_retrace(images):
  traces = []

  @jax.jit
  def step(key, images, strength):
    traces.append(1)  # Runs once per trace, not per call.
    return aug.two_views(key, images, strength, OUT)

  for strength in (0.0, 0.25, 1.0):
    step(jax.random.key(5), images, _f32(strength))
  assert len(traces) == 1


def test_flip_only_gives_resize_or_its_mirror(images):
  # Every other operation off: each view is the resized image or its mirror,
  # and at strength 1 both occur (probability 0.5 each).
  flip_only = aug.AugmentParams(min_scale=1.0, max_log_ratio=0.0,
                                brightness=0.0, contrast=0.0, gamma=0.0,
                                blur_prob=0.0, noise_std=0.0)
  resized = np.asarray(resize_jit(images, out_size=OUT))
  view = np.asarray(augment_jit(jax.random.key(6), images, _f32(1.0),
                                out_size=OUT, params=flip_only))
  # (Up to rounding: the crop box is traced here, constant in `resize`.)
  flipped = []
  for v, r in zip(view, resized):
    is_flipped = np.abs(v - r[:, ::-1]).max() < np.abs(v - r).max()
    np.testing.assert_allclose(v, r[:, ::-1] if is_flipped else r, atol=1e-6)
    flipped.append(is_flipped)
  assert any(flipped) and not all(flipped)
