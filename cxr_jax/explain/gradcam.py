"""Class-activation maps: Grad-CAM, and occlusion as a gradient-free cross-check.

The model is given as two functions so that any backbone/head split works, e.g. with
`ClassifierModel` of `cxr_jax/models/heads.py`:

  fmap_fn = lambda x: model.apply(variables, x, method=model.feature_map)
  head_fn = lambda a: model.apply(variables, a, method=model.logits_from_feature_map)
  cams = gradcam(fmap_fn, head_fn, images, class_idx)

Both functions must treat examples independently (BatchNorm in inference mode), because
the gradient of the summed selected logits is taken for the whole batch at once.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def gradcam_maps(fmap, grads):
  """Grad-CAM at feature-map resolution from a feature map and its gradient.

  alpha_k = mean_ij dy_c / dA_ij^k and cam = ReLU(sum_k alpha_k A^k) (Selvaraju et al.,
  "Grad-CAM", ICCV 2017, eqs. 1-2).

  Args:
    fmap: [B, h, w, C] activations A.
    grads: [B, h, w, C] gradient of the class score y_c with respect to A.

  Returns:
    [B, h, w] non-negative maps.
  """
  alpha = jnp.mean(grads, axis=(1, 2))  # [B, C]
  return jax.nn.relu(jnp.einsum('bhwc,bc->bhw', fmap, alpha))


def _normalize(maps, eps=1e-12):
  """Divides each [H, W] map by its maximum (all-zero maps stay zero)."""
  peak = jnp.max(maps, axis=(1, 2), keepdims=True)
  return maps / jnp.maximum(peak, eps)


def gradcam(feature_map_fn: Callable, head_fn: Callable, images, class_idx=None,
            normalize: bool = False):
  """Grad-CAM maps of the given classes, upsampled to the image size.

  Args:
    feature_map_fn: images [B, H, W, C] -> A [B, h, w, C'] (e.g. the last conv stage).
    head_fn: A [B, h, w, C'] -> logits [B, K].
    images: [B, H, W, C].
    class_idx: [B] int classes to explain; None explains the predicted (argmax) class.
    normalize: divide each map by its maximum, for display only: unnormalised maps keep
      their magnitude, which the attention share does not need but comparisons might.

  Returns:
    cams: [B, H, W] float32, non-negative; bilinear (half-pixel-centre) upsampling of the
    [B, h, w] Grad-CAM maps.
  """
  fmap = feature_map_fn(images)
  logits, head_vjp = jax.vjp(head_fn, fmap)
  if class_idx is None:
    class_idx = jnp.argmax(logits, axis=-1)
  # the cotangent one_hot(c_b) selects d logits[b, c_b] / dA for every b in one pass
  (grads,) = head_vjp(jax.nn.one_hot(class_idx, logits.shape[-1], dtype=logits.dtype))
  cams = gradcam_maps(fmap, grads)
  b, h, w = images.shape[:3]
  cams = jax.image.resize(cams.astype(jnp.float32), (b, h, w), method='bilinear')
  # bilinear interpolation of non-negative values is non-negative up to rounding
  cams = jnp.maximum(cams, 0.0)
  return _normalize(cams) if normalize else cams


def occlusion(predict_fn: Callable, images, class_idx, patch: int, stride: int,
              baseline: float = 0.0):
  """Occlusion sensitivity (Zeiler & Fergus, ECCV 2014): a gradient-free attention map.

  A patch x patch square, slid with `stride` over the image (the last row/column of
  positions is added so the square also covers the bottom/right border), is set to
  `baseline`; the map at a pixel is the drop p_c(image) - p_c(occluded image), averaged
  over all occlusions that cover the pixel. Positive where hiding the pixel lowers the
  class probability; negative where it raises it.

  Args:
    predict_fn: images [B, H, W, C] -> probs [B, K] (probabilities: drops in logits are
      not comparable across examples).
    images: [B, H, W, C].
    class_idx: [B] int classes to explain.
    patch: side of the occluding square in pixels.
    stride: step between square positions in pixels.
    baseline: value put into the occluded square (0 = black; the image mean is another
      common choice).

  Returns:
    [B, H, W] float32 drops in class probability.
  """
  b, h, w = images.shape[:3]
  if not 0 < patch <= min(h, w) or stride <= 0:
    raise ValueError(f'need 0 < patch <= min(H, W) = {min(h, w)} and stride > 0, got '
                     f'patch={patch}, stride={stride}')

  def starts(size):
    s = list(range(0, size - patch + 1, stride))
    return s if s[-1] == size - patch else s + [size - patch]

  offsets = jnp.asarray([(i, j) for i in starts(h) for j in starts(w)], jnp.int32)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  class_idx = jnp.asarray(class_idx)
  pick = lambda probs: jnp.take_along_axis(probs, class_idx[:, None], axis=1)[:, 0]
  p_ref = pick(predict_fn(images))  # [B]

  def body(carry, offset):
    heat, count = carry
    inside = ((rows >= offset[0]) & (rows < offset[0] + patch)
              & (cols >= offset[1]) & (cols < offset[1] + patch))  # [H, W]
    occluded = jnp.where(inside[None, :, :, None], jnp.asarray(baseline, images.dtype),
                         images)
    drop = p_ref - pick(predict_fn(occluded))  # [B]
    inside = inside.astype(jnp.float32)
    return (heat + drop[:, None, None] * inside, count + inside), None

  init = (jnp.zeros((b, h, w), jnp.float32), jnp.zeros((h, w), jnp.float32))
  (heat, count), _ = jax.lax.scan(body, init, offsets)
  return heat / count  # every pixel is covered at least once (see `starts`)
