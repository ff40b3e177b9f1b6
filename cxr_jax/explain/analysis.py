"""The attention analysis of one fine-tuned classifier on its test set.

`attention_analysis` answers the paper's second question for one model: does it look
inside the lungs? It computes, per test image,

  * Grad-CAM on the last convolutional stage for the predicted and for the true class,
    and the share of attention inside the lung mask (`lung_attention.attention_share`:
    1.0 for a uniform map, > 1 when attention concentrates in the lungs, 0 when it is
    all outside), and the same for any other masks given (tubes, lines, a burned-in
    marker region, lesions);
  * occlusion sensitivity (gradient-free) on the first `occlusion_count` images, and its
    lung share, to cross-check Grad-CAM; and, per image, the Spearman correlation of the
    two maps (`sanity.map_spearman`);
  * optionally the randomisation sanity test (`cxr_jax.explain.sanity`, Adebayo et al.
    2018): the Spearman correlation of each image's Grad-CAM with the Grad-CAM of the
    same class by the model with re-initialised weights;
  * the maps of a fixed sample of images (the first `overlay_per_class` of each class,
    the same images for every model evaluated on the same test set), for overlay figures
    that put the regimes side by side.

Images go through exactly the classifier's eval view (`cxr_jax.data.augment.resize` of
the stored image in [0, 1]); masks are resized to the same grid by nearest neighbour at
half-pixel centres (the sampling geometry of that resize), so map and mask line up.

The returned dict of numpy arrays is what `<job>/attention.npz` holds
(`np.savez_compressed(path, **result)`), which `cxr_jax.report` reads.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.data import augment
from cxr_jax.explain import gradcam as gradcam_lib
from cxr_jax.explain import lung_attention
from cxr_jax.explain import overlay
from cxr_jax.explain import sanity

_NAME = re.compile(r'^[a-z][a-z0-9_]*$')


def resize_masks(masks, image_size: int) -> np.ndarray:
  """Nearest-neighbour resize of masks to the classifier's grid.

  Output pixel i (centre i + 1/2) takes the input pixel under its centre,
  floor((i + 1/2) * H / S): the half-pixel-centre geometry of `augment.resize`.

  Args:
    masks: [N, H, W] or [N, H, W, 1], any dtype (nonzero = inside).
    image_size: output side S.

  Returns:
    [N, S, S] uint8 in {0, 1}.
  """
  masks = np.asarray(masks)
  if masks.ndim == 4 and masks.shape[-1] == 1:
    masks = masks[..., 0]
  if masks.ndim != 3:
    raise ValueError(f'masks must be [N, H, W] or [N, H, W, 1], got {masks.shape}')
  _, h, w = masks.shape
  rows = np.minimum(((np.arange(image_size) + 0.5) * h / image_size).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(image_size) + 0.5) * w / image_size).astype(np.int64), w - 1)
  return (masks[:, rows][:, :, cols] > 0).astype(np.uint8)


def overlay_indices(labels, per_class: int) -> np.ndarray:
  """The fixed overlay sample: the first `per_class` images of each class, by index.

  Depends only on the labels, so every regime evaluated on the same test set explains
  the same images.

  Args:
    labels: [N] int.
    per_class: images per class (fewer when a class has fewer).

  Returns:
    [M] int64 indices, grouped by class in increasing class order.
  """
  labels = np.asarray(labels)
  if per_class <= 0:
    return np.zeros((0,), np.int64)
  return np.concatenate([np.flatnonzero(labels == c)[:per_class]
                         for c in np.unique(labels)]).astype(np.int64)


def marker_region_masks(confounder, size: int) -> np.ndarray:
  """Where the phantom's burned-in marker can be, per image (for `extra_masks`).

  The phantom (`cxr_jax.data.phantom_render.render`) draws an m x m glyph,
  m = max(3, round(0.09 S)), at corner v (0 top-left, 1 top-right, 2 bottom-left,
  3 bottom-right), inset by off = max(1, round(0.03 S)) plus a jitter of up to
  J = max(1, int(0.03 S)) pixels per axis. The region returned is the union of all
  those positions, an (m + J) square, so it contains the marker whatever the jitter.

  Args:
    confounder: [N] int marker corner per image; -1 (no marker) gives an empty mask.
    size: the phantom's storage side S.

  Returns:
    [N, S, S] uint8 in {0, 1}.
  """
  confounder = np.asarray(confounder).reshape(-1)
  m = max(3, int(round(0.09 * size)))
  jitter = max(1, int(0.03 * size))
  off = max(1, int(round(0.03 * size)))
  side = m + jitter
  out = np.zeros((confounder.size, size, size), np.uint8)
  for i, v in enumerate(confounder):
    if v < 0:
      continue
    r0 = off if v in (0, 1) else size - off - side
    c0 = off if v in (0, 2) else size - off - side
    out[i, r0:r0 + side, c0:c0 + side] = 1
  return out


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the first axis to `size` with zeros (one compiled shape for every batch)."""
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def attention_analysis(model, variables, images, masks, labels, image_size: int,
                       extra_masks: Mapping[str, np.ndarray] | None = None,
                       batch_size: int = 64, occlusion_count: int = 16,
                       overlay_per_class: int = 2, patient_id=None,
                       occlusion_patch: int | None = None,
                       stage: int | None = None,
                       randomised: Mapping[str, dict] | None = None) -> dict[str, np.ndarray]:
  """Grad-CAM (and occlusion) attention shares of one classifier on a labeled set.

  Args:
    model: a `cxr_jax.models.ClassifierModel` (anything with `feature_map` and
      `logits_from_feature_map` methods and BatchNorm in inference mode).
    variables: {'params': ..., 'batch_stats': ...} of `model`.
    images: [N, H, W, C] stored images (uint8, or uint16: integer images are scaled by
      their dtype's maximum, as in training).
    masks: [N, H, W] or [N, H, W, 1] lung masks (nonzero = lung); an all-zero mask
      (no mask for that image) gives NaN shares.
    labels: [N] int true classes, or None when the images' classes are not the model's
      (another dataset): the true-class shares are then NaN ('labels' is stored as -1),
      and the overlays are the first `overlay_per_class` images.
    image_size: the classifier's input side S (config.finetune.image_size).
    extra_masks: optional name -> [N, H', W'(, 1)] masks of other regions (any storage
      size; resized like `masks`), e.g. {'device': ..., 'marker': ...}. Names are
      lower-case identifiers other than 'lung'.
    batch_size: images per compiled Grad-CAM batch (the last batch is zero-padded).
    occlusion_count: occlusion maps for the first this-many images (0: none). Costs
      about (2 S / patch)^2 forward passes of that many images.
    overlay_per_class: maps kept for the first this-many images of each class.
    patient_id: optional [N] patient ids, stored for the report's bootstrap.
    occlusion_patch: side of the occluding square; default S // 8 (stride: half of it).
    stage: the encoder stage whose map Grad-CAM uses (None: the last). An earlier stage
      gives a finer map (2x per stage) where the last one is too coarse, e.g. 2x2 at
      64 px; the model must accept `stage=` in `feature_map` and
      `logits_from_feature_map` (ClassifierModel does).
    randomised: optional name -> variables of `model` with re-initialised weights
      (`sanity.randomised_variables`), for the randomisation test.

  Returns:
    dict of numpy arrays (K classes, M overlay images, O = min(occlusion_count, N)):
      'probs' [N, K] float32, 'labels' [N] int64, 'pred' [N] int64 (argmax),
      'lung_share_pred' [N], 'lung_share_true' [N] float64: Grad-CAM attention share
        inside the lung mask for the predicted / true class (NaN: empty mask or an
        all-zero map),
      'lung_area' [N] float64: the mask's area fraction (share * area = the fraction of
        attention energy inside),
      '<name>_share_pred', '<name>_share_true', '<name>_area' [N] per extra mask,
      'occlusion_lung_share' [O] float64 for the predicted class, and
      'occlusion_index' [O] int64 (= arange(O)),
      'gradcam_occlusion_map_spearman' [O] float64: per image, the Spearman correlation
        of the Grad-CAM (predicted class) and occlusion maps,
      'randomised_<name>_spearman' [N] float64 per entry of `randomised`: Spearman
        correlation of the trained model's Grad-CAM (predicted class) with the
        randomised model's Grad-CAM of the same class,
      'overlay_index' [M] int64, 'overlay_image' [M, S, S] uint8 (the eval view, first
        channel), 'overlay_mask' [M, S, S] uint8, 'overlay_cam_pred',
        'overlay_cam_true' [M, S, S] float32 (Grad-CAM upsampled to S, unnormalised),
      'image_size' [] int64, 'cam_resolution' [2] int64 (h, w of the map Grad-CAM is
        computed on; shares are uninformative when it is 1x1), and 'patient_id' [N]
        when given.
  """
  images = np.asarray(images)
  n = len(images)
  known = labels is not None
  labels = (np.asarray(labels).astype(np.int64).reshape(-1) if known
            else np.full((n,), -1, np.int64))
  if images.ndim != 4:
    raise ValueError(f'images must be [N, H, W, C], got {images.shape}')
  if labels.shape != (n,):
    raise ValueError(f'labels must be [N={n}], got {labels.shape}')
  if n == 0:
    raise ValueError('attention_analysis needs at least one image')
  lung = resize_masks(masks, image_size)
  if len(lung) != n:
    raise ValueError(f'masks has {len(lung)} entries for {n} images')
  regions = {'lung': lung}
  for name, m in (extra_masks or {}).items():
    if not _NAME.match(name) or name == 'lung':
      raise ValueError(f'extra mask name {name!r}: use a lower-case identifier other '
                       'than "lung"')
    m = resize_masks(m, image_size)
    if len(m) != n:
      raise ValueError(f'extra_masks[{name!r}] has {len(m)} entries for {n} images')
    regions[name] = m

  at = {} if stage is None else {'stage': stage}

  def fmap_fn(v, x):
    return model.apply(v, x, train=False, method=model.feature_map, **at)

  def head_fn(v, a):
    return model.apply(v, a, method=model.logits_from_feature_map, **at)

  @jax.jit
  def explain(v, batch, y):
    x = augment.resize(batch, image_size)
    logits = head_fn(v, fmap_fn(v, x))
    pred = jnp.argmax(logits, axis=-1)
    # the forward pass is the same pure function for both calls; XLA computes it once
    cam_pred = gradcam_lib.gradcam(lambda z: fmap_fn(v, z), lambda a: head_fn(v, a), x, pred)
    cam_true = gradcam_lib.gradcam(lambda z: fmap_fn(v, z), lambda a: head_fn(v, a), x, y)
    return jax.nn.softmax(logits, axis=-1), pred, cam_pred, cam_true, x[..., 0]

  bs = max(1, min(batch_size, n))
  probs, preds = [], []
  shares = {f'{r}_share_{c}': [] for r in regions for c in ('pred', 'true')}
  o = min(max(0, occlusion_count), n)
  # without true classes (labels -1: a zero one-hot, an all-zero 'true' map) the overlays
  # are the first images, still the same for every model
  keep = overlay_indices(labels, overlay_per_class)
  keep_set = {int(i): k for k, i in enumerate(keep)}
  ov = {key: [None] * len(keep) for key in ('image', 'cam_pred', 'cam_true')}
  random_rho = {name: [] for name in (randomised or {})}
  cams_for_occlusion = []
  for start, stop in _batches(n, bs):
    p, pr, cp, ct, view = jax.device_get(explain(
        variables, _pad(images[start:stop], bs), _pad(labels[start:stop], bs)))
    count = stop - start
    p, pr, cp, ct, view = p[:count], pr[:count], cp[:count], ct[:count], view[:count]
    probs.append(p)
    preds.append(pr)
    for r, m in regions.items():
      shares[f'{r}_share_pred'].append(lung_attention.attention_share(cp, m[start:stop]))
      true = (lung_attention.attention_share(ct, m[start:stop]) if known
              else np.full((count,), np.nan))
      shares[f'{r}_share_true'].append(true)
    for name, v in (randomised or {}).items():
      # the randomised model explains the class the trained model predicted
      random_cam = np.asarray(jax.device_get(explain(
          v, _pad(images[start:stop], bs), _pad(pr, bs))[3]))[:count]
      random_rho[name].append(sanity.map_spearman(cp, random_cam))
    if start < o:
      cams_for_occlusion.append(cp[:o - start])
    for j in range(count):
      k = keep_set.get(start + j)
      if k is not None:
        ov['image'][k] = np.round(np.clip(view[j], 0.0, 1.0) * 255).astype(np.uint8)
        ov['cam_pred'][k], ov['cam_true'][k] = cp[j], ct[j]

  s = image_size
  # Grad-CAM's resolution is the last stage's map: a 1x1 map gives a uniform CAM (share 1
  # whatever the model does) and 2x2 barely better; the report warns about such maps
  fmap = jax.eval_shape(fmap_fn, variables,
                        jax.ShapeDtypeStruct((1, s, s, images.shape[-1]), jnp.float32))
  out = {'probs': np.concatenate(probs).astype(np.float32), 'labels': labels,
         'pred': np.concatenate(preds).astype(np.int64),
         'image_size': np.asarray(image_size, np.int64),
         'cam_resolution': np.asarray(fmap.shape[1:3], np.int64)}
  for key, values in shares.items():
    out[key] = np.concatenate(values)
  for name, values in random_rho.items():
    out[f'randomised_{name}_spearman'] = np.concatenate(values)
  for r, m in regions.items():
    out[f'{r}_area'] = m.reshape(n, -1).mean(axis=1).astype(np.float64)
  out['overlay_index'] = keep
  out['overlay_mask'] = lung[keep]
  for key, values in ov.items():
    dtype = np.uint8 if key == 'image' else np.float32
    out[f'overlay_{key}'] = (np.stack(values).astype(dtype) if len(keep)
                             else np.zeros((0, s, s), dtype))
  if patient_id is not None:
    out['patient_id'] = np.asarray(patient_id)
    if out['patient_id'].dtype == object:  # np.savez would pickle it; the report never unpickles
      out['patient_id'] = out['patient_id'].astype(str)
    if out['patient_id'].shape != (n,):
      raise ValueError(f'patient_id must be [N={n}], got {out["patient_id"].shape}')

  out['occlusion_index'] = np.arange(o, dtype=np.int64)
  out['occlusion_lung_share'] = np.zeros((0,), np.float64)
  out['gradcam_occlusion_map_spearman'] = np.zeros((0,), np.float64)
  if o:
    patch = occlusion_patch or max(1, s // 8)

    @jax.jit
    def occlude(v, batch, cls):
      x = augment.resize(batch, image_size)
      predict = lambda z: jax.nn.softmax(model.apply(v, z, train=False), axis=-1)
      return gradcam_lib.occlusion(predict, x, cls, patch=patch, stride=max(1, patch // 2))

    maps = np.concatenate([
        np.asarray(occlude(variables, _pad(images[a:b], min(bs, o)),
                           _pad(out['pred'][a:b], min(bs, o))))[:b - a]
        for a, b in _batches(o, min(bs, o))])
    out['occlusion_lung_share'] = lung_attention.attention_share(maps, lung[:o])
    out['gradcam_occlusion_map_spearman'] = sanity.map_spearman(
        np.concatenate(cams_for_occlusion), maps)
  return out


def save_overlays(path: str, images, cams_by_regime: Mapping[str, np.ndarray], masks=None,
                  titles: Sequence[str] | None = None, **kw) -> str:
  """Writes the side-by-side overlay grid (one row per image, one column per regime).

  Args:
    path: output .png.
    images: [M, S, S] or [M, S, S, 1] images (e.g. an analysis' 'overlay_image').
    cams_by_regime: regime name -> [M, S, S] maps of the same images (e.g. each regime's
      'overlay_cam_pred'), in column order.
    masks: optional [M, S, S] lung masks, drawn as outlines.
    titles: optional M row labels.
    **kw: passed to `cxr_jax.explain.overlay.overlay_grid` (cell_inches, dpi, alpha, cmap).

  Returns:
    `path`.
  """
  return overlay.overlay_grid(path, images, dict(cams_by_regime), masks=masks, titles=titles,
                              **kw)
