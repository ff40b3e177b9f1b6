"""The randomisation sanity test and map correlations, against hand-built maps.

The classifier is test_analysis' region model: logit_k = w_k mean(A_k) with feature
channels A = (x R, x (1 - R), x), so Grad-CAM of class k is exactly proportional to its
channel. Re-pointing class 0's head weight from channel 0 to channel 1 (a 'randomised'
head) turns its map from x R into x (1 - R): the expected Spearman correlation of the two
maps is computed here from numpy ranks (the oracle), independently of scipy.
"""
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.explain import analysis
from cxr_jax.explain import sanity
from tests.explain.test_analysis import A, S, _model, _region


def _ranks(v):
  """Average ranks (ties share the mean of their positions), by hand."""
  order = np.argsort(v, kind='stable')
  ranks = np.empty(len(v))
  sv = v[order]
  i = 0
  while i < len(v):
    j = i
    while j + 1 < len(v) and sv[j + 1] == sv[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def _spearman(a, b):
  ra, rb = _ranks(a.ravel()), _ranks(b.ravel())
  ra, rb = ra - ra.mean(), rb - rb.mean()
  return float((ra * rb).sum() / np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))


def test_map_spearman_matches_the_rank_formula_and_constant_maps_are_nan():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 5, (4, 6, 6)).astype(float)  # many ties
  b = a + rng.normal(0, 2, a.shape)
  b[2] = -a[2]
  a[3] = 7.0  # constant
  rho = sanity.map_spearman(a, b)
  for i in range(3):
    assert rho[i] == pytest.approx(_spearman(a[i], b[i]), abs=1e-12)
  assert rho[2] == pytest.approx(-1.0)
  assert np.isnan(rho[3])
  with pytest.raises(ValueError, match='same shape'):
    sanity.map_spearman(a, b[:, :5])


def test_randomised_head_changes_the_maps_by_the_expected_correlation():
  model, variables = _model()
  rng = np.random.default_rng(1)
  images = rng.integers(1, 256, (3, S, S, 1)).astype(np.uint8)  # textured everywhere
  r = _region(S) > 0
  swapped_kernel = jnp.diag(jnp.array([0.0, 2.0, 0.5])).at[1, 0].set(A)
  swapped = {'params': {'head': {'kernel': swapped_kernel, 'bias': jnp.zeros(3)}}}
  out = analysis.attention_analysis(
      model, variables, images, np.repeat(r[None], 3, 0), None, image_size=S,
      occlusion_count=0, randomised={'same': variables, 'swapped': swapped})
  np.testing.assert_array_equal(out['pred'], [0, 0, 0])  # A area(R) wins on noise
  np.testing.assert_allclose(out['randomised_same_spearman'], 1.0)
  x = images[..., 0].astype(np.float64)
  expected = [_spearman(x[i] * r, x[i] * (1 - r)) for i in range(3)]
  np.testing.assert_allclose(out['randomised_swapped_spearman'], expected, atol=1e-9)
  assert max(expected) < 0  # inside vs outside: clearly different maps
  # labels=None: the true-class shares are undefined, labels stored as -1
  assert np.all(np.isnan(out['lung_share_true'])) and np.all(out['labels'] == -1)
  assert np.all(np.isfinite(out['lung_share_pred']))


def test_randomised_variables_reinitialises_the_named_part():
  from cxr_jax.models import build_encoder
  from cxr_jax.models import heads
  import jax
  model = heads.ClassifierModel(build_encoder('resnet18', width=0.125, stem='small'), 3)
  trained = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1))))
  head = sanity.randomised_variables(model, trained, 'head', 7, (1, 16, 16, 1))
  full = sanity.randomised_variables(model, trained, 'full', 7, (1, 16, 16, 1))
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(
      jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert same(head['params']['encoder'], trained['params']['encoder'])
  assert same(head['batch_stats'], trained['batch_stats'])
  assert not np.array_equal(head['params']['head']['kernel'], trained['params']['head']['kernel'])
  assert not same(full['params']['encoder'], trained['params']['encoder'])
  assert (jax.tree_util.tree_structure(full) == jax.tree_util.tree_structure(trained))
  with pytest.raises(ValueError, match="choose from \\('head', 'full'\\)"):
    sanity.randomised_variables(model, trained, 'layer3', 7, (1, 16, 16, 1))
