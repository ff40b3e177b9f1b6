"""Tests for cxr_jax.ssl.barlow_twins: the loss against Barlow Twins eq. 1-2."""

import numpy as np
import pytest

from cxr_jax.ssl import barlow_twins
from tests.ssl.test_simclr import run_sharded_check  # the one 4-device script


def numpy_barlow_twins(z1, z2, lambd, eps=0.0):
  """Eq. 2 entry by entry on batch-centred embeddings:
  C_ij = sum_b a_bi c_bj / (sqrt(sum_b a_bi^2 + B eps) sqrt(sum_b c_bj^2 + B eps)),
  (eps = 0 is the paper's eq. 2; B eps matches the variance floor of the reference code),
  then eq. 1: sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2."""
  a = np.asarray(z1, np.float64)
  c = np.asarray(z2, np.float64)
  a = a - a.mean(axis=0)
  c = c - c.mean(axis=0)
  batch, dim = a.shape
  loss = 0.0
  for i in range(dim):
    for j in range(dim):
      num = sum(a[b, i] * c[b, j] for b in range(batch))
      den = np.sqrt(sum(a[b, i] ** 2 for b in range(batch)) + batch * eps) * np.sqrt(
          sum(c[b, j] ** 2 for b in range(batch)) + batch * eps)
      cij = num / den
      loss += (1 - cij) ** 2 if i == j else lambd * cij ** 2
  return loss


@pytest.mark.parametrize('batch,dim', [(2, 3), (5, 4), (16, 8), (3, 1)])
@pytest.mark.parametrize('eps', [0.0, 1e-5])
def test_loss_matches_numpy(batch, dim, eps):
  rng = np.random.default_rng(batch * 10 + dim)
  z1 = rng.normal(size=(batch, dim)).astype(np.float32)
  z2 = (z1 + rng.normal(size=(batch, dim))).astype(np.float32)
  for lambd in (5e-3, 0.5):
    got = float(barlow_twins.loss(z1, z2, lambd, eps))
    np.testing.assert_allclose(got, numpy_barlow_twins(z1, z2, lambd, eps), rtol=1e-4, atol=1e-5)


def test_hand_cases():
  # identical views whose dimensions are centred, unit-variance and uncorrelated: C = I
  z = np.asarray([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
  assert abs(float(barlow_twins.loss(z, z, 5e-3, 0.0))) < 1e-6
  np.testing.assert_allclose(barlow_twins.cross_correlation(z, z, 0.0), np.eye(2), atol=1e-6)
  # B = 2: standardised columns are (1, -1) and (1, -1) in z1, (1, -1) and (-1, 1) in z2,
  # so C = [[1, -1], [1, -1]] and the loss is (1-1)^2 + (1+1)^2 + lambda (1 + 1) = 4 + 2 lambda
  z1 = np.asarray([[1, 1], [-1, -1]], np.float32)
  z2 = np.asarray([[1, -1], [-1, 1]], np.float32)
  np.testing.assert_allclose(barlow_twins.cross_correlation(z1, z2, 0.0), [[1, -1], [1, -1]],
                             atol=1e-6)
  np.testing.assert_allclose(float(barlow_twins.loss(z1, z2, 5e-3, 0.0)), 4.01, rtol=1e-6)
  # scale and shift of an embedding do not matter (batch standardisation)
  np.testing.assert_allclose(float(barlow_twins.loss(3 * z1 + 7, z2, 5e-3, 0.0)), 4.01, rtol=1e-5)


def test_batch_of_one_raises():
  with pytest.raises(ValueError, match='at least 2'):
    barlow_twins.loss(np.ones((1, 4)), np.ones((1, 4)))


def test_defaults():
  assert barlow_twins.DEFAULTS['lambda'] == 5e-3 and barlow_twins.DEFAULTS.proj_layers == 3


def test_sharded_loss_equals_single_device():
  run_sharded_check([('barlow_twins', dict(proj_hidden_dim=16, proj_dim=8))])
