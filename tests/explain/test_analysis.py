"""attention_analysis on a classifier whose attention is known by construction.

The encoder's feature map has three channels: the image inside a fixed region R, the image
outside R, and the whole image; the head is a diagonal Dense layer, so
  logit_0 = a mean(x R),  logit_1 = b mean(x (1 - R)),  logit_2 = c mean(x).
Grad-CAM of class k is then ReLU(w_k / (hw) A_k): for class 0 exactly the image inside R,
for class 1 exactly the image outside R, for class 2 the image itself. With the lung
mask equal to R the attention shares follow by hand: all inside -> 1 / area(R), all
outside -> 0, a uniform image explained by class 2 -> 1.0, an all-zero map -> NaN.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cxr_jax.data.builders import phantom
from cxr_jax.explain import analysis
from cxr_jax.models import heads

S = 16  # the classifier's input side
A, B, C = 12.0, 2.0, 0.5  # head weights; C small so classes 0/1 win on regional images


def _region(size):
  k = size // S
  r = np.zeros((size, size), np.float32)
  # an 8 x 6 block at S (16 x 12 at 2S), on even pixels so a 2x nearest resize keeps it
  r[4 * k:12 * k, 2 * k:8 * k] = 1.0
  return r


class RegionEncoder(nn.Module):
  """feature_map: [B, S, S, 1] -> [B, S, S, 3] = (x R, x (1 - R), x); pool: mean."""
  region: np.ndarray

  def feature_map(self, x, train=False):
    r = jnp.asarray(self.region)[None, :, :, None]
    return jnp.concatenate([x * r, x * (1 - r), x], axis=-1)

  def pool(self, fmap):
    return jnp.mean(fmap, axis=(1, 2))

  def __call__(self, x, train=False):
    return self.pool(self.feature_map(x, train))


def _model():
  model = heads.ClassifierModel(encoder=RegionEncoder(_region(S)), num_classes=3)
  # the encoder has no parameters: the head is the whole variable tree
  variables = {'params': {'head': {'kernel': jnp.diag(jnp.array([A, B, C])),
                                   'bias': jnp.zeros(3)}}}
  return model, variables


def _images(storage):
  """Three images: bright inside R (-> class 0), bright outside R (-> 1), uniform."""
  r = _region(storage) > 0
  inside = np.where(r, 200, 0)
  outside = np.where(r, 0, 200)
  uniform = np.full((storage, storage), 100)
  return np.stack([inside, outside, uniform]).astype(np.uint8)[..., None], r


def test_known_shares_at_the_model_resolution():
  model, variables = _model()
  images, r = _images(S)
  masks = np.repeat(r[None, :, :, None], 3, axis=0).astype(np.uint8) * 255
  labels = np.array([0, 0, 2])  # the second image's true class 0 has an all-zero map
  out = analysis.attention_analysis(
      model, variables, images, masks, labels, image_size=S, batch_size=2,
      extra_masks={'outside': ~r[None].repeat(3, 0)}, occlusion_count=2, overlay_per_class=1)
  area = r.mean()
  np.testing.assert_array_equal(out['pred'], [0, 1, 0])  # uniform: A area > C, B (1 - area)
  assert A * area > B * (1 - area) and A * area > C
  np.testing.assert_allclose(out['lung_area'], area)
  # predicted class: image 0 all inside, image 1 all outside, image 2 (class 0) all inside
  np.testing.assert_allclose(out['lung_share_pred'], [1 / area, 0.0, 1 / area])
  np.testing.assert_allclose(out['outside_share_pred'], [0.0, 1 / (1 - area), 0.0])
  # true class: image 1's class-0 map is all zero (NaN), image 2's class-2 map is uniform
  share_true = out['lung_share_true']
  assert share_true[0] == pytest.approx(1 / area) and np.isnan(share_true[1])
  assert share_true[2] == pytest.approx(1.0)
  assert out['outside_share_true'][2] == pytest.approx(1.0)
  # probabilities from the logits written out by hand
  x = images[..., 0] / 255.0
  logits = np.stack([A * (x * r).mean((1, 2)), B * (x * ~r).mean((1, 2)), C * x.mean((1, 2))],
                    axis=1)
  want = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(out['probs'], want, rtol=1e-5)
  # overlays: the first image of each true class (classes 0 and 2 -> images 0 and 2)
  np.testing.assert_array_equal(out['overlay_index'], [0, 2])
  np.testing.assert_array_equal(out['overlay_image'], images[[0, 2], ..., 0])
  np.testing.assert_array_equal(out['overlay_mask'], r[None].repeat(2, 0))
  cam0 = out['overlay_cam_pred'][0]
  np.testing.assert_allclose(cam0, A / S**2 * x[0] * r, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out['overlay_cam_true'][1], C / S**2 * x[2], rtol=1e-5)
  # occlusion: hiding pixels of R lowers p(class 0) for image 0; hiding the black
  # outside changes nothing, so attention concentrates in R (exactly 1/area is not
  # expected: patches straddling R's edge spread drops just outside it)
  assert out['occlusion_lung_share'].shape == (2,)
  assert out['occlusion_lung_share'][0] > 1.5
  assert out['occlusion_lung_share'][1] < 0.5  # image 1 is explained by the outside
  assert int(out['image_size']) == S
  np.testing.assert_array_equal(out['cam_resolution'], [S, S])  # the map is at image size


def test_storage_size_is_resized_like_the_classifier_sees_it():
  """Images and masks stored at 2S: the masks must land on the same grid as the maps."""
  model, variables = _model()
  images, r = _images(2 * S)
  out = analysis.attention_analysis(model, variables, images, r[None].repeat(3, 0),
                                    np.array([0, 1, 2]), image_size=S, occlusion_count=0)
  area = _region(S).mean()
  # class 0's map lives only on R at S; the nearest-resized mask is exactly R at S
  assert out['lung_share_pred'][0] == pytest.approx(1 / area)
  assert out['lung_area'][0] == pytest.approx(area)
  assert out['overlay_image'].shape == (3, S, S)
  assert out['occlusion_lung_share'].shape == (0,) and out['occlusion_index'].shape == (0,)


def test_empty_mask_gives_nan_and_errors_are_clear():
  model, variables = _model()
  images, r = _images(S)
  masks = np.stack([r, np.zeros_like(r), r])
  out = analysis.attention_analysis(model, variables, images, masks, np.array([0, 1, 2]),
                                    image_size=S, occlusion_count=0,
                                    patient_id=np.array(['p0', 'p1', 'p1']))
  assert np.isnan(out['lung_share_pred'][1]) and np.isfinite(out['lung_share_pred'][0])
  assert list(out['patient_id']) == ['p0', 'p1', 'p1']
  with pytest.raises(ValueError, match='masks has 2 entries for 3 images'):
    analysis.attention_analysis(model, variables, images, masks[:2], np.zeros(3), S)
  with pytest.raises(ValueError, match='extra mask name'):
    analysis.attention_analysis(model, variables, images, masks, np.zeros(3), S,
                                extra_masks={'lung': masks})


def test_resize_masks_nearest_at_half_pixel_centres():
  m = np.zeros((1, 4, 4), np.uint8)
  m[0, 1, 2] = 7
  # upsampling by 2: output pixel i reads input floor((i + 0.5) / 2)
  up = analysis.resize_masks(m, 8)
  want = np.zeros((8, 8), np.uint8)
  want[2:4, 4:6] = 1
  np.testing.assert_array_equal(up[0], want)
  # downsampling by 2: output pixel i reads input 2 i + 1
  down = analysis.resize_masks(m[..., None], 2)
  np.testing.assert_array_equal(down[0], [[0, 0], [0, 0]])
  np.testing.assert_array_equal(analysis.resize_masks(up, 4)[0], m[0] > 0)


def test_overlay_indices():
  np.testing.assert_array_equal(analysis.overlay_indices([2, 0, 2, 1, 0, 2], 2),
                                [1, 4, 3, 0, 2])
  assert analysis.overlay_indices([0, 1], 0).shape == (0,)


@pytest.mark.parametrize('size', [32, 64])
def test_marker_region_contains_the_rendered_marker(size):
  for seed in range(6):
    for corner in range(4):
      out = phantom.render(np.random.default_rng([seed, corner]), label=seed % 4, size=size,
                           confounder=corner)
      region = analysis.marker_region_masks([corner], size)[0]
      marker = out['marker'][..., 0] > 0
      assert marker.any() and not (marker & (region == 0)).any()
      assert region.mean() < 0.05  # a corner box, not half the image
      assert not (region & (out['mask'][..., 0] > 0)).any()  # never on the lungs
  assert not analysis.marker_region_masks([-1], size).any()


def test_save_overlays_writes_the_grid(tmp_path):
  model, variables = _model()
  images, r = _images(S)
  out = analysis.attention_analysis(model, variables, images, r[None].repeat(3, 0),
                                    np.array([0, 1, 2]), S, occlusion_count=0)
  path = analysis.save_overlays(str(tmp_path / 'grid.png'), out['overlay_image'],
                                {'pred': out['overlay_cam_pred'],
                                 'true': out['overlay_cam_true']},
                                masks=out['overlay_mask'], titles=['a', 'b', 'c'], dpi=50)
  with Image.open(path) as im:
    assert im.size == (3 * 2 * 50, 3 * 2 * 50)  # (1 + 2 regimes) x 3 rows, 2-inch cells


def test_real_resnet_on_phantoms_shapes_and_ranges():
  """The whole path on a tiny ResNet classifier and rendered phantoms (no known answer:
  shapes, key set, and the share's bounds 0 <= share * area <= 1)."""
  from cxr_jax.models import build_encoder
  n, storage, size = 5, 32, 16
  renders = [phantom.render(np.random.default_rng(i), label=i % 4, size=storage,
                            confounder=i % 4) for i in range(n)]
  images = np.stack([r['image'] for r in renders])
  masks = np.stack([r['mask'] for r in renders])
  model = heads.ClassifierModel(build_encoder('resnet18', width=0.125, stem='small'), 4)
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 1)))
  out = analysis.attention_analysis(
      model, variables, images, masks, np.arange(n) % 4, size, batch_size=4,
      extra_masks={'marker': analysis.marker_region_masks(np.arange(n) % 4, storage),
                   'lesion': np.stack([r['lesion'] for r in renders])},
      occlusion_count=2, overlay_per_class=1)
  for region in ('lung', 'marker', 'lesion'):
    for which in ('pred', 'true'):
      share = out[f'{region}_share_{which}']
      assert share.shape == (n,)
      ok = ~np.isnan(share)
      assert np.all(share[ok] >= 0)
      assert np.all(share[ok] * out[f'{region}_area'][ok] <= 1 + 1e-9)
  assert np.isnan(out['lesion_share_pred'][0])  # class 0 (negative) has no lesion
  assert out['probs'].shape == (n, 4)
  np.testing.assert_allclose(out['probs'].sum(1), 1.0, rtol=1e-5)
  assert out['overlay_cam_pred'].shape == (4, size, size)
  assert out['occlusion_lung_share'].shape == (2,)
  np.testing.assert_array_equal(out['cam_resolution'], [2, 2])  # small stem: 16 px / 8
