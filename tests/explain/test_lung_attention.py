"""Tests of cxr_jax.explain.lung_attention on maps with known answers, and of the overlay
figure (cxr_jax.explain.overlay; kept here as the owned test file of explain/ figures)."""
import numpy as np
import pytest
from PIL import Image

from cxr_jax.explain import lung_attention as la
from cxr_jax.explain import overlay


def _masks():
  """Three masks of different area fractions on a 10x12 grid."""
  m = np.zeros((3, 10, 12), bool)
  m[0, 2:8, 1:5] = True  # 24 / 120 = 0.2
  m[1, :, :6] = True  # 0.5
  m[2, 3:4, 3:4] = True  # 1 / 120
  return m


def test_uniform_map_scores_one_for_any_mask():
  masks = _masks()
  cams = np.full(masks.shape, 0.3)
  np.testing.assert_allclose(la.attention_share(cams, masks), 1.0)
  np.testing.assert_allclose(la.inside_fraction(cams, masks), masks.mean(axis=(1, 2)))


def test_all_mass_inside_scores_inverse_area():
  masks = _masks()
  rng = np.random.default_rng(0)
  cams = rng.random(masks.shape) * masks  # positive only inside
  np.testing.assert_allclose(la.inside_fraction(cams, masks), 1.0)
  np.testing.assert_allclose(la.attention_share(cams, masks), 1 / masks.mean(axis=(1, 2)))


def test_all_mass_outside_scores_zero():
  masks = _masks()
  cams = np.random.default_rng(1).random(masks.shape) * ~masks
  np.testing.assert_allclose(la.attention_share(cams, masks), 0.0)
  np.testing.assert_allclose(la.inside_fraction(cams, masks), 0.0)


def test_hand_case_soft_masks_and_negative_values():
  # cam [[3, 1], [0, 0]], mask top-left: inside 3 of 4 -> 0.75, area 1/4 -> share 3
  cam = np.array([[[3.0, 1.0], [0.0, 0.0]]])
  mask = np.array([[[255, 0], [0, 0]]], np.uint8)  # any nonzero value is inside
  assert la.inside_fraction(cam, mask)[0] == pytest.approx(0.75)
  assert la.attention_share(cam, mask)[0] == pytest.approx(3.0)
  # negative evidence (an occlusion map) counts as no attention
  cam_neg = np.array([[[3.0, 1.0], [-5.0, -2.0]]])
  assert la.attention_share(cam_neg, mask)[0] == pytest.approx(3.0)


def test_undefined_cases_are_nan():
  masks = _masks()
  cams = np.ones(masks.shape)
  cams[0] = 0.0  # all-zero map
  masks[1] = False  # empty mask
  share = la.attention_share(cams, masks)
  assert np.isnan(share[0]) and np.isnan(share[1]) and share[2] == pytest.approx(1.0)
  assert np.isnan(la.inside_fraction(cams, masks)[:2]).all()


def test_shape_mismatch_raises():
  with pytest.raises(ValueError, match='same shape'):
    la.attention_share(np.ones((2, 8, 8)), np.ones((2, 16, 16)))


def test_overlay_grid_layout(tmp_path):
  n, size = 3, 32
  yy, xx = np.mgrid[:size, :size]
  images = np.stack([np.sin(xx / (3 + i)) + yy / size for i in range(n)])
  masks = np.zeros((n, size, size), bool)
  masks[:, 6:26, 4:14] = True
  cams = {'scratch': np.exp(-((xx - 24) ** 2 + (yy - 8) ** 2) / 30.0)[None].repeat(n, 0),
          'curricular': np.exp(-((xx - 9) ** 2 + (yy - 16) ** 2) / 30.0)[None].repeat(n, 0)}
  path = overlay.overlay_grid(str(tmp_path / 'sub' / 'grid.png'), images, cams, masks,
                              titles=[f'case {i}' for i in range(n)], cell_inches=1.5,
                              dpi=80)
  img = np.asarray(Image.open(path).convert('RGB')).astype(int)
  cols = 3
  assert img.shape == (n * 1.5 * 80, cols * 1.5 * 80, 3)
  # column 0 is the gray image (only the thin mask outline is coloured); columns 1-2 carry
  # the heat map, so most of their pixels are coloured
  colour = (img.max(axis=2) - img.min(axis=2)) > 30
  strip = img.shape[1] // cols
  in_col = [colour[:, c * strip:(c + 1) * strip].mean() for c in range(cols)]
  assert in_col[0] < 0.1
  assert in_col[1] > 0.3 and in_col[2] > 0.3
  # each row of panels is non-empty: gray-level variation in every third of the height
  band = img.shape[0] // n
  for r in range(n):
    assert img[r * band:(r + 1) * band, :strip].std() > 10


def test_overlay_grid_validates_shapes(tmp_path):
  with pytest.raises(ValueError, match='N=2'):
    overlay.overlay_grid(str(tmp_path / 'x.png'), np.zeros((2, 8, 8)),
                         {'a': np.zeros((3, 8, 8))})
