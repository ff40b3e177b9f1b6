"""Tests of cxr_jax.explain.gradcam on tiny models whose answers are known."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.explain import gradcam as gc
from cxr_jax.explain import lung_attention

RNG = np.random.default_rng(0)
# a per-pixel "backbone" (1 -> 3 channels) at the image resolution, so no resizing happens
MIX = RNG.normal(size=(1, 3))
SHIFT = RNG.normal(size=(3,))
# a nonlinear head over a [4, 4, 3] map: a weighted sum of tanh units plus a pooled part
SPATIAL = RNG.normal(size=(4, 4))
V = RNG.normal(size=(3, 2))
U = RNG.normal(size=(3, 2))


def _features(x, xp):
  return xp.tanh(x @ MIX + SHIFT)  # [B, H, W, 1] -> [B, H, W, 3]


def _head(a, xp):
  local = xp.einsum('hw,bhwk->bk', SPATIAL, xp.tanh(a @ V))
  pooled = xp.mean(a, axis=(1, 2)) @ U
  return local + pooled * xp.sum(pooled, axis=-1, keepdims=True)  # couples the classes


def _numpy_gradcam_fd(images, class_idx, eps=1e-6):
  """Grad-CAM with the gradient by central finite differences, in float64 numpy."""
  a = _features(images.astype(np.float64), np)
  cams = []
  for b, c in enumerate(class_idx):
    grad = np.zeros(a.shape[1:])
    for idx in np.ndindex(*a.shape[1:]):
      hi, lo = a[b:b + 1].copy(), a[b:b + 1].copy()
      hi[(0,) + idx] += eps
      lo[(0,) + idx] -= eps
      grad[idx] = (_head(hi, np)[0, c] - _head(lo, np)[0, c]) / (2 * eps)
    alpha = grad.mean(axis=(0, 1))  # Selvaraju et al. eq. 1
    cams.append(np.maximum(a[b] @ alpha, 0))  # eq. 2
  return np.stack(cams)


def test_gradcam_matches_finite_differences():
  images = RNG.normal(size=(3, 4, 4, 1)).astype(np.float32)
  class_idx = np.array([0, 1, 1])
  got = gc.gradcam(lambda x: _features(x, jnp), lambda a: _head(a, jnp), images, class_idx)
  want = _numpy_gradcam_fd(images, class_idx)
  assert got.shape == (3, 4, 4)
  assert np.any(want > 0) and np.any(want == 0)  # the ReLU is exercised
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_predicted_class_by_default_and_normalize():
  images = RNG.normal(size=(2, 4, 4, 1)).astype(np.float32)
  fmap_fn, head_fn = lambda x: _features(x, jnp), lambda a: _head(a, jnp)
  pred = np.argmax(_head(_features(images.astype(np.float64), np), np), axis=1)
  np.testing.assert_allclose(gc.gradcam(fmap_fn, head_fn, images),
                             gc.gradcam(fmap_fn, head_fn, images, pred), atol=1e-6)
  norm = gc.gradcam(fmap_fn, head_fn, images, pred, normalize=True)
  raw = gc.gradcam(fmap_fn, head_fn, images, pred)
  for n, r in zip(np.asarray(norm), np.asarray(raw)):
    if r.max() > 0:
      np.testing.assert_allclose(n, r / r.max(), atol=1e-6)


def test_gap_linear_head_gives_cam_and_bilinear_upsampling():
  # with global average pooling and a linear head, Grad-CAM is the CAM of Zhou et al.
  # (2016): relu(sum_k W[k, c] A_k) / (h w); upsampled 2x2 -> 4x4 with half-pixel centres,
  # each row of the output is (a, 3a/4 + b/4, a/4 + 3b/4, b)
  fmap = RNG.random(size=(1, 2, 2, 3)).astype(np.float32)
  w = RNG.normal(size=(3, 2)).astype(np.float32)
  cams = gc.gradcam(lambda x: jnp.asarray(fmap), lambda a: jnp.mean(a, axis=(1, 2)) @ w,
                    np.zeros((1, 4, 4, 1), np.float32), np.array([1]))
  low = np.maximum(fmap[0] @ w[:, 1], 0) / 4  # [2, 2]
  interp = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])  # [4, 2] row weights
  np.testing.assert_allclose(cams[0], interp @ low @ interp.T, atol=1e-6)


def _blob_model():
  """A detector of bright squares: avg-pool 4x4, then channels that fire above a level."""
  def fmap_fn(x):  # [B, 16, 16, 1] -> [B, 4, 4, 2]
    b = x.shape[0]
    pooled = x.reshape(b, 4, 4, 4, 4, 1).mean(axis=(2, 4))
    return jax.nn.relu(pooled * jnp.array([1.0, 0.5]) - jnp.array([0.5, 0.2]))

  w = jnp.array([[2.0, -1.0], [1.0, -0.5]])  # both channels are evidence for class 0

  def head_fn(a):
    return jnp.mean(a, axis=(1, 2)) @ w

  return fmap_fn, head_fn


def _blob_images():
  images = np.zeros((2, 16, 16, 1), np.float32)
  images[0, 0:8, 0:8] = 1.0  # top-left
  images[1, 8:16, 4:12] = 1.0  # bottom-centre
  regions = np.zeros((2, 16, 16), bool)
  regions[0, 0:8, 0:8] = True
  regions[1, 8:16, 4:12] = True
  # bilinear upsampling x4 spreads a map by up to 2 pixels past the cells' borders
  near = np.zeros((2, 16, 16), bool)
  near[0, 0:10, 0:10] = True
  near[1, 6:16, 2:14] = True
  return images, regions, near


def test_gradcam_mass_is_on_the_evidence():
  fmap_fn, head_fn = _blob_model()
  images, regions, near = _blob_images()
  cams = np.asarray(gc.gradcam(fmap_fn, head_fn, images, np.array([0, 0])))
  assert cams.min() >= 0
  np.testing.assert_allclose(lung_attention.inside_fraction(cams, near), 1.0, atol=1e-6)
  # the interpolation ramps over 2 pixels on each side of a blob border: in 1D an 8-pixel
  # blob keeps 7.5 of its 8 units of mass inside, so (15/16)^2 = 0.88 in 2D (less where
  # two borders are inside the image)
  assert np.all(lung_attention.inside_fraction(cams, regions) > 0.8)


def test_occlusion_highlights_the_same_region():
  fmap_fn, head_fn = _blob_model()
  images, regions, _ = _blob_images()
  predict_fn = lambda x: jax.nn.softmax(head_fn(fmap_fn(x)))
  heat = np.asarray(gc.occlusion(predict_fn, images, np.array([0, 0]), patch=4, stride=2))
  assert heat.shape == (2, 16, 16)
  # 4-pixel squares straddling a border smear the map by up to 3 pixels
  assert np.all(lung_attention.inside_fraction(heat, regions) > 0.75)
  assert np.all(lung_attention.attention_share(heat, regions) > 3.0)  # at most 1/0.25 = 4
  cams = np.asarray(gc.gradcam(fmap_fn, head_fn, images, np.array([0, 0])))
  # both maps rank the pixels alike
  for h, c in zip(heat, cams):
    assert np.corrcoef(h.ravel(), c.ravel())[0, 1] > 0.8


def test_occlusion_matches_a_loop_over_patches():
  rng = np.random.default_rng(1)
  images = rng.random(size=(2, 10, 10, 1)).astype(np.float32)
  weight = rng.random(size=(10, 10, 1)).astype(np.float32)

  def predict(x, xp):  # a linear "probability" of class 1, so drops are exact sums
    p1 = xp.sum(x * weight, axis=(1, 2, 3)) / weight.sum()
    return xp.stack([1 - p1, p1], axis=1)

  class_idx = np.array([1, 0])
  patch, stride, baseline = 4, 4, 0.25
  got = gc.occlusion(lambda x: predict(x, jnp), images, class_idx, patch, stride, baseline)
  # positions 0 and 4, plus 6 so that the square reaches the border (10 - 4)
  heat, count = np.zeros((2, 10, 10)), np.zeros((10, 10))
  ref = predict(images.astype(np.float64), np)[np.arange(2), class_idx]
  for i in (0, 4, 6):
    for j in (0, 4, 6):
      occ = images.astype(np.float64).copy()
      occ[:, i:i + patch, j:j + patch] = baseline
      drop = ref - predict(occ, np)[np.arange(2), class_idx]
      heat[:, i:i + patch, j:j + patch] += drop[:, None, None]
      count[i:i + patch, j:j + patch] += 1
  np.testing.assert_allclose(got, heat / count, atol=1e-5)


def test_occlusion_rejects_a_patch_larger_than_the_image():
  with pytest.raises(ValueError, match='patch'):
    gc.occlusion(lambda x: x.mean(axis=(1, 2)), np.zeros((1, 4, 4, 1)), [0], 5, 1)
